// Package e2e holds kiln's end-to-end tests of USB DFU flashing: the real
// CLI (cli.Main) against the real libusb path with no device attached, and
// against the DfuSe device model behind --port emu:BOARD. They live apart
// from package dfu so its protocol tests do not depend on the whole CLI.
package e2e
