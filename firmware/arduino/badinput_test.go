package arduino_test

import (
	"archive/zip"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/firmware"
	"kiln.dev/kiln/firmware/arduino"
	"kiln.dev/kiln/firmware/arduino/libindex"
	"kiln.dev/kiln/firmware/arduino/sketchinit"
	"kiln.dev/kiln/internal/fetch"
	"kiln.dev/kiln/internal/store"
	"kiln.dev/kiln/recipes"
)

// storeEmpty fails the test if the build store holds an entry.
func storeEmpty(t *testing.T, s *store.Store) {
	t.Helper()
	ents, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("the store holds %d entries after a failed build", len(ents))
	}
}

// sketchWith makes a sketch directory name/name.ino with the source.
func sketchWith(t *testing.T, name, src string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".ino"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// A sketch with two syntax errors: kiln reports both, at the sketch's own
// path on the host, keeps build.log and adds nothing to the store.
func TestBadSyntaxError(t *testing.T) {
	needPeer(t)
	dir := sketchWith(t, "Broken", "void setup() {\n  int x = ;\n}\n\nvoid loop() {\n  undefined_call(\n}\n")
	writeRecipe(t, dir, "arduino-uno", "")
	s, f := buildStore(t)
	out := filepath.Join(t.TempDir(), "out")
	_, err := firmware.Build(context.Background(), firmware.Options{Dir: dir, Store: s, Fetcher: f, Out: out})
	var ce *firmware.CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("want a command error, got %v", err)
	}
	main := filepath.Join(dir, "Broken.ino")
	for _, want := range []string{main + ":2:11: error", main + ":7:1: error"} {
		if !strings.Contains(ce.Output, want) {
			t.Errorf("output lacks %q:\n%s", want, ce.Output)
		}
	}
	if strings.Contains(ce.Output, "/build/src/") || strings.Contains(err.Error(), "/build/.arduino") {
		t.Errorf("sandbox paths in the diagnostics:\n%v\n%s", err, ce.Output)
	}
	if log, err := os.ReadFile(filepath.Join(out, firmware.BuildLogName)); err != nil || !bytes.Contains(log, []byte(main+":2:11")) || ce.Log == "" {
		t.Errorf("build.log not kept (%v, %q)", err, ce.Log)
	}
	storeEmpty(t, s)
}

// A recipe whose settings contradict its board is refused: another
// boards.txt ID at load, another clock at build (before anything runs).
func TestBadContradiction(t *testing.T) {
	needPeer(t)
	dir := filepath.Join(t.TempDir(), "Blink")
	copySketch(t, "/usr/share/arduino/examples/01.Basics/Blink", dir)
	writeRecipe(t, dir, "arduino-uno", "")
	data, _ := os.ReadFile(filepath.Join(dir, "recipe.toml"))
	bad := strings.Replace(string(data), "arduino.properties", "arduino.board = \"mega\"\narduino.properties", 1)
	os.WriteFile(filepath.Join(dir, "recipe.toml"), []byte(bad), 0o644)
	if _, err := recipes.Load(dir); !errors.Is(err, recipes.ErrInvalid) || !strings.Contains(err.Error(), `"mega" contradicts board arduino-uno`) {
		t.Errorf("arduino.board mega on arduino-uno: %v", err)
	}
	bad = strings.Replace(string(data), `"compiler.cpp.extra_flags"`, `"build.f_cpu" = "8000000L", "compiler.cpp.extra_flags"`, 1)
	os.WriteFile(filepath.Join(dir, "recipe.toml"), []byte(bad), 0o644)
	s, f := buildStore(t)
	_, err := firmware.Build(context.Background(), firmware.Options{Dir: dir, Store: s, Fetcher: f})
	if !errors.Is(err, arduino.ErrContradiction) || !strings.Contains(err.Error(), "8000000L") {
		t.Errorf("f_cpu 8 MHz on a 16 MHz board: %v", err)
	}
	storeEmpty(t, s)
}

// kiln init with an index that lies or serves bad archives.
func TestBadLibraryInputs(t *testing.T) {
	needPeer(t)
	servo := func(t *testing.T, mutate func(*libindex.Release, map[string][]byte)) error {
		srv := indexServer(t, func(r *libindex.Release, files map[string][]byte) {
			if r.Name == "Servo" {
				mutate(r, files)
			}
		})
		dir := sketchWith(t, "Sweep", "#include <Servo.h>\nServo s;\nvoid setup() { s.attach(9); }\nvoid loop() {}\n")
		// A fresh store: the shared one may hold the real Servo already.
		fresh, err := store.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { makeWritable(fresh.Root) })
		core := coreInput
		_, err = sketchinit.Init(context.Background(), sketchinit.Options{Sketch: dir, Board: "arduino-uno",
			Index: srv.URL + "/library_index.json", Store: fresh, HTTP: srv.Client(), Core: &core})
		if ents, _ := fresh.List(); len(ents) > 1 {
			t.Errorf("the store holds %d entries (the core only was expected)", len(ents))
		}
		if err == nil {
			t.Fatal("kiln init accepted it")
		}
		if _, err := os.Stat(filepath.Join(dir, "recipe.toml")); err == nil {
			t.Error("kiln init wrote a recipe")
		}
		return err
	}
	t.Run("checksum", func(t *testing.T) {
		var want string
		err := servo(t, func(r *libindex.Release, files map[string][]byte) {
			want, _ = r.SHA256()
			path := r.URL[strings.LastIndex(r.URL, "/"):]
			files[path] = append(append([]byte(nil), files[path]...), '\n')
		})
		if !errors.Is(err, recipes.ErrHashMismatch) || !strings.Contains(err.Error(), "expected "+want) || !strings.Contains(err.Error(), ", got ") {
			t.Errorf("%v", err)
		}
	})
	t.Run("dotdot", func(t *testing.T) {
		var buf bytes.Buffer
		zw := zip.NewWriter(&buf)
		for _, name := range []string{"Servo/library.properties", "Servo/src/Servo.h", "Servo/../../evil.h"} {
			w, _ := zw.Create(name)
			w.Write([]byte("name=Servo\nversion=1.3.0\n"))
		}
		zw.Close()
		err := servo(t, func(r *libindex.Release, files map[string][]byte) {
			path := r.URL[strings.LastIndex(r.URL, "/"):]
			files[path] = buf.Bytes()
			sum := sha256.Sum256(buf.Bytes())
			r.Checksum = "SHA-256:" + hex.EncodeToString(sum[:])
		})
		if !errors.Is(err, fetch.ErrBadArchive) || !strings.Contains(err.Error(), "evil.h") {
			t.Errorf("%v", err)
		}
	})
	t.Run("architectures", func(t *testing.T) {
		err := servo(t, func(r *libindex.Release, _ map[string][]byte) { r.Architectures = []string{"sam", "samd"} })
		if !errors.Is(err, sketchinit.ErrArch) || !strings.Contains(err.Error(), "sam, samd") {
			t.Errorf("%v", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		srv := indexServer(t, nil)
		dir := sketchWith(t, "Steps", "#include <AccelStep.h>\nvoid setup() {}\nvoid loop() {}\n")
		_, f := buildStore(t)
		core := coreInput
		_, err := sketchinit.Init(context.Background(), sketchinit.Options{Sketch: dir, Board: "arduino-uno",
			Index: srv.URL + "/library_index.json", Store: f.Store, HTTP: srv.Client(), Core: &core})
		var me *sketchinit.MissingError
		if !errors.As(err, &me) || me.Header != "AccelStep.h" || strings.Join(me.Similar, ",") != "AccelStepper" {
			t.Errorf("%v (%+v)", err, me)
		}
	})
}

// Two pinned libraries provide Servo.h: kiln picks one by
// arduino-builder's rules and says so in build.log, and the image is
// arduino-builder's.
func TestTwoLibrariesOneHeader(t *testing.T) {
	needPeer(t)
	dir := sketchWith(t, "Sweep2", "#include <Servo.h>\nServo s;\nvoid setup() { s.attach(9); }\nvoid loop() { s.write(90); }\n")
	// A second library providing Servo.h: a legacy (flat) one.
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	w, _ := zw.Create("ServoShim/Servo.h")
	w.Write([]byte("#error the shim must not be chosen\n"))
	zw.Close()
	shim := filepath.Join(t.TempDir(), "ServoShim.zip")
	os.WriteFile(shim, buf.Bytes(), 0o644)
	servoZip, _ := filepath.Abs(filepath.Join(sharedLibs, "Servo-1.3.0.zip"))
	shimSum := sha256.Sum256(buf.Bytes())
	writeRecipe(t, dir, "arduino-uno", `
[[inputs]]
name = "servo"
sources = ["file:`+servoZip+`"]
sha256 = "606401dbff05b8cb16e2a1c3597e449eb2c17fe68ae9feedc3c22bebe541ef2b"
unpack = true

[[inputs]]
name = "servoshim"
sources = ["file:`+shim+`"]
sha256 = "`+hex.EncodeToString(shimSum[:])+`"
unpack = true
`)
	s, f := buildStore(t)
	res, err := firmware.Build(context.Background(), firmware.Options{Dir: dir, Store: s, Fetcher: f})
	if err != nil {
		var ce *firmware.CommandError
		if errors.As(err, &ce) {
			t.Log(ce.Output)
		}
		t.Fatal(err)
	}
	log, _ := os.ReadFile(filepath.Join(res.StorePath, firmware.BuildLogName))
	if !bytes.Contains(log, []byte("several libraries provide Servo.h: using Servo (not ServoShim)")) {
		t.Errorf("build.log does not explain the choice:\n%s", log)
	}
	libs := filepath.Join(t.TempDir(), "libraries")
	for _, z := range []string{servoZip, shim} {
		tmp := t.TempDir()
		fetch.UnpackArchive(z, tmp)
		root, _ := firmware.LibraryRoot(tmp)
		copySketch(t, root, filepath.Join(libs, firmware.LibraryFolder(root, strings.TrimSuffix(filepath.Base(z), ".zip"))))
	}
	img, out, err := peerBuild{Sketch: dir, FQBN: "arduino:avr:uno", Prefs: []string{"compiler.cpp.extra_flags=" + decimalDig}, Libraries: libs}.run(t)
	if err != nil {
		t.Fatalf("arduino-builder: %v\n%s", err, out)
	}
	if res.Manifest.ImageSHA256 != img.SHA256() {
		t.Errorf("image %s, arduino-builder's %s", res.Manifest.ImageSHA256, img.SHA256())
	}
}
