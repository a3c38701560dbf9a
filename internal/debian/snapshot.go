package debian

import (
	"fmt"
	"net/url"
	"path"
	"strings"
	"time"
)

// SnapshotBase is Debian's snapshot archive, which keeps every package
// version the main archive ever published. Its documented URL scheme is
// BASE/archive/ARCHIVE/TIMESTAMP/PATH, where ARCHIVE names the archive
// ("debian", "debian-security", ...), TIMESTAMP is UTC as
// YYYYMMDDTHHMMSSZ and PATH is the path inside the archive as the main
// archive has it ("pool/main/h/hello/hello_2.10-3_arm64.deb"); a timestamp
// between two snapshots is served the one before it.
const SnapshotBase = "https://snapshot.debian.org"

// SnapshotTimeFormat is the timestamp form of snapshot URLs.
const SnapshotTimeFormat = "20060102T150405Z"

// SnapshotURL returns the snapshot-archive URL of a pool file (Filename as
// a Packages index gives it) as the archive was at time t. base is
// SnapshotBase unless a test or a local mirror of the snapshot service
// stands in for it.
func SnapshotURL(base, archive string, t time.Time, filename string) (string, error) {
	if archive == "" || strings.ContainsAny(archive, "/ ") {
		return "", fmt.Errorf("snapshot: bad archive name %q", archive)
	}
	clean := path.Clean(strings.TrimPrefix(filename, "./"))
	if filename == "" || strings.HasPrefix(clean, "/") || clean == ".." || strings.HasPrefix(clean, "../") || !strings.HasPrefix(clean, "pool/") {
		return "", fmt.Errorf("snapshot: %q is not a pool path", filename)
	}
	if t.IsZero() {
		return "", fmt.Errorf("snapshot: no resolution time")
	}
	u := strings.TrimSuffix(base, "/") + "/archive/" + archive + "/" + t.UTC().Format(SnapshotTimeFormat) + "/" + escapePath(clean)
	if _, err := url.Parse(u); err != nil {
		return "", fmt.Errorf("snapshot: %w", err)
	}
	return u, nil
}

// escapePath escapes each segment of a pool path (a version's epoch colon
// never appears in pool file names, but '+' and '~' do and stay as they are).
func escapePath(p string) string {
	parts := strings.Split(p, "/")
	for i, s := range parts {
		parts[i] = url.PathEscape(s)
	}
	return strings.Join(parts, "/")
}
