package cache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"

	"kiln.dev/kiln/internal/trust"
)

// Checked is the outcome of checking one record of a cache.
type Checked struct {
	Key   string `json:"key"`
	Name  string `json:"name,omitempty"`
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
}

// VerifyReport is what Verify found.
type VerifyReport struct {
	Records []Checked `json:"records"`
	// Unreferenced are content objects no record names: left by a push that
	// was interrupted (the next push of the entry uses them). Not an error.
	Unreferenced []string `json:"unreferenced"`
	Bad          int      `json:"bad"`
}

// Verify checks every record of the cache in b: signed by one of keys,
// well-formed, and its content object present, of the recorded size and
// sha256, holding exactly the recorded files with their hashes. jobs
// records are checked at once.
func Verify(ctx context.Context, b Bucket, keys []*trust.PublicKey, jobs int) (*VerifyReport, error) {
	var keysFound []string
	contents := map[string]bool{}
	err := b.List(ctx, "", func(name string, size int64) error {
		switch {
		case strings.HasPrefix(name, "records/") && strings.HasSuffix(name, ".json"):
			keysFound = append(keysFound, strings.TrimSuffix(strings.TrimPrefix(name, "records/"), ".json"))
		case strings.HasPrefix(name, "content/") && strings.HasSuffix(name, ".tar.zst"):
			contents[name] = false
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	rep := &VerifyReport{Records: make([]Checked, len(keysFound)), Unreferenced: []string{}}
	var used = make([]string, len(keysFound))
	parallel(ctx, len(keysFound), jobs, func(ctx context.Context, i int) error {
		c := Checked{Key: keysFound[i]}
		data, err := getRecord(ctx, b, keysFound[i])
		var rec *Record
		if err == nil {
			if r, perr := parseUnverified(data); perr == nil {
				// Whatever its signature, the content it names is not an orphan.
				c.Name, used[i] = r.Name, r.Content.Object()
			}
			rec, _, err = OpenRecord(data, keys)
		}
		if err == nil && rec.Key != keysFound[i] {
			err = fmt.Errorf("%w: record names key %s", ErrBadRecord, rec.Key)
		}
		if err == nil {
			err = checkContent(ctx, b, rec)
		}
		c.OK = err == nil
		if err != nil {
			c.Error = err.Error()
		}
		rep.Records[i] = c
		return nil
	})
	for i, c := range rep.Records {
		if !c.OK {
			rep.Bad++
		}
		if used[i] != "" {
			contents[used[i]] = true
		}
	}
	for name, ok := range contents {
		if !ok {
			rep.Unreferenced = append(rep.Unreferenced, name)
		}
	}
	return rep, nil
}

// checkContent downloads a record's content and checks it without writing.
func checkContent(ctx context.Context, b Bucket, rec *Record) error {
	rr, err := openResuming(ctx, b, rec.Content.Object())
	if errors.Is(err, ErrNotFound) {
		return fmt.Errorf("%w: content object %s is missing", ErrContent, rec.Content.Object())
	}
	if err != nil {
		return err
	}
	defer rr.Close()
	hr := &hashReader{r: io.LimitReader(rr, rec.Content.Size+1), h: sha256.New()}
	return finish(hr, rec, unpack(hr, "", rec.Files))
}
