package debian

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrNoRelease is returned (wrapped) when an apt state's lists hold no
// Release file with a Date field to take a snapshot time from.
var ErrNoRelease = errors.New("no dated Release file")

// SnapshotMargin is added to an index's Release date to get the snapshot
// time of the packages it lists. The snapshot archive imports the main
// archive about every six hours and serves, for a timestamp, the last
// import at or before it: an import at or before the Release date itself
// may predate the packages that Release added, while the first import after
// it has them. Twelve hours is two import intervals. A package is removed
// from its suite only by a later Release (a point release, a security
// update that supersedes it), so within the margin it is still there.
const SnapshotMargin = 12 * time.Hour

// SnapshotTime is the snapshot-archive time at which every package of an
// index dated release is served: release + SnapshotMargin, in seconds.
// It depends on the repository's state, not on when kiln ran, so resolving
// the same index twice yields the same fallback URLs.
func SnapshotTime(release time.Time) time.Time {
	return release.UTC().Add(SnapshotMargin).Truncate(time.Second)
}

// ReleaseDate returns the latest Date of the Release and InRelease files in
// an apt lists directory: the state of the newest index apt read.
func ReleaseDate(lists string) (time.Time, error) {
	ents, err := os.ReadDir(lists)
	if err != nil {
		return time.Time{}, fmt.Errorf("release date: %w", err)
	}
	var latest time.Time
	for _, e := range ents {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), "Release") || strings.HasSuffix(e.Name(), ".gpg") {
			continue
		}
		d, err := releaseFileDate(filepath.Join(lists, e.Name()))
		if err != nil {
			return time.Time{}, err
		}
		if d.After(latest) {
			latest = d
		}
	}
	if latest.IsZero() {
		return time.Time{}, fmt.Errorf("release date: %s: %w", lists, ErrNoRelease)
	}
	return latest, nil
}

// releaseFileDate reads the Date field of a (possibly clear-signed)
// Release file; a file without one gives the zero time.
func releaseFileDate(name string) (time.Time, error) {
	f, err := os.Open(name)
	if err != nil {
		return time.Time{}, fmt.Errorf("release date: %w", err)
	}
	defer f.Close()
	d, err := readReleaseDate(f)
	if err != nil {
		return time.Time{}, fmt.Errorf("release date: %s: %w", name, err)
	}
	return d, nil
}

// readReleaseDate reads the Date field of a Release file's text: the
// first line that starts "Date:". Text without one gives the zero time; a
// line longer than 1 MiB is an error.
func readReleaseDate(r io.Reader) (time.Time, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Date:"); ok {
			return ParseReleaseDate(strings.TrimSpace(v))
		}
	}
	return time.Time{}, sc.Err()
}

// ParseReleaseDate parses a Release file's Date (RFC 2822 in UTC, as
// Debian's archive writes it: "Sat, 11 Jul 2026 10:16:37 UTC"). A date
// before 1970 or after 9998 in UTC is refused: no archive wrote it, and a
// snapshot timestamp (SnapshotTime, four-digit year) could not carry it.
func ParseReleaseDate(s string) (time.Time, error) {
	for _, layout := range []string{time.RFC1123, time.RFC1123Z, "Mon, 2 Jan 2006 15:04:05 MST", "Mon, 2 Jan 2006 15:04:05 -0700"} {
		if t, err := time.Parse(layout, s); err == nil {
			if y := t.UTC().Year(); y < 1970 || y > 9998 {
				return time.Time{}, fmt.Errorf("date %q is outside 1970-9998", s)
			}
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("date %q is not an RFC 2822 time", s)
}
