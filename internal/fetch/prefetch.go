package fetch

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// PrefetchDebs downloads, with one apt-get download per architecture, the
// .debs of every input whose first source is deb:NAME:ARCH=VERSION and
// that DebFile has not stored yet, and stores those whose sha256 matches
// their pin (kept whole, as DebFile keeps them). A root filesystem's lock
// has hundreds of such pins; one apt run for all of them instead of one
// each. Whatever it could not get is left for DebFile, which tries every
// source and reports precisely.
func (f *Fetcher) PrefetchDebs(ctx context.Context, ins []recipes.Input) error {
	byArch := map[string][]recipes.Input{}
	var archs []string
	for _, in := range ins {
		if len(in.Sources) == 0 || !strings.HasPrefix(in.Sources[0], "deb:") {
			continue
		}
		if _, ok := f.DebFilePath(in); ok {
			continue
		}
		d, err := recipes.ParseDebSource(in.Sources[0])
		if err != nil || d.Arch == "" || len(d.Suites)+len(d.Components) > 0 {
			continue
		}
		arch := d.Arch
		if byArch[arch] == nil {
			archs = append(archs, arch)
		}
		byArch[arch] = append(byArch[arch], in)
	}
	for _, arch := range archs {
		group := byArch[arch]
		opts, _, err := f.debArch(ctx, "deb:kiln:"+arch+"=0")
		if err != nil {
			return fmt.Errorf("fetch: prefetch %s: %w", arch, err)
		}
		tmp, err := os.MkdirTemp(f.Store.Root, ".tmp-"+strconv.Itoa(os.Getpid())+"-prefetch-")
		if err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		defer os.RemoveAll(tmp)
		args := append([]string{"download", "-q"}, opts...)
		if len(opts) == 0 && os.Geteuid() == 0 {
			args = append(args, "-o", "APT::Sandbox::User=root")
		}
		for _, in := range group {
			d, _ := recipes.ParseDebSource(in.Sources[0])
			args = append(args, d.Spec()) // the architecture's own apt state (or the host's): NAME=VERSION
		}
		apt := f.APTGet
		if apt == "" {
			apt = "apt-get"
		}
		f.logf("apt-get download %d packages (%s)", len(group), arch)
		cmd := exec.CommandContext(ctx, apt, args...)
		cmd.Dir = tmp
		if out, err := cmd.CombinedOutput(); err != nil {
			// One missing version fails the whole run: DebFile sorts it out.
			f.logf("prefetch %s: %v: %s", arch, err, lastLine(string(out)))
			continue
		}
		ents, err := os.ReadDir(tmp)
		if err != nil {
			return fmt.Errorf("fetch: %w", err)
		}
		bySum := map[string]string{}
		for _, e := range ents {
			if strings.HasSuffix(e.Name(), ".deb") {
				p := filepath.Join(tmp, e.Name())
				if sum, err := store.HashFile(p); err == nil {
					bySum[sum] = p
				}
			}
		}
		for _, in := range group {
			p, ok := bySum[in.SHA256]
			if !ok {
				continue
			}
			if _, err := f.Store.Add(debFileKey(in), in.Name, func(dir string) error {
				return copyFile(p, filepath.Join(dir, in.StoredName()))
			}); err != nil {
				return fmt.Errorf("fetch: %s: %w", in.Name, err)
			}
		}
	}
	return nil
}
