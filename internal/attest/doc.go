// Package attest writes the evidence that goes with a build, so that a third
// party can check what went into an artifact and who built it:
//
//   - sbom.cdx.json: a CycloneDX 1.6 bill of materials. The firmware (or
//     image) is the top component, its output files are its parts, and every
//     toolchain package, every recipe input and every source file is listed
//     with its SHA-256; Debian packages carry a package URL
//     (pkg:deb/debian/NAME@VERSION?arch=ARCH).
//   - provenance.json: an in-toto Statement v1 whose predicate is SLSA
//     provenance v1 (buildType, the recipe as external parameters, every
//     resolved dependency with its digest, the builder's id), wrapped in a
//     DSSE envelope signed with the same Ed25519 key kiln signs artifacts
//     with (the envelope's keyid is the minisign key ID).
//
// Both are deterministic for a given build: timestamps come from the build's
// SOURCE_DATE_EPOCH and the BOM's serial number from its derivation hash.
package attest
