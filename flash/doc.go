// Package flash is what every kiln flasher shares: the Image to be written,
// the small Target interface each back end implements, and Program and
// Verify, which write an image and prove it by reading it back.
//
// An Image is a set of (address, bytes) segments. HEX, ELF and BIN files all
// load into one, and Check holds it against a board before a byte goes out.
// Its hash is the SHA-256 of its segments' bytes in address order: for a
// contiguous image, the hash of firmware.bin. Program never reports success
// unless the bytes read back from the device hash to the same value; a
// mismatch is ErrVerify.
//
// Back ends (flash/stk500, flash/stk500v2, flash/stm32, flash/dfu, ...) speak
// their protocol over an io.ReadWriter or a small transfer interface; Link
// gives byte-stream protocols reads with deadlines over any io.Reader.
package flash
