// Package store is kiln's content-addressed store: a directory of read-only
// entries named <first 32 hex digits of a hash>-<name>, such as fetched
// inputs, merged toolchain trees and build outputs.
//
// An entry is written into a temporary directory inside the store, listed in
// a manifest it carries (.kiln-entry.json: every file's path, mode, size and
// sha256, every symlink's target), made read-only and renamed into place
// atomically, so an entry that exists is complete. Verify re-hashes an entry
// against its manifest and reports the first difference as ErrTampered.
//
// The store's root is $KILN_STORE, or ~/.cache/kiln/store.
package store
