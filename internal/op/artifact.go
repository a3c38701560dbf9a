package op

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/sshdev"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/disk"
	"kiln.dev/kiln/internal/trust"
)

// Kind is what an artifact holds.
type Kind int

const (
	// Firmware is an image for a microcontroller's flash (.hex, .elf,
	// .bin, .dfu, a firmware build directory).
	Firmware Kind = iota
	// Disk is a whole-disk image (.img, .img.xz, an image build directory).
	Disk
)

// Artifact is an artifact opened once. Its bytes (Data for firmware, the
// private copy for a disk) are what is hashed, checked and written.
type Artifact struct {
	// Path is the file as the user named it (a build directory resolves to
	// its firmware or image file).
	Path string
	Kind Kind
	// SHA256 is the hash of the file's bytes as read (for .img.xz: of the
	// compressed file, which is what a signature covers).
	SHA256 string
	// Board and Derivation come from the artifact itself: manifest.json
	// beside firmware (only when it lists this file with its hash),
	// kiln.json inside a disk image. Empty when not known.
	Board      string
	Derivation string
	// Image is the firmware, parsed from Data.
	Image *flash.Image
	// Data are the firmware file's bytes.
	Data []byte
	// Sig is the signature file's content (nil: none), read with the
	// artifact.
	Sig []byte

	// Disk images: the private directory, the raw copy (what the
	// signature is checked against) and the plain image (decompressed).
	dir, raw, plain string
	// DiskSHA256 and DiskSize describe the plain disk image written.
	DiskSHA256 string
	DiskSize   int64
	// Bmap is the image's block map, when one was found or given.
	Bmap *disk.Bmap
}

// LoadOptions say how to read an artifact.
type LoadOptions struct {
	// Address is where a .bin is written.
	Address *uint32
	// Sig is the signature file (default: the artifact's path + .minisig).
	Sig string
	// Bmap is a disk image's block map file (default: beside the image,
	// NAME.bmap or image.bmap, when there is one).
	Bmap string
}

// ErrNotArtifact means the path is neither firmware nor a disk image.
var ErrNotArtifact = errors.New("not an artifact kiln writes")

// IsDisk reports whether path names a disk image (.img, .img.xz, or an
// image build directory).
func IsDisk(path string) bool {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		_, err := os.Stat(filepath.Join(path, image.ImageFile))
		return err == nil
	}
	p := strings.ToLower(path)
	return strings.HasSuffix(p, ".img") || strings.HasSuffix(p, ".img.xz")
}

// Load opens the artifact at path once: firmware into memory, a disk image
// into a private copy. Close removes the copy.
func Load(path string, opts LoadOptions) (*Artifact, error) {
	if IsDisk(path) {
		return LoadDisk(path, opts)
	}
	return LoadFirmware(path, opts)
}

// LoadFirmware reads a firmware artifact: kiln flash and the station
// accept the same formats through it.
func LoadFirmware(path string, opts LoadOptions) (*Artifact, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if st.IsDir() {
		if path, err = flash.FirmwareFile(path); err != nil {
			return nil, err
		}
	}
	data, err := flash.ReadFirmware(path)
	if err != nil {
		return nil, err
	}
	sig, err := readSig(path, opts.Sig)
	if err != nil {
		return nil, err
	}
	img, err := flash.Parse(path, data, flash.LoadOptions{Address: opts.Address})
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	a := &Artifact{Path: path, Kind: Firmware, SHA256: hex.EncodeToString(sum[:]), Image: img, Data: data, Sig: sig}
	a.Board, a.Derivation = besideManifest(path, a.SHA256)
	return a, nil
}

// besideManifest reads manifest.json beside a build output: its board and
// derivation, if it lists file with this hash (a manifest that does not
// describe the file says nothing about it).
func besideManifest(file, sum string) (board, derivation string) {
	data, err := os.ReadFile(filepath.Join(filepath.Dir(file), "manifest.json"))
	if err != nil {
		return "", ""
	}
	var m struct {
		Board      string `json:"board"`
		Derivation string `json:"derivation"`
		Outputs    map[string]struct {
			SHA256 string `json:"sha256"`
		} `json:"outputs"`
	}
	if json.Unmarshal(data, &m) != nil {
		return "", ""
	}
	if o, ok := m.Outputs[filepath.Base(file)]; !ok || o.SHA256 != sum {
		return "", ""
	}
	return m.Board, m.Derivation
}

func readSig(path, sigPath string) ([]byte, error) {
	if sigPath == "" {
		sigPath = trust.SigPath(path)
	}
	return trust.ReadSig(sigPath)
}

// LoadDisk copies a disk image into a private directory (decompressing
// .img.xz there), hashing it on the way, and reads its kiln.json.
func LoadDisk(path string, opts LoadOptions) (a *Artifact, err error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, image.ImageFile)
	}
	sig, err := readSig(path, opts.Sig)
	if err != nil {
		return nil, err
	}
	a = &Artifact{Path: path, Kind: Disk, Sig: sig}
	if a.dir, err = os.MkdirTemp("", "kiln-artifact-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	src, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer src.Close()
	a.raw = filepath.Join(a.dir, "artifact")
	if a.SHA256, _, err = copyHashed(a.raw, src); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	a.plain = a.raw
	if strings.HasSuffix(strings.ToLower(path), ".xz") {
		r, err := os.Open(a.raw)
		if err != nil {
			return nil, err
		}
		xr := image.NewXZReader(r, 0)
		a.plain = filepath.Join(a.dir, "image.img")
		a.DiskSHA256, a.DiskSize, err = copyHashed(a.plain, xr)
		xr.Close()
		r.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	} else {
		a.DiskSHA256 = a.SHA256
		if st, err := os.Stat(a.raw); err == nil {
			a.DiskSize = st.Size()
		}
	}
	// kiln.json: an A/B image's (any FAT), else the first FAT32's.
	if l, err := sshdev.ImageLayout(a.plain); err == nil {
		a.Board, a.Derivation = l.Board, l.Derivation
	} else if info, err := image.Inspect(a.plain); err == nil && len(info.Metadata) > 0 {
		var l sshdev.Layout
		if json.Unmarshal(info.Metadata, &l) == nil {
			a.Board, a.Derivation = l.Board, l.Derivation
		}
	}
	if a.Bmap, err = readBmap(path, opts.Bmap); err != nil {
		return nil, err
	}
	if a.Bmap != nil {
		// The bmap must describe the image before a byte goes out: data it
		// leaves out, or a range whose checksum differs, is refused here
		// (the write checks it again as it streams).
		if _, err := disk.BmapFor(path, a.DiskSize, a.Bmap); err != nil {
			return nil, err
		}
		if err := a.checkBmap(); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// copyHashed copies r into a new private file and returns its sha256 and
// size.
func copyHashed(dst string, r io.Reader) (string, int64, error) {
	f, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// readBmap reads the bmap named, else NAME.bmap or image.bmap beside the
// image.
func readBmap(img, name string) (*disk.Bmap, error) {
	if name == "" {
		for _, guess := range []string{
			strings.TrimSuffix(strings.TrimSuffix(img, ".xz"), ".img") + ".bmap",
			filepath.Join(filepath.Dir(img), "image.bmap"),
		} {
			if _, err := os.Stat(guess); err == nil {
				name = guess
				break
			}
		}
	}
	if name == "" {
		return nil, nil
	}
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, err
	}
	bm, err := disk.ReadBmap(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return bm, nil
}

// checkBmap reads the private plain image through its bmap's check.
func (a *Artifact) checkBmap() error {
	f, err := os.Open(a.plain)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := a.Bmap.Stream(f, func(int64, []byte) error { return nil }); err != nil {
		return fmt.Errorf("%s: %w", a.Path, err)
	}
	return nil
}

// DiskPath is the private plain image a disk back end writes from.
func (a *Artifact) DiskPath() string { return a.plain }

// signed returns a reader of the bytes the signature covers.
func (a *Artifact) signed() (io.ReadCloser, error) {
	if a.Kind == Firmware {
		return io.NopCloser(bytes.NewReader(a.Data)), nil
	}
	return os.Open(a.raw)
}

// Close removes a disk image's private copy.
func (a *Artifact) Close() error {
	if a == nil || a.dir == "" {
		return nil
	}
	err := os.RemoveAll(a.dir)
	a.dir = ""
	return err
}
