// Package stk500v2 writes and reads AVR flash through the Arduino Mega 2560
// bootloader, which speaks Atmel's STK500 version 2 (AVR068) framing.
//
// A message is MESSAGE_START (0x1B), a sequence number, a 16-bit big-endian
// body size, TOKEN (0x0E), the body and a checksum: the XOR of every byte
// before it. The bootloader drops a frame whose checksum is wrong without a
// word, echoes the host's sequence number, and answers each command body
// with the command byte and a status (STATUS_CMD_OK is 0).
//
// What the Mega 2560 bootloader does, and how the client copes:
//   - CMD_LOAD_ADDRESS takes a word address; avrdude sets bit 31 on chips
//     with more than 64 K words and the bootloader shifts it out when it
//     doubles the value. The address advances with every page and read.
//   - CMD_PROGRAM_FLASH_ISP does not erase the page it writes: it erases the
//     page at a separate erase pointer that starts at 0 and moves one page per
//     write (CMD_CHIP_ERASE_ISP only resets the pointer, and answers
//     STATUS_CMD_FAILED). So the client writes every page from 0 to the end
//     of the image, in order, keeping the device's own bytes where the image
//     has none; a write after a reset starts again at page 0.
//   - CMD_READ_FLASH_ISP answers up to 256 bytes; CMD_SPI_MULTI with the
//     "read signature byte" instruction (0x30) gives the signature.
//
// Package stk500v2test is the device side, for tests and `kiln emulate`.
package stk500v2
