// Package dfu writes and reads STM32 devices through USB DFU: the DFU 1.1
// state machine (DNLOAD, UPLOAD, GETSTATUS with bwPollTimeout polling,
// CLRSTATUS and ABORT recovery, GETSTATE) and ST's DfuSe extensions (set
// address pointer, sector erase, mass erase, leave).
//
// A DfuSe device lists its memories as alternate settings whose names are
// layout strings such as
//
//	@Internal Flash  /0x08000000/04*016Kg,01*064Kg,03*128Kg
//
// ParseLayout reads them into sectors with their read, erase and write
// rights. Target.Write checks the whole image against those sectors before
// the first transfer (an image outside every memory or over a read-only
// sector is refused with flash.ErrBadImage), picks the alternate setting by
// address, erases exactly the sectors the image touches and programs it in
// wTransferSize blocks. Errors the device reports or stalls are recovered
// (CLRSTATUS, ABORT) and the block is retried a bounded number of times; a
// block that meets unerased flash has its sector erased again.
//
// Target implements flash.Target, so flash.Program proves every write by
// uploading the image's extent and comparing SHA-256 hashes.
//
// The protocol code talks to a Controller — one method, a USB control
// transfer — never to a USB library. Open (usb.go) is the adapter for real
// devices through gousb and libusb; package dfutest is a DfuSe device model
// with fault injection that implements the same interface.
package dfu
