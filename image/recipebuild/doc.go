// Package recipebuild builds the disk image a recipe of kind "image"
// describes: it fetches the pinned inputs into the store, assembles the
// initramfs and each partition's files, generates the Raspberry Pi boot files
// (config.txt, cmdline.txt, autoboot.txt) with the real PARTUUIDs and kiln.json
// (the slot table the SSH updater reads), and writes image.img, image.img.xz,
// image.bmap and manifest.json.
//
// Two builds of the same recipe from different checkouts and different
// stores are byte-identical: every identity comes from the derivation hash and
// every timestamp from the recipe's source_date_epoch.
package recipebuild
