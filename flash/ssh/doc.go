// Package ssh is kiln's SSH transport to devices in the field: it parses
// ssh://user@host[:port]/path ports, dials with the user's keys or agent
// (never a password prompt), verifies host keys against known_hosts (never
// an insecure callback), runs one shell command at a time (Runner) and drops
// a connection whose device stopped answering keepalives (ErrConnLost).
//
// What kiln does with a device over that transport — whole-disk writes,
// A/B updates, on-device hashing — is package flash/sshdev; its test
// devices (sshd in network namespaces) are flash/ssh/sshtest.
package ssh
