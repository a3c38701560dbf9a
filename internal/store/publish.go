package store

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// File is one file Publish writes: its name in the directory and either
// its bytes or the file they are copied from.
type File struct {
	Name  string
	Data  []byte
	From  string                // used when Data is nil
	Write func(io.Writer) error // used when Data is nil and From ""
}

// Publish writes files into dir (creating dir if needed) without opening
// any name that is already there: everything is written into a fresh
// private directory inside dir (mode 0700, names created O_EXCL|O_NOFOLLOW)
// and then renamed over the final names. rename(2) replaces a symlink
// rather than following it, so a planted firmware.bin -> ~/.ssh/... link is
// replaced, not written through. A name that is a directory is refused.
func Publish(dir string, files []File) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	for _, f := range files {
		if f.Name == "" || strings.ContainsAny(f.Name, "/\x00") || f.Name == "." || f.Name == ".." {
			return fmt.Errorf("output %q: not a plain file name", f.Name)
		}
	}
	tmp, err := os.MkdirTemp(dir, ".kiln-out-")
	if err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	defer os.RemoveAll(tmp)
	for _, f := range files {
		if err := writeNew(filepath.Join(tmp, f.Name), f); err != nil {
			return fmt.Errorf("output %s: %w", f.Name, err)
		}
	}
	for _, f := range files {
		dst := filepath.Join(dir, f.Name)
		if fi, err := os.Lstat(dst); err == nil && fi.IsDir() {
			return fmt.Errorf("output %s: %s is a directory", f.Name, dst)
		}
		if err := os.Rename(filepath.Join(tmp, f.Name), dst); err != nil {
			return fmt.Errorf("output %s: %w", f.Name, err)
		}
	}
	return nil
}

func writeNew(name string, f File) error {
	out, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o644)
	if err != nil {
		return err
	}
	switch {
	case f.Data != nil:
		_, err = out.Write(f.Data)
	case f.From == "" && f.Write != nil:
		err = f.Write(out)
	default:
		err = copyFrom(out, f.From)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}

func copyFrom(w io.Writer, name string) error {
	in, err := os.Open(name)
	if err != nil {
		return err
	}
	defer in.Close()
	if fi, err := in.Stat(); err != nil {
		return err
	} else if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s: %w", name, fs.ErrInvalid)
	}
	_, err = io.Copy(w, in)
	return err
}
