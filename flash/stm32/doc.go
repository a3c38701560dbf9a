// Package stm32 flashes STM32 microcontrollers through the USART bootloader
// in their system memory (ST application note AN3155), over any
// io.ReadWriter: a USB-serial adapter, a pseudo-terminal, or a pipe to the
// emulator in flash/stm32/stm32test.
//
// Open synchronises with the bootloader (0x7F autobaud, bounded retries and
// a diagnosis when nothing answers), asks Get for the bootloader version and
// the commands it lists, checks Get ID's product ID against the board's
// signature and reads the 96-bit unique ID. The Target it returns implements
// flash.Target and flash.Identifier:
//
//   - Write erases only the pages or sectors the image touches — the board's
//     flash layout (boards.Memory.Pages) says where they are — with Erase
//     (0x43) or Extended Erase (0x44), whichever the bootloader lists, then
//     programs 256-byte word-aligned blocks with Write Memory (0x31), padded
//     with 0xFF. Blocks that are all 0xFF are already erased and are skipped.
//   - ReadBack reads memory with Read Memory (0x11), 256 bytes a command.
//
// Every command is retried a bounded number of times on NACK, timeout or a
// garbled answer, after resynchronising: the line is drained, and 0xFF bytes
// are sent until the bootloader answers NACK, which it does only at a command
// boundary. 0xFF is chosen because no run of it forms a command, an erase of
// an existing page, or a write that changes flash (programming can only clear
// bits). A block whose write failed is read back: if it holds the data the
// ACK was lost; if it is still erased it is written again; otherwise its page
// is erased and written again. Nothing here reports success by itself: the
// caller's flash.Program reads the image back and compares hashes.
//
// When the bootloader lists Get Checksum (0xA1), VerifyChecksum compares the
// device's CRC-32 of each region with the image's without reading the bytes
// over the line. It reports CRCs, not a SHA-256 of device bytes; the default
// verification (flash.Verify) stays a full read-back.
package stm32
