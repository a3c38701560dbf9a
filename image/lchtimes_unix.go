package image

import (
	"golang.org/x/sys/unix"
)

func lchtimes(p string, sec int64) error {
	ts := []unix.Timespec{{Sec: sec}, {Sec: sec}}
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
}
