// Package firmware is kiln's firmware builder: it turns a recipe's
// derivation into firmware.elf, firmware.hex, firmware.bin and
// manifest.json in the store.
//
// Build first hashes the derivation (recipes.Derivation.Hash). If the
// store holds the entry and it verifies, that is the result: no compiler
// runs. Otherwise the toolchain closure and the inputs are fetched (or found
// in the store) and verified, and the build runs in a sandbox: kiln
// re-executes itself as the first process of new user, mount, network, PID,
// IPC and UTS namespaces, makes a tmpfs root holding only the toolchain
// (read-only at /toolchain), each input (read-only at /inputs/<name>), a copy
// of the recipe's files (at /build), the host's C library files the
// toolchain's programs load (named in the manifest as host impurities) and
// /dev/null, pivots into it and runs the compiles — in parallel, one job per
// CPU, each with -frandom-seed set to the source's path — then `ar rcsD`
// and the link, with an environment of PATH (the toolchain only),
// LD_LIBRARY_PATH, TZ=UTC, LC_ALL=C, HOME=/homeless and SOURCE_DATE_EPOCH.
// The paths the compiler sees are the same for every checkout and store, so
// the ELF is too.
//
// HEX and BIN are made by kiln, not objcopy, from the ELF's loadable
// segments at their physical addresses (FromELF): HEX with gohex, BIN as
// the segments' extent with the gaps filled with 0xff. The program is
// checked against the board's application flash before anything enters the
// store.
//
// manifest.json (Manifest) names the derivation, every output's hash and
// size, the load address, board, inputs, toolchain packages, the host
// impurities and whether the sandbox was used. It holds no times: two builds
// of one derivation write the same bytes, which is what Options.Check
// (kiln build --check) compares.
package firmware
