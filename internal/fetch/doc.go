// Package fetch gets fixed-output inputs into kiln's store: it is the only
// step of a build that uses the network.
//
// An input names its content by sha256 and lists sources to get it from,
// tried in order: "deb:NAME=VERSION" through the host's ordinary apt client
// (apt-get download), "https://…" through Go's HTTP client, and "file:PATH"
// from disk. Content enters the store only if its hash matches; otherwise
// the error wraps recipes.ErrHashMismatch and names both hashes.
//
// A .deb is unpacked by kiln (ar, then tar compressed with xz, gzip, zstd or
// bzip2), never with dpkg: no maintainer script runs. Its data.tar.xz is
// decoded by the system's xz (xz-utils) in a process beside the one writing
// the files, as dpkg-deb's decompressor runs beside its tar; where there is
// no xz, by ulikunitz/xz in Go. Either way a damaged stream is refused. A toolchain closure is
// all its packages unpacked into one tree plus the symlinks its file names,
// stored as one entry keyed by the closure's hash.
package fetch
