// Package recipes is kiln's recipe format: parsing and validating recipe.toml,
// the pinned toolchain closures, and the canonical derivation whose SHA-256
// names a build before anything is fetched or built.
//
// # Recipes
//
// A recipe is a directory holding recipe.toml and the files it builds:
//
//	name = "blink-uno"                 # lower-case letters, digits, . _ + -
//	version = "1.0.0"
//	board = "arduino-uno"              # a board kiln knows (kiln boards)
//	toolchain = "avr-gcc-5.4"          # a closure in recipes/toolchains/
//	kind = "firmware"                  # the default; other kinds register with RegisterKind
//	sources = ["src/*.cpp"]            # compiled; globs relative to the directory
//	files = ["src/*.h"]                # read by the build but not compiled
//
//	[[inputs]]                         # fixed-output: named by its hash
//	name = "arduino-core-avr"
//	sources = ["deb:arduino-core-avr=1.8.7+dfsg-1~deb12u1", "https://…", "file:vendor/core.deb"]
//	sha256 = "357869fa…"
//	subdir = ""                        # optional root inside the unpacked input
//	file = ""                          # name of a non-archive input in its entry (default: name)
//
//	[build]
//	cflags = ["-Os"]                   # also cxxflags, asflags, ldflags
//	defines = { F_CPU = "16000000L" }
//	includes = ["$in/arduino-core-avr/usr/share/arduino/hardware/arduino/avr/cores/arduino", "$src/src"]
//	core_sources = ["$in/arduino-core-avr/…/cores/arduino/*.c"]   # compiled into core.a
//	linker_script = "$src/src/f401.ld"
//	libs = ["m"]
//	pre = [["$in/tool/usr/bin/gen", "out.h"]]  # commands run in the sandbox first
//
// Paths in [build] name an input's unpacked tree as $in/<input>/… and the
// recipe directory as $src/…. Globs are path.Match patterns (no **); a glob
// that matches no file is an error (ErrNoMatch). Unknown keys are errors.
// Every error names the recipe file, and the line and column where the
// mistake has one.
//
// # Derivations
//
// Recipe.Derive resolves the board and the toolchain, expands the globs and
// hashes every file; it uses no network. The Derivation is canonical JSON:
// the builder's format version, the recipe's fields, the whole board
// definition, the toolchain closure (every package's sha256, its links and
// library directories), every input's sha256 and every source file's path
// and sha256. Its SHA-256 is the derivation hash that kiln hash prints and
// that names the build's store entry. Where the recipe lives and where its
// inputs are fetched from are not part of it: adding or reordering mirrors
// does not change the hash; one changed byte of one source does.
//
// # Toolchains
//
// A toolchain closure (recipes/toolchains/<name>.toml, embedded) lists the
// Debian packages of a compiler and the shared libraries its executables
// load, each pinned by sha256, plus the symlinks the packages' maintainer
// scripts would have made, the absolute paths the packages hard-code
// (binds) and what still comes from the host (its C library).
package recipes
