package image

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// mke2fsConf pins mke2fs's defaults so the host's /etc/mke2fs.conf does not
// change the output.
const mke2fsConf = `[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	reserved_ratio = 0
	lazy_itable_init = false
	lazy_journal_init = false
[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
`

// Ext4Options are the identity of an ext4 filesystem.
type Ext4Options struct {
	UUID     string // filesystem UUID
	HashSeed string // directory hash seed (a UUID)
	Label    string
	Epoch    int64
}

// MakeExt4 builds an ext4 filesystem of size bytes holding tree in a new file
// under tmpDir and returns its path. go-diskfs v1.9.4 cannot yet write an
// ext4 that e2fsck accepts, so this runs Debian's mke2fs (e2fsprogs, a pinned
// host tool) with a fixed UUID and hash seed, root-owned files, a pinned
// configuration and E2FSPROGS_FAKE_TIME, which makes its output reproducible.
func MakeExt4(ctx context.Context, tree *Tree, size int64, opts Ext4Options, tmpDir string) (string, error) {
	work, err := os.MkdirTemp(tmpDir, "ext4-")
	if err != nil {
		return "", fmt.Errorf("ext4: %w", err)
	}
	defer os.RemoveAll(work)
	root := filepath.Join(work, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", fmt.Errorf("ext4: %w", err)
	}
	if err := tree.Materialize(root, opts.Epoch); err != nil {
		return "", err
	}
	paths := []string{"/", "/lost+found"}
	for _, n := range tree.Nodes() {
		if n.Path != "" {
			paths = append(paths, "/"+n.Path)
		}
	}
	return makeExt4(ctx, root, paths, tree.Size(), size, opts, tmpDir)
}

// MakeExt4Dir is MakeExt4 for a directory as it is on disk: mke2fs -d keeps
// its owners, modes (set-id bits too), device nodes, hard links and
// extended attributes. Every inode's times are set to opts.Epoch.
func MakeExt4Dir(ctx context.Context, root string, size int64, opts Ext4Options, tmpDir string) (string, error) {
	paths := []string{"/", "/lost+found"}
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		rel = "/" + filepath.ToSlash(rel)
		if strings.ContainsAny(rel, "\"\n\\") {
			// debugfs reads its commands as quoted lines.
			return fmt.Errorf("ext4: %q: a name debugfs cannot be given: %w", rel, ErrBadName)
		}
		paths = append(paths, rel)
		if fi, err := d.Info(); err == nil && fi.Mode().IsRegular() {
			total += fi.Size()
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("ext4: %w", err)
	}
	return makeExt4(ctx, root, paths, total, size, opts, tmpDir)
}

// makeExt4 runs mke2fs -d root, then debugfs to set the times of paths.
func makeExt4(ctx context.Context, root string, paths []string, content, size int64, opts Ext4Options, tmpDir string) (string, error) {
	mke2fs, err := exec.LookPath("mke2fs")
	if err != nil {
		return "", fmt.Errorf("ext4: mke2fs (e2fsprogs) is needed: %w", err)
	}
	work, err := os.MkdirTemp(tmpDir, "ext4-conf-")
	if err != nil {
		return "", fmt.Errorf("ext4: %w", err)
	}
	defer os.RemoveAll(work)
	conf := filepath.Join(work, "mke2fs.conf")
	if err := os.WriteFile(conf, []byte(mke2fsConf), 0o644); err != nil {
		return "", fmt.Errorf("ext4: %w", err)
	}
	out, err := os.CreateTemp(tmpDir, "ext4-*.img")
	if err != nil {
		return "", fmt.Errorf("ext4: %w", err)
	}
	outPath := out.Name()
	if err := out.Truncate(size); err != nil {
		out.Close()
		os.Remove(outPath)
		return "", fmt.Errorf("ext4: %w", err)
	}
	out.Close()
	args := []string{"-q", "-F", "-t", "ext4", "-b", "4096", "-U", opts.UUID,
		"-E", "root_owner=0:0,hash_seed=" + opts.HashSeed + ",lazy_itable_init=0,lazy_journal_init=0,nodiscard",
		"-d", root}
	if opts.Label != "" {
		args = append(args, "-L", opts.Label)
	}
	args = append(args, outPath)
	cmd := exec.CommandContext(ctx, mke2fs, args...)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TZ=UTC", "LC_ALL=C", "MKE2FS_CONFIG=" + conf,
		fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", opts.Epoch), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", opts.Epoch)}
	var stderr bytes.Buffer
	cmd.Stderr, cmd.Stdout = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		os.Remove(outPath)
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "Could not allocate") || strings.Contains(msg, "No space left") ||
			strings.Contains(msg, "too small") {
			return "", fmt.Errorf("ext4: %d bytes of files do not fit %d bytes: %w", content, size, ErrNoSpace)
		}
		return "", fmt.Errorf("ext4: mke2fs: %v: %s", err, firstLine(msg))
	}
	// mke2fs -d copies each inode's ctime from the host file (E2FSPROGS_FAKE_TIME
	// covers only what it creates itself): set every inode's times with debugfs.
	var cmds strings.Builder
	for _, p := range paths {
		for _, field := range []string{"atime", "ctime", "mtime", "crtime"} {
			fmt.Fprintf(&cmds, "sif \"%s\" %s %d\n", p, field, opts.Epoch)
		}
	}
	cmdFile := filepath.Join(work, "debugfs.cmds")
	if err := os.WriteFile(cmdFile, []byte(cmds.String()), 0o644); err != nil {
		return "", fmt.Errorf("ext4: %w", err)
	}
	debugfs, err := exec.LookPath("debugfs")
	if err != nil {
		os.Remove(outPath)
		return "", fmt.Errorf("ext4: debugfs (e2fsprogs) is needed: %w", err)
	}
	cmd = exec.CommandContext(ctx, debugfs, "-w", "-f", cmdFile, outPath)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "TZ=UTC", "LC_ALL=C",
		fmt.Sprintf("E2FSPROGS_FAKE_TIME=%d", opts.Epoch)}
	stderr.Reset()
	cmd.Stderr, cmd.Stdout = &stderr, io.Discard
	if err := cmd.Run(); err != nil || strings.Contains(stderr.String(), "sif:") {
		os.Remove(outPath)
		return "", fmt.Errorf("ext4: debugfs: set times: %v %s", err, firstLine(stderr.String()))
	}
	return outPath, nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// copySparseInto copies src into w at off, skipping all-zero blocks (the
// destination is known to be zero there).
func copySparseInto(w io.WriterAt, off int64, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	var pos int64
	for {
		n, err := io.ReadFull(f, buf)
		for i := 0; i < n; i += BlockSize {
			j := min(i+BlockSize, n)
			if !allZero(buf[i:j]) {
				if _, werr := w.WriteAt(buf[i:j], off+pos+int64(i)); werr != nil {
					return werr
				}
			}
		}
		pos += int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
