package image

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"strings"
)

// OpenDiskStream reads a disk image artifact as the plain image: a name
// ending in .xz is decompressed on the way. size is the plain image's
// length when src can say (an uncompressed file), else -1. artifact
// returns the SHA-256 of the bytes read from src — the artifact as read —
// once the stream has been consumed; done stops the decompressor.
func OpenDiskStream(name string, src io.Reader) (plain io.Reader, size int64, artifact func() string, done func()) {
	h := sha256.New()
	plain, size, done = io.TeeReader(src, h), -1, func() {}
	artifact = func() string { return hex.EncodeToString(h.Sum(nil)) }
	if strings.HasSuffix(name, ".xz") {
		xr := NewXZReader(plain, 0)
		return xr, size, artifact, func() { xr.Close() }
	}
	if st, ok := src.(interface{ Stat() (os.FileInfo, error) }); ok {
		if fi, err := st.Stat(); err == nil {
			size = fi.Size()
		}
	}
	return plain, size, artifact, done
}
