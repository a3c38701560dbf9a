package arduino_test

import (
	"archive/zip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/firmware/arduino"
	"kiln.dev/kiln/firmware/arduino/libindex"
	"kiln.dev/kiln/firmware/arduino/sketchinit"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/recipes"
)

// sharedLibs is the directory of real upstream library releases.
const sharedLibs = "../../../shared/arduino-libraries"

func sharedArchives(t testing.TB) []string {
	t.Helper()
	zips, _ := filepath.Glob(filepath.Join(sharedLibs, "*.zip"))
	if len(zips) == 0 {
		t.Skip("no library archives in ../shared/arduino-libraries")
	}
	sort.Strings(zips)
	return zips
}

// indexServer serves library_index.json and the archives over HTTPS, the
// index made from the archives as Arduino's libraries-repository-engine
// makes it (library.properties name, version, architectures, depends;
// the source folder's headers as providesIncludes; SHA-256 checksum).
// mutate may change the served entries (bad-input tests).
func indexServer(t testing.TB, mutate func(*libindex.Release, map[string][]byte)) *httptest.Server {
	t.Helper()
	files := map[string][]byte{}
	var rels []libindex.Release
	for _, z := range sharedArchives(t) {
		data, err := os.ReadFile(z)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := zip.NewReader(strings.NewReader(string(data)), int64(len(data)))
		if err != nil {
			t.Fatal(err)
		}
		var props arduino.Props
		var headers, srcHeaders []string
		hasSrc := false
		for _, f := range zr.File {
			parts := strings.SplitN(f.Name, "/", 3)
			if len(parts) < 2 {
				continue
			}
			switch {
			case len(parts) == 2 && parts[1] == "library.properties":
				rc, err := f.Open()
				if err != nil {
					t.Fatal(err)
				}
				buf, _ := io.ReadAll(rc)
				rc.Close()
				props, _, _ = arduino.ParseProps(f.Name, buf)
			case len(parts) == 2 && isHeader(parts[1]):
				headers = append(headers, parts[1])
			case len(parts) == 3 && parts[1] == "src":
				hasSrc = true
				if !strings.Contains(parts[2], "/") && isHeader(parts[2]) {
					srcHeaders = append(srcHeaders, parts[2])
				}
			}
		}
		if hasSrc {
			headers = srcHeaders
		}
		r := libindex.Release{Name: props["name"], Version: props["version"], ArchiveFileName: filepath.Base(z),
			URL: "/" + filepath.Base(z), Size: int64(len(data)), ProvidesIncludes: headers}
		for _, a := range strings.Split(props["architectures"], ",") {
			r.Architectures = append(r.Architectures, strings.TrimSpace(a))
		}
		if dep := props["depends"]; dep != "" {
			for _, d := range strings.Split(dep, ",") {
				r.Dependencies = append(r.Dependencies, libindex.Dependency{Name: strings.TrimSpace(d)})
			}
		}
		sum := sha256.Sum256(data)
		r.Checksum = "SHA-256:" + hex.EncodeToString(sum[:])
		files["/"+filepath.Base(z)] = data
		rels = append(rels, r)
	}
	srv := httptest.NewTLSServer(nil)
	for i := range rels {
		rels[i].URL = srv.URL + rels[i].URL
		if mutate != nil {
			mutate(&rels[i], files)
		}
	}
	ix, _ := json.Marshal(map[string]any{"libraries": rels})
	srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/library_index.json" {
			w.Write(ix)
			return
		}
		if data, ok := files[r.URL.Path]; ok {
			w.Write(data)
			return
		}
		http.NotFound(w, r)
	})
	t.Cleanup(srv.Close)
	return srv
}

func isHeader(n string) bool {
	switch path.Ext(n) {
	case ".h", ".hpp", ".hh":
		return true
	}
	return false
}

// coreInput is the pinned Debian core the tests use.
var coreInput = recipes.Input{Name: recipes.DefaultArduinoCore, Sources: []string{coreDeb}, SHA256: coreSHA}

// initSketch runs kiln init on a copy of the sketch.
func initSketch(t testing.TB, srv *httptest.Server, src, board string, libs ...string) (string, *sketchinit.Result, error) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), filepath.Base(src))
	copySketch(t, src, dir)
	_, f := buildStore(t)
	core := coreInput
	res, err := sketchinit.Init(context.Background(), sketchinit.Options{
		Sketch: dir, Board: board, Libraries: libs, Index: srv.URL + "/library_index.json",
		Store: f.Store, HTTP: srv.Client(), Core: &core,
	})
	return dir, res, err
}

// peerLibraries lays out the pinned libraries of an init result as
// arduino-builder's -libraries folder, under the folder names kiln gives
// them (an installed library's folder).
func peerLibraries(t testing.TB, res *sketchinit.Result) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "libraries")
	os.MkdirAll(dir, 0o755)
	s, _ := stores()
	f := &fetch.Fetcher{Store: s}
	for _, l := range res.Libraries {
		p, ok := f.InputPath(recipes.Input{Name: l.Input, SHA256: l.SHA256, Unpack: true})
		if !ok {
			t.Fatalf("library %s not in the store after kiln init", l.Name)
		}
		root, err := firmware.LibraryRoot(p)
		if err != nil {
			t.Fatal(err)
		}
		copySketch(t, root, filepath.Join(dir, firmware.LibraryFolder(root, l.Input)))
	}
	return dir
}

// TestInitBMP280 is the founding example: the BMP280 example sketch, its
// library and both of its dependencies found from its #include alone,
// pinned, fetched, built offline, and identical to arduino-builder's
// build with the same libraries.
func TestInitBMP280(t *testing.T) {
	needPeer(t)
	srv := indexServer(t, nil)
	zipDir := t.TempDir()
	if err := fetch.UnpackArchive(filepath.Join(sharedLibs, "Adafruit_BMP280_Library-2.6.8.zip"), zipDir); err != nil {
		t.Fatal(err)
	}
	dir, res, err := initSketch(t, srv, filepath.Join(zipDir, "Adafruit_BMP280_Library-2.6.8", "examples", "bmp280test"), "arduino-uno")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range res.Libraries {
		got = append(got, l.Name+"@"+l.Version)
	}
	if want := "Adafruit BMP280 Library@2.6.8 Adafruit BusIO@1.17.4 Adafruit Unified Sensor@1.1.15"; strings.Join(got, " ") != want {
		t.Fatalf("pinned %v, want %s", got, want)
	}
	s, f := buildStore(t)
	b, err := firmware.Build(context.Background(), firmware.Options{Dir: dir, Store: s, Fetcher: f})
	if err != nil {
		var ce *firmware.CommandError
		if errors.As(err, &ce) {
			t.Log(ce.Output)
		}
		t.Fatal(err)
	}
	img, out, err := peerBuild{Sketch: dir, FQBN: "arduino:avr:uno", Prefs: []string{"compiler.cpp.extra_flags=" + decimalDig}, Libraries: peerLibraries(t, res)}.run(t)
	if err != nil {
		t.Fatalf("arduino-builder: %v\n%s", err, out)
	}
	if b.Manifest.ImageSHA256 != img.SHA256() {
		t.Errorf("image %s (%d bytes), arduino-builder's %s (%d bytes)", b.Manifest.ImageSHA256, b.Manifest.ImageSize, img.SHA256(), img.Size())
	}
}

// TestLibraryExamples builds every example of every shared library
// archive for the Uno: kiln init (libraries found from the includes),
// kiln build, and arduino-builder with the same libraries. An example
// that needs a library the index does not have (AccelStepper's AFMotor
// examples) must be refused by kiln init and fail in arduino-builder too.
func TestLibraryExamples(t *testing.T) {
	needPeer(t)
	srv := indexServer(t, nil)
	var sketches []string
	for _, z := range sharedArchives(t) {
		dir := t.TempDir()
		if err := fetch.UnpackArchive(z, dir); err != nil {
			t.Fatal(err)
		}
		ex, _ := filepath.Glob(filepath.Join(dir, "*", "examples", "*"))
		for _, e := range ex {
			if hasMain(e) {
				sketches = append(sketches, e)
			}
		}
	}
	allLibs := filepath.Join(t.TempDir(), "libraries")
	for _, z := range sharedArchives(t) {
		tmp := t.TempDir()
		if err := fetch.UnpackArchive(z, tmp); err != nil {
			t.Fatal(err)
		}
		root, err := firmware.LibraryRoot(tmp)
		if err != nil {
			t.Fatal(err)
		}
		copySketch(t, root, filepath.Join(allLibs, firmware.LibraryFolder(root, "x")))
	}
	s, f := buildStore(t)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	same := 0
	for _, sk := range sketches {
		wg.Add(1)
		go func(sk string) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			name := filepath.Base(filepath.Dir(filepath.Dir(sk))) + "/" + filepath.Base(sk)
			dir, res, err := initSketch(t, srv, sk, "arduino-uno")
			if err != nil {
				var me *sketchinit.MissingError
				if !errors.As(err, &me) {
					mu.Lock()
					t.Errorf("%s: kiln init: %v", name, err)
					mu.Unlock()
					return
				}
				// The peer, given every shared library, must fail too.
				_, out, perr := peerBuild{Sketch: dir, FQBN: "arduino:avr:uno", Prefs: []string{"compiler.cpp.extra_flags=" + decimalDig}, Libraries: allLibs}.run(t)
				mu.Lock()
				if perr == nil {
					t.Errorf("%s: kiln init refuses (%v) but arduino-builder builds it with every shared library", name, err)
				} else {
					t.Logf("%s: kiln init refuses (%v), arduino-builder fails too: %s", name, err, lastLines(out, 1))
				}
				mu.Unlock()
				return
			}
			b, err := firmware.Build(context.Background(), firmware.Options{Dir: dir, Store: s, Fetcher: f, Jobs: 1})
			img, out, perr := peerBuild{Sketch: dir, FQBN: "arduino:avr:uno", Prefs: []string{"compiler.cpp.extra_flags=" + decimalDig}, Libraries: peerLibraries(t, res)}.run(t)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err != nil && perr != nil:
				t.Logf("%s: both refuse: %v", name, err)
			case err != nil:
				var ce *firmware.CommandError
				if errors.As(err, &ce) {
					t.Log(lastLines(ce.Output, 10))
				}
				t.Errorf("%s: kiln: %v", name, err)
			case perr != nil:
				t.Errorf("%s: arduino-builder fails, kiln builds\n%s", name, lastLines(out, 8))
			case b.Manifest.ImageSHA256 != img.SHA256():
				t.Errorf("%s: image %s, arduino-builder's %s", name, b.Manifest.ImageSHA256, img.SHA256())
			default:
				same++
			}
		}(sk)
	}
	wg.Wait()
	t.Logf("%d library examples: %d images identical to arduino-builder's", len(sketches), same)
}
