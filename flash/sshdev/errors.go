package sshdev

import "kiln.dev/kiln/flash"

// errVerify is flash.ErrVerify: a device hash that differs from the image's
// is the same failure as on every other back end (exit 3).
var errVerify = flash.ErrVerify
