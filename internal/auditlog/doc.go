// Package auditlog keeps kiln's tamper-evident audit trail: one JSON line
// per flash, verify, update or audit, appended to a file.
//
// Each line carries the SHA-256 of the line before it ("prev"; 64 zeros for
// the first) and a sequence number, so editing, deleting, inserting or
// reordering any line breaks the chain at the line after it. Lines must be
// in their canonical encoding (what kiln writes), so even a change that
// means the same thing is a change.
//
// Every N records and whenever a Log is closed, kiln appends a checkpoint:
// a line signed with an Ed25519 key (a minisign key, see package trust) that
// seals everything before it. The last checkpoint is also written beside the
// log (LOG.head); Verify compares it with the log, so cutting records off
// the end, back past that checkpoint, is detected too. Records after the
// last checkpoint (a crash before Close) are reported as unsealed.
//
// What the chain cannot do alone: someone who holds the signing key, or who
// deletes both the log's tail and the head file, can rewrite history. Keep
// the public key and, for stronger claims, copies of the head elsewhere
// (kiln log show --head prints it).
package auditlog
