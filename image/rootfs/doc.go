// Package rootfs assembles a Debian root filesystem from a locked package
// closure the way mmdebstrap's essential variant does, inside kiln's build
// sandbox: every essential package's data is unpacked, then dpkg itself
// (the root's own, for the root's architecture) installs the essential set
// with --force-depends and then the rest, running every maintainer script
// in dpkg's order. A foreign architecture's programs run through
// qemu-user-static, registered with flag F in the sandbox's own user
// namespace's binfmt_misc (the host's registrations are neither needed nor
// touched). The sandbox has no network, a fixed SOURCE_DATE_EPOCH, and the
// result is cleaned of what differs between runs (logs, caches, the
// machine ID, SSH host keys), so two assemblies are bit-identical.
//
// An assembled root is a store derivation of its own (Realise): its hash
// (RootDerivation) covers the lock, the architecture, SOURCE_DATE_EPOCH,
// AssemblyVersion and kiln's builder digest, and the entry holds the tree as a PAX tar kiln writes
// (WriteTar) and unpacks (ExtractTar), keeping what a root filesystem needs
// that a store entry cannot: owners, set-id bits, device nodes, hard links,
// extended attributes. Images that differ only in what they lay over the
// root share one assembly.
package rootfs
