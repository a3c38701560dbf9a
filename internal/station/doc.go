// Package station is kiln's factory provisioning station: one computer
// flashing many boards at once, giving each its own identity, proving every
// write and keeping a record an auditor can trust.
//
// A station is described by a STATION.toml file (see Config): which signed
// artifact goes to which board, on which ports (listed paths, globs of
// paths that come and go, or any USB serial port whose VID:PID the board
// file names), where serial numbers come from (a counter or a CSV file),
// whether each device gets an Ed25519 key pair, the operator, the trust
// policy, the audit log and the state file.
//
// The engine runs one job per port at a time. A job opens the device, takes
// a serial number (Serials.Reserve), generates the device's key pair, builds
// its provisioning Record (versioned, CRC-32 protected, padded to the
// region the board file declares in its provision field), writes firmware
// and record together, then reads both back: the firmware's SHA-256 must
// match the artifact's and the record must decode and equal what was
// written. Only then is the serial number committed; any failure releases
// it, so the numbers verified devices carry are unique and contiguous.
// Every job ends with exactly one audit-log record (kind "provision") with
// the device's identity, the port, the artifact and read-back hashes and
// the provision values (serial, public key, record hash). The private key
// is written only to the device.
//
// A port that disappears (a board unplugged) ends its job as a failure
// whose cause says so; a port that appears again, or whose device node or
// link is replaced (a re-plugged board), gets a fresh job. When Run's
// context ends, jobs in flight get a grace period to finish and are then
// cancelled and recorded as aborted. The audit log is verified before the
// station starts and after it stops.
//
// Status and Subscribe feed the operator's views: the CLI's terminal
// summary and the dashboard package's live web page.
package station
