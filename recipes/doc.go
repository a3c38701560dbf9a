// Package recipes is kiln's recipe format: parsing and validating recipe.toml,
// the pinned toolchain closures, and the canonical derivation whose SHA-256
// names a build before anything is fetched or built.
package recipes
