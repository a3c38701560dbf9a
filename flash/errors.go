package flash

import "errors"

var (
	// ErrVerify means the bytes read back from the device differ from the image.
	// The CLI maps it to exit code 3.
	ErrVerify = errors.New("verification failed: device content differs from the image")
	// ErrNoDevice means no device answered at the given port.
	ErrNoDevice = errors.New("no device found")
	// ErrNoAnswer means the device stopped answering (or never started).
	ErrNoAnswer = errors.New("no answer from device")
	// ErrBadImage marks an image that cannot go to the board: out of range,
	// over the bootloader, wrong architecture, empty or malformed.
	ErrBadImage = errors.New("bad image")
	// ErrWrongDevice means the device answered but is not the board asked
	// for (its signature or product ID differs); nothing was written.
	ErrWrongDevice = errors.New("wrong device")
)
