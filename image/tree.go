package image

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// ErrMissingFile is returned when a file a layout names does not exist.
var ErrMissingFile = errors.New("missing file")

// Node is one entry of a Tree: a directory, a regular file (from a host file
// or from bytes) or a symbolic link.
type Node struct {
	Path   string // slash-separated, relative, no leading slash; "" is the root
	Dir    bool
	Link   string // symlink target, if a symlink
	Source string // host file holding the content, or ""
	Data   []byte // content when Source is ""
	Size   int64
	Mode   fs.FileMode // permission bits only
	Char   *Device     // a character device (initramfs only)
}

// Device is a character device's numbers.
type Device struct{ Major, Minor uint32 }

// Open returns the node's content.
func (n *Node) Open() (io.ReadCloser, error) {
	if n.Source == "" {
		return io.NopCloser(bytes.NewReader(n.Data)), nil
	}
	return os.Open(n.Source)
}

// Tree is the content of a filesystem or an initramfs: what goes where.
// Parents are created implicitly. A Tree never reads file contents until a
// filesystem writer asks for them.
type Tree struct {
	nodes map[string]*Node
}

// NewTree returns an empty tree (just the root directory).
func NewTree() *Tree {
	return &Tree{nodes: map[string]*Node{"": {Path: "", Dir: true, Mode: 0o755}}}
}

func cleanPath(p string) (string, error) {
	c := path.Clean("/" + filepath.ToSlash(p))
	if c == "/" {
		return "", nil
	}
	if strings.Contains(p, "\x00") {
		return "", fmt.Errorf("image: bad path %q", p)
	}
	return c[1:], nil
}

func (t *Tree) mkdirs(p string) error {
	if p == "" {
		return nil
	}
	if n, ok := t.nodes[p]; ok {
		if !n.Dir {
			return fmt.Errorf("image: %s: is a file, not a directory", p)
		}
		return nil
	}
	if err := t.mkdirs(parentOf(p)); err != nil {
		return err
	}
	t.nodes[p] = &Node{Path: p, Dir: true, Mode: 0o755}
	return nil
}

func parentOf(p string) string {
	d := path.Dir(p)
	if d == "." {
		return ""
	}
	return d
}

func (t *Tree) put(n *Node) error {
	p, err := cleanPath(n.Path)
	if err != nil {
		return err
	}
	if p == "" {
		return fmt.Errorf("image: cannot replace the root directory with a file")
	}
	n.Path = p
	if err := t.mkdirs(parentOf(p)); err != nil {
		return err
	}
	if old, ok := t.nodes[p]; ok && old.Dir {
		return fmt.Errorf("image: %s: is a directory", p)
	}
	t.nodes[p] = n
	return nil
}

// AddDir adds an (empty) directory and its parents.
func (t *Tree) AddDir(p string, mode fs.FileMode) error {
	c, err := cleanPath(p)
	if err != nil {
		return err
	}
	if err := t.mkdirs(c); err != nil {
		return err
	}
	if c != "" && mode != 0 {
		t.nodes[c].Mode = mode.Perm()
	}
	return nil
}

// AddBytes adds a regular file with the given content.
func (t *Tree) AddBytes(p string, data []byte, mode fs.FileMode) error {
	return t.put(&Node{Path: p, Data: data, Size: int64(len(data)), Mode: mode.Perm()})
}

// AddCharDevice adds a character device node (only an initramfs can hold
// one; /dev/console is the usual reason).
func (t *Tree) AddCharDevice(p string, major, minor uint32, mode fs.FileMode) error {
	return t.put(&Node{Path: p, Char: &Device{major, minor}, Mode: mode.Perm()})
}

// AddSymlink adds a symbolic link.
func (t *Tree) AddSymlink(p, target string) error {
	return t.put(&Node{Path: p, Link: target, Mode: 0o777})
}

// AddFile adds the host file src at p. A directory src is added recursively
// (regular files, directories and symlinks; anything else is an error). Modes
// keep only the executable bit (0755 or 0644), so a checkout's umask does not
// leak into the image.
func (t *Tree) AddFile(p, src string) error {
	fi, err := os.Lstat(src)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("image: %s: %w", src, ErrMissingFile)
		}
		return fmt.Errorf("image: %w", err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := os.Readlink(src)
		if err != nil {
			return fmt.Errorf("image: %w", err)
		}
		return t.AddSymlink(p, target)
	case fi.IsDir():
		if err := t.AddDir(p, 0o755); err != nil {
			return err
		}
		ents, err := os.ReadDir(src)
		if err != nil {
			return fmt.Errorf("image: %w", err)
		}
		for _, e := range ents {
			if err := t.AddFile(path.Join(p, e.Name()), filepath.Join(src, e.Name())); err != nil {
				return err
			}
		}
		return nil
	case fi.Mode().IsRegular():
		mode := fs.FileMode(0o644)
		if fi.Mode()&0o111 != 0 {
			mode = 0o755
		}
		return t.put(&Node{Path: p, Source: src, Size: fi.Size(), Mode: mode})
	}
	return fmt.Errorf("image: %s: unsupported file type %v", src, fi.Mode().Type())
}

// Get returns the node at p, or nil.
func (t *Tree) Get(p string) *Node {
	c, err := cleanPath(p)
	if err != nil {
		return nil
	}
	return t.nodes[c]
}

// Nodes returns every node, root first, then sorted by path.
func (t *Tree) Nodes() []*Node {
	out := make([]*Node, 0, len(t.nodes))
	for _, n := range t.nodes {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// Children returns the entries of directory p sorted by name.
func (t *Tree) Children(p string) []*Node {
	var out []*Node
	for k, n := range t.nodes {
		if k != "" && parentOf(k) == p {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// Size is the sum of the regular files' sizes.
func (t *Tree) Size() int64 {
	var s int64
	for _, n := range t.nodes {
		if !n.Dir && n.Link == "" && n.Char == nil {
			s += n.Size
		}
	}
	return s
}

// Materialize writes the tree under dir (which must exist) with every
// timestamp set to mtime, for tools that read a directory.
func (t *Tree) Materialize(dir string, mtime int64) error {
	nodes := t.Nodes()
	for _, n := range nodes {
		dst := filepath.Join(dir, filepath.FromSlash(n.Path))
		switch {
		case n.Dir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return fmt.Errorf("image: %w", err)
			}
			if err := os.Chmod(dst, n.Mode); err != nil {
				return fmt.Errorf("image: %w", err)
			}
		case n.Char != nil:
			return fmt.Errorf("image: %s: device nodes can only go into an initramfs", n.Path)
		case n.Link != "":
			if err := os.Symlink(n.Link, dst); err != nil {
				return fmt.Errorf("image: %w", err)
			}
		default:
			if err := copyNode(n, dst); err != nil {
				return err
			}
		}
	}
	// Times last, deepest first, so creating children does not touch them.
	for i := len(nodes) - 1; i >= 0; i-- {
		dst := filepath.Join(dir, filepath.FromSlash(nodes[i].Path))
		if err := lchtimes(dst, mtime); err != nil {
			return fmt.Errorf("image: %w", err)
		}
	}
	return nil
}

func copyNode(n *Node, dst string) error {
	r, err := n.Open()
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	defer r.Close()
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, n.Mode)
	if err != nil {
		return fmt.Errorf("image: %w", err)
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return fmt.Errorf("image: copy %s: %w", n.Path, err)
	}
	if err := f.Chmod(n.Mode); err != nil {
		f.Close()
		return fmt.Errorf("image: %w", err)
	}
	return f.Close()
}
