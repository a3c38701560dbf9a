// Package trust signs and checks what kiln builds before it reaches a device.
//
// Signatures use minisign's format, so that anyone with Debian's minisign
// can verify a kiln signature and kiln can verify minisign's:
//
//   - keys are Ed25519; a key pair has an 8-byte random key ID;
//   - a signature is the "ED" (prehashed) kind: Ed25519 over the
//     BLAKE2b-512 hash of the file;
//   - a trusted comment is signed together with that signature (the
//     "global" signature), so it cannot be changed either; kiln writes the
//     artifact's SHA-256 and its derivation hash there, as tab-separated
//     "key:value" fields after minisign's own "timestamp" and "file".
//
// Secret key files are read whether encrypted (scrypt, as minisign makes
// them) or not (minisign -W); kiln writes unencrypted ones for automation,
// kept with mode 0600.
//
// A Policy (TOML) names the trusted public keys and which boards, groups and
// ports require a signed artifact. Policy.Check runs before any device I/O;
// it returns an error wrapping ErrUntrusted when the artifact may not be
// written.
package trust
