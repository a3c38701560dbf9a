package op

import (
	"fmt"

	"kiln.dev/kiln/internal/fleet"
	"kiln.dev/kiln/internal/trust"
)

// PrepareFleet readies a fleet rollout: each group's image is loaded once
// (a private copy), every device is checked by the trust gate against its
// group's image (the board from the image's kiln.json, the group and the
// device's URL), and the groups then point at the private copies, so the
// rollout writes the bytes that were checked. One untrusted device stops
// the rollout before any device I/O. release removes the copies.
func PrepareFleet(pol *trust.Policy, f *fleet.File) (release func(), err error) {
	loaded := map[string]*Artifact{}
	closeAll := func() {
		for _, a := range loaded {
			a.Close()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	for i, g := range f.Groups {
		if g.Image == "" {
			continue
		}
		a, err := LoadDisk(f.Path(g.Image), LoadOptions{})
		if err != nil {
			return nil, fmt.Errorf("group %s: %w", g.Name, err)
		}
		loaded[g.Name] = a
		f.Groups[i].Board = a.Board
	}
	for _, d := range f.Devices {
		a := loaded[d.Group]
		if a == nil {
			continue
		}
		if _, err := Trust(pol, a, trust.Target{Board: a.Board, Group: d.Group, Port: d.URL}); err != nil {
			return nil, fmt.Errorf("fleet deploy: device %s: %w", d.Name, err)
		}
	}
	for i, g := range f.Groups {
		if a := loaded[g.Name]; a != nil {
			f.Groups[i].Image = a.DiskPath()
		}
	}
	return closeAll, nil
}
