// Package cache is kiln's binary cache: store entries shared between
// machines through object storage a team already runs (AWS S3, MinIO,
// SeaweedFS, Ceph RGW), a static web server or CDN in front of it, or a
// shared disk.
//
// A cache holds two kinds of object, under the URL's prefix:
//
//	content/<sha256>.tar.zst   a store entry as a tar archive compressed with
//	                           zstd, named by the sha256 of its own bytes
//	records/<key>.json         a signed index record, named by the entry's
//	                           store key (a derivation, toolchain or input
//	                           hash): the entry's name, every file's path,
//	                           type, mode, size and sha256, the content
//	                           object's sha256 and size, and the signer
//
// Push uploads the content first and the record last, so a reader that sees
// a record finds the whole entry behind it; an entry whose record exists is
// not uploaded again. Archives and records are deterministic (sorted, no
// times, fixed compression), so two machines pushing the same entry with the
// same key write the same bytes.
//
// Substitute is the reading side. A record is used only if it is signed by
// an accepted key and names the entry asked for; the content is hashed while
// it streams in and every file is checked against the record before the
// entry is renamed into the store. Anything else (unknown signer, a flipped
// byte, a short download, a record that disagrees with its content, a cache
// that does not answer) is a note, and the next cache is asked; nothing
// partial or wrong enters the store.
//
// URLs: s3://BUCKET/PREFIX?endpoint=URL&region=R&profile=P (credentials from
// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the shared credentials file,
// through minio-go), https:// and http:// (read-only mirrors: any static web
// server in front of the bucket) and file:///DIR.
package cache
