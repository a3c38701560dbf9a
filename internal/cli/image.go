package cli

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/image/rootfs"
	"kiln.dev/kiln/internal/cache"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

func init() {
	register(&cli.Command{
		Name:  "image",
		Usage: "build and inspect SD-card images",
		Subcommands: []*cli.Command{
			{
				Name:      "build",
				Usage:     "build an image recipe: image.img, image.img.xz, image.bmap, manifest.json",
				ArgsUsage: "RECIPE_DIR",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "out", Usage: "write the outputs to `DIR` (default out/<name>)"},
					storeFlag,
					&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "say what each step did (on stderr)"},
					substituterFlag, policyFlag,
					jsonFlag,
				},
				Action: runImageBuild,
			},
			{
				Name:      "inspect",
				Usage:     "print an image's partition table, partitions, filesystems and kiln metadata",
				ArgsUsage: "IMAGE",
				Flags:     []cli.Flag{jsonFlag},
				Action:    runImageInspect,
			},
		},
	})
}

func runImageBuild(c *cli.Context) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("image build: want RECIPE_DIR (see kiln image build --help)")
	}
	return imageBuild(c, args[0], c.String("out"))
}

// imageBuild builds an image recipe; kiln build calls it for kind = "image".
func imageBuild(c *cli.Context, dir, out string) error {
	e := envOf(c)
	s, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	if out == "" {
		out = filepath.Join("out", filepath.Base(filepath.Clean(dir)))
	}
	started := time.Now()
	bar := newProgress(e.stderr, c.Bool("json"))
	sub, err := newSubstitution(c, s)
	if err != nil {
		return err
	}
	opts := recipebuild.Options{Store: s, Progress: bar.Func(), Substitute: sub.hook()}
	if c.Bool("verbose") {
		opts.Log = e.line
	}
	res, rz, err := recipebuild.Realise(c.Context, dir, opts)
	if err == nil {
		res, err = recipebuild.Export(c.Context, res, rz.Path, out, opts)
	}
	bar.Done()
	if err != nil {
		return imageHints(err)
	}
	// Evidence beside image.img (sign.go): sbom.cdx.json, provenance.json.
	if err := writeImageEvidence(c, dir, out, res, sub.Origins(), started); err != nil {
		return err
	}
	if c.Bool("json") {
		// rootfs_realised: how this run came by the Debian root (hit:
		// found in the store; built: assembled), absent when the image
		// itself was found; manifest.json names only its derivation.
		var rootHow store.How
		if res.Rootfs != nil {
			rootHow = res.Rootfs.How
		}
		return e.printJSON(struct {
			*recipebuild.Result
			SubstitutedFrom []*cache.Origin `json:"substituted_from,omitempty"`
			RootfsRealised  store.How       `json:"rootfs_realised,omitempty"`
		}{res, sub.Origins(), rootHow})
	}
	fmt.Fprintf(e.stdout, "built %s %s (%s table, %s)\n", res.Name, res.Version, res.Image.Table, humanBytes(res.Image.Size))
	fmt.Fprintf(e.stdout, "derivation %s\n", res.Derivation)
	fmt.Fprintf(e.stdout, "store      %s (%s)\n", rz.Path, rz.How)
	if r := res.Rootfs; r != nil {
		switch r.How {
		case store.Hit:
			fmt.Fprintf(e.stdout, "rootfs     %s (found in the store, not assembled)\n", r.Derivation)
		case store.Built:
			fmt.Fprintf(e.stdout, "rootfs     %s (assembled)\n", r.Derivation)
		default:
			fmt.Fprintf(e.stdout, "rootfs     %s (not needed: the image was in the store)\n", r.Derivation)
		}
	}
	for _, name := range []string{image.ImageFile, image.XZFile, image.BmapFile} {
		if o, ok := res.Outputs[name]; ok {
			fmt.Fprintf(e.stdout, "%-13s %s  %s\n", name, o.SHA256, humanBytes(o.Size))
		}
	}
	fmt.Fprintf(e.stdout, "outputs in %s\n", out)
	return nil
}

func imageHints(err error) error {
	switch {
	case errors.Is(err, image.ErrLayout):
		return withHint(err, "check the partitions' start and size in [[image.partitions]]")
	case errors.Is(err, image.ErrNoSpace):
		return withHint(err, "make the partition larger, or put less into it")
	case errors.Is(err, image.ErrBadName):
		return withHint(err, "FAT names cannot hold \" * / : < > ? \\ | or end in a dot or space")
	case errors.Is(err, image.ErrMissingFile):
		return withHint(err, "a contents entry names a file that does not exist")
	case errors.Is(err, rootfs.ErrSandbox):
		return withHint(err, "a Debian root is assembled as root in an identity-mapped user namespace, with qemu-user-static for a foreign architecture (make deps installs it)")
	case errors.Is(err, rootfs.ErrScript):
		return withHint(err, "the package's maintainer script failed inside the sandbox (no network, no running system): its output is above; nothing was stored")
	case errors.Is(err, store.ErrTampered):
		return withHint(err, "run `kiln store verify` to list tampered entries, then `kiln store gc` or remove the entry and build again")
	case errors.Is(err, recipes.ErrNoLock):
		return withHint(err, "run kiln lock RECIPE_DIR: it resolves [image.rootfs] into rootfs.lock")
	}
	return err
}

func runImageInspect(c *cli.Context) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("image inspect: want IMAGE (see kiln image inspect --help)")
	}
	e := envOf(c)
	info, err := image.Inspect(args[0])
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return e.printJSON(info)
	}
	fmt.Fprintf(e.stdout, "%s: %s, %s table, disk id %s\n", info.Path, humanBytes(info.Size), info.Table, info.DiskID)
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tSTART\tSIZE\tTYPE\tPARTUUID\tFS\tLABEL\tFS ID")
	for _, p := range info.Partitions {
		boot := ""
		if p.Bootable {
			boot = "*"
		}
		fmt.Fprintf(tw, "%d%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Number, boot, p.Start, humanBytes(p.Size), p.Type,
			p.PartUUID, p.FS, p.Label, p.FSID)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if info.Metadata != nil {
		fmt.Fprintf(e.stdout, "kiln.json:\n%s\n", strings.TrimSpace(string(info.Metadata)))
	}
	return nil
}
