package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/image"
	"kiln.dev/kiln/image/recipebuild"
	"kiln.dev/kiln/internal/attest"
	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/op"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

func init() {
	register(&cli.Command{
		Name:      "audit",
		Usage:     "rebuild a recipe and compare it with a shipped artifact or with what a device holds",
		ArgsUsage: "RECIPE_DIR (--against FILE | --port PORT)",
		Description: "The recipe is rebuilt in a fresh sandbox (and must reproduce the store's outputs bit for bit);\n" +
			"then an ELF is compared section by section, a .hex/.bin (or the device's flash) byte by byte, with each\n" +
			"difference named by the rebuild's ELF section; a disk image (.img, .img.xz) partition by partition;\n" +
			"an image recipe with --port ssh://user@host: the device's running slot, hashed on the device.\n" +
			"Exit 0 identical, 3 different.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "against", Usage: "shipped artifact `FILE` (.elf, .hex, .bin, .img, .img.xz, or a build output directory)"},
			&cli.StringFlag{Name: "port", Aliases: []string{"p"}, Usage: "read the device at `PORT` instead (as kiln verify does)"},
			&cli.StringFlag{Name: "board", Aliases: []string{"b"}, Usage: "board `NAME` of the device (default: the recipe's)"},
			&cli.BoolFlag{Name: "full", Usage: "with --port, read the whole application flash: anything but erased bytes outside the build is a difference"},
			protocolFlag, baudFlag,
			&cli.StringFlag{Name: "address", Usage: "load `ADDRESS` of a .bin (default: the build's load address)"},
			storeFlag,
			&cli.BoolFlag{Name: "no-sandbox", Usage: "rebuild on the host where namespaces are not allowed"},
			sshKeyFlag, knownHostsFlag,
			logFlag,
			jsonFlag,
		},
		Action: runAudit,
	})
}

type auditReport struct {
	Recipe     string             `json:"recipe"`
	Derivation string             `json:"derivation"`
	Against    string             `json:"against"`
	Device     string             `json:"device,omitempty"`
	Identical  bool               `json:"identical"`
	Comparison *attest.Comparison `json:"comparison,omitempty"`
	Slot       *op.SlotCheck      `json:"slot,omitempty"` // an image audited on a device over SSH
}

func runAudit(c *cli.Context) error {
	args, err := trailingFlags(c)
	if err != nil {
		return err
	}
	if len(args) != 1 {
		return usagef("audit: want one RECIPE_DIR (see kiln audit --help)")
	}
	against, port := c.String("against"), c.String("port")
	if (against == "") == (port == "") {
		return usagef("audit: give exactly one of --against FILE and --port PORT")
	}
	e := envOf(c)
	s, err := store.Open(c.String("store"))
	if err != nil {
		return err
	}
	if r, err := recipes.Load(args[0]); err == nil && r.Kind == recipes.KindImage {
		return auditImage(c, args[0], s, against, port)
	}
	opts := firmware.Options{Dir: args[0], Store: s, Check: true, NoSandbox: c.Bool("no-sandbox")}
	if !c.Bool("json") {
		opts.Log = e.line
	}
	res, err := firmware.Build(c.Context, opts)
	if err != nil {
		err = withHint(fmt.Errorf("audit: rebuild: %w", err), "an audit needs a rebuild that reproduces: see kiln build --check")
		return appendResult(c, auditlog.Entry{Kind: auditlog.KindAudit, Artifact: against, Port: port}, err)
	}
	m := res.Manifest
	rebuilt, err := os.ReadFile(filepath.Join(res.StorePath, firmware.ELFName))
	if err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	rep := auditReport{Recipe: m.Name, Derivation: res.Derivation}
	entry := auditlog.Entry{Kind: auditlog.KindAudit, Derivation: res.Derivation}
	var cmp *attest.Comparison
	if against != "" {
		rep.Against, entry.Artifact = against, against
		cmp, err = compareFile(c, against, rebuilt, m)
	} else {
		rep.Against, entry.Port = port, port
		cmp, rep.Device, entry.Board, err = compareDevice(c, port, rebuilt, m)
		entry.Device = rep.Device
	}
	if err != nil {
		return appendResult(c, entry, err)
	}
	rep.Comparison, rep.Identical = cmp, cmp.Identical
	entry.ArtifactSHA256 = cmp.ArtifactSHA256
	if port != "" {
		entry.ArtifactSHA256, entry.ReadbackSHA256 = cmp.RebuildSHA256, cmp.ArtifactSHA256
	}
	var names []string
	for _, d := range cmp.Differing() {
		names = append(names, d.Name)
	}
	if len(cmp.Outside) > 0 {
		names = append(names, "bytes outside every section")
	}
	return finishAudit(c, e, entry, rep, names, func() { printComparison(e, rep) })
}

// finishAudit records the audit's result, prints rep (as JSON with --json,
// else with show) and exits with ExitVerify when rep is not identical.
// names are the parts that differ.
func finishAudit(c *cli.Context, e *env, entry auditlog.Entry, rep auditReport, names []string, show func()) error {
	entry.Result = "identical"
	if !rep.Identical {
		entry.Result, entry.Detail = "different", strings.Join(names, ", ")
	}
	if err := appendAudit(c, entry); err != nil {
		return err
	}
	if c.Bool("json") {
		if err := e.printJSON(rep); err != nil {
			return err
		}
	} else {
		show()
	}
	if !rep.Identical {
		what := "differs from the rebuild"
		if len(names) > 0 {
			what += " in " + strings.Join(names, ", ")
		}
		return cli.Exit(fmt.Sprintf("audit: %s %s of %s", rep.Against, what, rep.Recipe), ExitVerify)
	}
	return nil
}

func printComparison(e *env, rep auditReport) {
	cmp := rep.Comparison
	fmt.Fprintf(e.stdout, "rebuilt %s (derivation %s) afresh: bit-identical to the store\n", rep.Recipe, rep.Derivation)
	dev := ""
	if rep.Device != "" {
		dev = " (" + rep.Device + ")"
	}
	fmt.Fprintf(e.stdout, "against %s%s: %s sha256 %s, rebuild %s\n", rep.Against, dev, cmp.Format, cmp.ArtifactSHA256, cmp.RebuildSHA256)
	if cmp.Identical {
		fmt.Fprintf(e.stdout, "identical: every section matches the rebuild\n")
		return
	}
	fmt.Fprintf(e.stdout, "different:\n")
	for _, d := range cmp.Differing() {
		switch d.Status {
		case attest.Different:
			if d.Bytes > 0 {
				fmt.Fprintf(e.stdout, "  %-16s 0x%06x+%-6d %s, first at 0x%x\n", d.Name, d.Addr, d.Size, plural(d.Bytes, "byte differs", "bytes differ"), d.First)
			} else {
				fmt.Fprintf(e.stdout, "  %-16s 0x%06x+%-6d address or flags differ\n", d.Name, d.Addr, d.Size)
			}
		case attest.Resized:
			fmt.Fprintf(e.stdout, "  %-16s 0x%06x+%-6d %d bytes in the artifact\n", d.Name, d.Addr, d.Size, d.ArtifactSize)
		default:
			fmt.Fprintf(e.stdout, "  %-16s 0x%06x+%-6d %s\n", d.Name, d.Addr, d.Size, d.Status)
		}
	}
	for _, r := range cmp.Outside {
		fmt.Fprintf(e.stdout, "  %-16s 0x%06x+%-6d outside every section of the rebuild\n", "-", r.Addr, r.Size)
	}
	if cmp.Note != "" {
		fmt.Fprintf(e.stdout, "note: %s\n", cmp.Note)
	}
}

// compareFile compares a shipped file with the rebuild.
func compareFile(c *cli.Context, path string, rebuilt []byte, m *firmware.Manifest) (*attest.Comparison, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		for _, n := range []string{firmware.ELFName, firmware.HEXName} {
			if _, err := os.Stat(filepath.Join(path, n)); err == nil {
				path = filepath.Join(path, n)
				break
			}
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(data) >= 4 && string(data[:4]) == "\x7fELF" {
		return attest.CompareELF(rebuilt, data)
	}
	lo := flash.LoadOptions{}
	addr := m.LoadAddress
	if s := c.String("address"); s != "" {
		a, err := strconv.ParseUint(s, 0, 32)
		if err != nil {
			return nil, usagef("--address %q: want a number such as 0x08000000", s)
		}
		addr = uint32(a)
	}
	if strings.EqualFold(filepath.Ext(path), ".bin") {
		lo.Address = &addr
	}
	img, err := flash.Load(path, lo)
	if err != nil {
		return nil, withHint(err, "kiln audit compares .elf, .hex and .bin firmware files")
	}
	return attest.CompareImage(rebuilt, img)
}

// compareDevice reads the rebuild's extent back from the device at port
// and compares it with the rebuild.
func compareDevice(c *cli.Context, port string, rebuilt []byte, m *firmware.Manifest) (*attest.Comparison, string, string, error) {
	e := envOf(c)
	name := c.String("board")
	if name == "" {
		name = m.Board
	}
	b, err := boards.Get(name)
	if err != nil {
		return nil, "", name, withHint(err, "kiln boards lists the boards kiln knows")
	}
	img, err := flash.ParseELF(firmware.ELFName, bytes.NewReader(rebuilt))
	if err != nil {
		return nil, "", b.Name, err
	}
	want := img
	if c.Bool("full") {
		// Read the whole application area; keep what is not erased.
		want = &flash.Image{Segments: []flash.Segment{{Addr: b.Flash.Base, Data: make([]byte, b.Flash.Size)}}}
	}
	bar := newProgress(e.stderr, c.Bool("json"))
	req := op.Request{Port: port, Protocol: c.String("protocol"), Progress: bar.Func(), Open: openDevice,
		Device: device.Options{Baud: c.Int("baud"), Note: e.note}, Note: e.note}
	dev, id, err := op.Read(c.Context, req, b, want.Regions())
	bar.Done()
	if err != nil {
		return nil, id, b.Name, diagnose(fmt.Errorf("audit: %w", err), port)
	}
	if c.Bool("full") {
		dev = notErased(dev, img)
	}
	cmp, err := attest.CompareImage(rebuilt, dev)
	return cmp, id, b.Name, err
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// rebuildImage realises an image recipe through the store; when the store
// already held it, it builds it once more in a temporary directory (an
// audit is a rebuild) and fails unless the rebuild matches the store's
// image. It returns the rebuilt image.img.
func rebuildImage(c *cli.Context, dir string, opts recipebuild.Options) (*recipebuild.Result, string, func(), error) {
	res, rz, err := recipebuild.Realise(c.Context, dir, opts)
	if err != nil {
		return nil, "", nil, err
	}
	img := filepath.Join(rz.Path, image.ImageFile)
	if rz.How != store.Hit {
		return res, img, func() {}, nil
	}
	tmp, err := os.MkdirTemp("", "kiln-audit-")
	if err != nil {
		return nil, "", nil, err
	}
	cleanup := func() { os.RemoveAll(tmp) }
	// An audit rebuilds the Debian root too, rather than reuse the one
	// the stored image was made from.
	fo := opts
	fo.RebuildRoot = true
	fresh, err := recipebuild.Build(c.Context, dir, tmp, fo)
	if err != nil {
		cleanup()
		return nil, "", nil, err
	}
	if got, want := fresh.Outputs[image.ImageFile].SHA256, res.Outputs[image.ImageFile].SHA256; got != want {
		cleanup()
		return nil, "", nil, fmt.Errorf("%w: %s rebuilt as %s, the store holds %s", firmware.ErrNotReproducible, image.ImageFile, short12(got), short12(want))
	}
	return fresh, filepath.Join(tmp, image.ImageFile), cleanup, nil
}

// auditImage rebuilds an image recipe and compares the shipped .img (or
// .img.xz) with it partition by partition.
func auditImage(c *cli.Context, dir string, s *store.Store, against, port string) error {
	e := envOf(c)
	if err := op.SlotPort(port); port != "" && err != nil {
		return usagef("audit --port %s: an image recipe is audited on a device over SSH (ssh://user@host[/dev/mmcblk0])", port)
	}
	opts := recipebuild.Options{Store: s, NoXZ: true}
	if !c.Bool("json") {
		opts.Log = e.line
	}
	res, rebuilt, cleanup, err := rebuildImage(c, dir, opts)
	if err != nil {
		err = withHint(fmt.Errorf("audit: rebuild: %w", err), "an audit needs a rebuild: see kiln image build")
		return appendResult(c, auditlog.Entry{Kind: auditlog.KindAudit, Artifact: against, Port: port}, err)
	}
	defer cleanup()
	if port != "" {
		return auditImageDevice(c, e, port, rebuilt, res)
	}
	if st, err := os.Stat(against); err == nil && st.IsDir() {
		against = filepath.Join(against, image.ImageFile)
	}
	entry := auditlog.Entry{Kind: auditlog.KindAudit, Artifact: against, Derivation: res.Derivation, Board: res.Board}
	shipped, err := op.LoadDisk(against, op.LoadOptions{})
	if err != nil {
		return appendResult(c, entry, err)
	}
	defer shipped.Close()
	cmp, err := compareDisks(rebuilt, shipped.DiskPath(), res)
	if err != nil {
		return appendResult(c, entry, err)
	}
	rep := auditReport{Recipe: res.Name, Derivation: res.Derivation, Against: against, Identical: cmp.Identical, Comparison: cmp}
	entry.ArtifactSHA256 = cmp.ArtifactSHA256
	var names []string
	for _, d := range cmp.Differing() {
		names = append(names, d.Name)
	}
	return finishAudit(c, e, entry, rep, names, func() {
		fmt.Fprintf(e.stdout, "rebuilt %s (derivation %s)\n", rep.Recipe, rep.Derivation)
		fmt.Fprintf(e.stdout, "against %s: disk sha256 %s, rebuild %s\n", against, cmp.ArtifactSHA256, cmp.RebuildSHA256)
		if cmp.Identical {
			fmt.Fprintf(e.stdout, "identical: every partition matches the rebuild\n")
		} else {
			fmt.Fprintf(e.stdout, "different:\n")
			for _, d := range cmp.Differing() {
				fmt.Fprintf(e.stdout, "  %-16s at %d, %d bytes: %s, first at %d\n", d.Name, d.Addr, d.Size, plural(d.Bytes, "byte differs", "bytes differ"), d.First)
				for _, f := range d.Files {
					fmt.Fprintf(e.stdout, "      %-16s %s\n", f.Status, f.Path)
				}
				if d.FilesNote != "" {
					fmt.Fprintf(e.stdout, "      (%s)\n", d.FilesNote)
				}
			}
			if cmp.Note != "" {
				fmt.Fprintf(e.stdout, "note: %s\n", cmp.Note)
			}
		}
	})
}

// auditImageDevice compares the slot a device runs, hashed on the device,
// with the rebuild as an update would have written it.
func auditImageDevice(c *cli.Context, e *env, port, rebuilt string, res *recipebuild.Result) error {
	entry := auditlog.Entry{Kind: auditlog.KindAudit, Port: port, Derivation: res.Derivation, Board: res.Board}
	chk, host, err := op.CheckSlot(c.Context, port, sshOptions(c), rebuilt)
	if err != nil {
		return appendResult(c, entry, opError(err, port, rebuilt))
	}
	entry.Device, entry.ReadbackSHA256 = host, chk.RootSHA256
	rep := auditReport{Recipe: res.Name, Derivation: res.Derivation, Against: port, Device: host, Identical: chk.Match, Slot: chk}
	var names []string
	if chk.RootSHA256 != chk.WantRoot {
		names = append(names, fmt.Sprintf("root partition %d", chk.Root))
	}
	if chk.BootSHA256 != chk.WantBoot {
		names = append(names, fmt.Sprintf("boot partition %d", chk.Boot))
	}
	return finishAudit(c, e, entry, rep, names, func() {
		state := func(got, want string) string {
			if got == want {
				return "identical"
			}
			return "DIFFERENT, rebuild " + want
		}
		fmt.Fprintf(e.stdout, "rebuilt %s (derivation %s)\n", rep.Recipe, rep.Derivation)
		fmt.Fprintf(e.stdout, "against %s: running slot %s, hashed on the device\n", port, chk.Slot)
		fmt.Fprintf(e.stdout, "  root partition %d: sha256 %s %s\n", chk.Root, chk.RootSHA256, state(chk.RootSHA256, chk.WantRoot))
		fmt.Fprintf(e.stdout, "  boot partition %d: sha256 %s %s\n", chk.Boot, chk.BootSHA256, state(chk.BootSHA256, chk.WantBoot))
		if chk.Match {
			fmt.Fprintf(e.stdout, "identical: the running slot holds exactly the rebuild\n")
		}
	})
}

func compareDisks(rebuiltPath, shippedPath string, res *recipebuild.Result) (*attest.Comparison, error) {
	rf, err := os.Open(rebuiltPath)
	if err != nil {
		return nil, err
	}
	defer rf.Close()
	af, err := os.Open(shippedPath)
	if err != nil {
		return nil, err
	}
	defer af.Close()
	rst, err := rf.Stat()
	if err != nil {
		return nil, err
	}
	ast, err := af.Stat()
	if err != nil {
		return nil, err
	}
	var parts []attest.DiskPart
	fsOf := map[string]string{}
	if res.Image != nil {
		for _, p := range res.Image.Partitions {
			name := fmt.Sprintf("partition %d (%s)", p.Index, p.Name)
			parts = append(parts, attest.DiskPart{Name: name, Start: p.Start, Size: p.Size})
			fsOf[name] = p.FS
		}
	}
	cmp, err := attest.CompareDisk(rf, af, rst.Size(), ast.Size(), parts)
	if err != nil {
		return nil, err
	}
	// Inside a differing filesystem: which files.
	for i := range cmp.Sections {
		d := &cmp.Sections[i]
		fs := fsOf[d.Name]
		if d.Status == attest.Identical || (fs != "fat32" && fs != "squashfs" && fs != "ext4") {
			continue
		}
		want, err := attest.PartitionFiles(rf, int64(d.Addr), int64(d.Size), fs)
		if err != nil {
			d.FilesNote = err.Error()
			continue
		}
		got, err := attest.PartitionFiles(af, int64(d.Addr), int64(d.Size), fs)
		if err != nil {
			d.FilesNote = "the artifact's filesystem cannot be read: " + err.Error()
			continue
		}
		d.Files = attest.DiffFiles(want, got)
		if len(d.Files) == 0 {
			d.FilesNote = "every file's contents match: the filesystem's metadata or free space differ"
		}
	}
	return cmp, nil
}

// notErased keeps, of a full read of the flash, the bytes inside the
// build's segments and every byte outside them that is not erased (0xff).
func notErased(full, build *flash.Image) *flash.Image {
	in := func(a uint64) bool {
		for _, s := range build.Segments {
			if a >= uint64(s.Addr) && a < s.End() {
				return true
			}
		}
		return false
	}
	out := &flash.Image{Source: full.Source}
	for _, s := range full.Segments {
		start := -1
		for i := 0; i <= len(s.Data); i++ {
			keep := i < len(s.Data) && (in(uint64(s.Addr)+uint64(i)) || s.Data[i] != 0xff)
			switch {
			case keep && start < 0:
				start = i
			case !keep && start >= 0:
				out.Segments = append(out.Segments, flash.Segment{Addr: s.Addr + uint32(start), Data: s.Data[start:i]})
				start = -1
			}
		}
	}
	return out
}
