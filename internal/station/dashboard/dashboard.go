package dashboard

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"kiln.dev/kiln/internal/station"
)

// Source is what the dashboard shows: a station.
type Source interface {
	Status() station.Status
	Subscribe() (<-chan station.Event, func())
}

//go:embed page.html
var page []byte

// MinInterval is the shortest time between two status events on one
// stream; changes in between are sent together.
const MinInterval = 50 * time.Millisecond

// Handler returns the dashboard's HTTP handler.
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
		w.Write(page)
	})
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(src.Status())
	})
	mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) {
		events(w, r, src)
	})
	return mux
}

// events streams the status: at once, then after every change (at most
// one event per MinInterval), with a comment every 15 s to keep proxies
// from closing an idle stream.
func events(w http.ResponseWriter, r *http.Request, src Source) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	ch, cancel := src.Subscribe()
	defer cancel()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	send := func() error {
		data, err := json.Marshal(src.Status())
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "event: status\ndata: %s\n\n", data); err != nil {
			return err
		}
		fl.Flush()
		return nil
	}
	if err := send(); err != nil {
		return
	}
	last := time.Now()
	keep := time.NewTicker(15 * time.Second)
	defer keep.Stop()
	var later <-chan time.Time
	for {
		select {
		case <-r.Context().Done():
			return
		case <-ch:
			if later != nil {
				continue // already due
			}
			if wait := MinInterval - time.Since(last); wait > 0 {
				later = time.After(wait)
				continue
			}
		case <-later:
		case <-keep.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return
			}
			fl.Flush()
			continue
		}
		later = nil
		if err := send(); err != nil {
			return
		}
		last = time.Now()
	}
}
