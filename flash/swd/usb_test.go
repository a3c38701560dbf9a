package swd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/flash/internal/usbshim"
	"kiln.dev/kiln/flash/swd"
	"kiln.dev/kiln/flash/swd/swdtest"
)

// TestMain lets the test binary run as a child under the libusb stand-in.
func TestMain(m *testing.M) {
	if os.Getenv("KILN_SWD_CHILD") != "" {
		os.Exit(child())
	}
	os.Exit(m.Run())
}

// child flashes through kiln's real USB path (gousb, libusb's API) to
// whatever the stand-in presents.
func child() int {
	b, err := boardByName(os.Getenv("KILN_SWD_CHILD"))
	if err == nil {
		var tg *swd.Target
		if tg, err = swd.OpenUSB(context.Background(), os.Getenv("KILN_SWD_PORT"), b, swd.Options{}); err == nil {
			data := payload()
			if f := os.Getenv("KILN_SWD_BIN"); f != "" {
				data, _ = os.ReadFile(f)
			}
			img, _ := flash.NewImage("usb", flash.Segment{Addr: b.Flash.Base, Data: data})
			var res flash.Result
			if res, err = flash.Program(context.Background(), tg, img, nil); err == nil {
				fmt.Println(res.DeviceSHA256, tg.Identity())
			}
			tg.Close()
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func payload() []byte {
	d := make([]byte, 20000)
	rand.New(rand.NewSource(11)).Read(d)
	return d
}

// TestOpenUSBNoProbe runs the real gousb path on this machine, which has
// no probe: "no SWD probe found", wrapping flash.ErrNoDevice.
func TestOpenUSBNoProbe(t *testing.T) {
	_, err := swd.OpenUSB(context.Background(), "swd:", board(t, "nucleo-f401re"), swd.Options{})
	if !errors.Is(err, flash.ErrNoDevice) || !strings.Contains(err.Error(), "no SWD probe found") {
		t.Fatalf("err = %v, want no SWD probe found", err)
	}
	if _, err := swd.OpenUSB(context.Background(), "swd:zz", board(t, "nucleo-f401re"), swd.Options{}); err == nil {
		t.Fatal("a malformed port was accepted")
	}
}

// TestOpenUSBThroughLibusb flashes the model through gousb and the libusb
// stand-in: the whole path a real probe takes, down to libusb's API.
func TestOpenUSBThroughLibusb(t *testing.T) {
	dir := t.TempDir()
	so, err := usbshim.Build(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := board(t, "nucleo-f401re")
	chip, err := swdtest.NewChip(b)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "usb.sock")
	stop, err := usbshim.Listen(sock, &swdtest.USB{Probe: swdtest.NewProbe(chip, "0240000032044e45")})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for _, port := range []string{"swd:", "swd:0d28:0204,serial=0240000032044e45"} {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), append(usbshim.Env(so, sock), "KILN_SWD_CHILD=nucleo-f401re", "KILN_SWD_PORT="+port)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", port, err, out)
		}
		if !bytes.Equal(chip.Page(b.Flash.Base, len(payload())), payload()) || !strings.Contains(string(out), "UID") {
			t.Fatalf("%s: flash differs after a reported success: %s", port, out)
		}
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(usbshim.Env(so, sock), "KILN_SWD_CHILD=nucleo-f401re", "KILN_SWD_PORT=swd:,serial=OTHER")...)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no SWD probe found matching") {
		t.Fatalf("a serial no probe has was accepted: %v %s", err, out)
	}
}

// TestOpenUSBSTLinkThroughLibusb: the same real path reaches the ST-LINK
// model, found by its USB ID, and writes and proves a Blue Pill.
func TestOpenUSBSTLinkThroughLibusb(t *testing.T) {
	dir := t.TempDir()
	so, err := usbshim.Build(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := board(t, "bluepill")
	chip, err := swdtest.NewChip(b)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "usb.sock")
	stop, err := usbshim.Listen(sock, swdtest.NewSTLink(chip, "066DFF495150"))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	data := payload()[:16384]
	bin := filepath.Join(dir, "fw.bin")
	if err := os.WriteFile(bin, data, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(usbshim.Env(so, sock), "KILN_SWD_CHILD=bluepill", "KILN_SWD_PORT=swd:0483:374b", "KILN_SWD_BIN="+bin)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !bytes.Equal(chip.Page(b.Flash.Base, len(data)), data) || !strings.Contains(string(out), "ST-LINK/V2-1") {
		t.Fatalf("flash differs after a reported success: %s", out)
	}
	cmd = exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(usbshim.Env(so, sock), "KILN_SWD_CHILD=bluepill", "KILN_SWD_PORT=swd:,serial=OTHER")...)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no SWD probe found matching") {
		t.Fatalf("a serial no probe has was accepted: %v %s", err, out)
	}
}

// TestEmulatorThroughTable: emu:BOARD with protocol swd reaches the models
// through flash/device's table, and a model of another chip is refused.
func TestEmulatorThroughTable(t *testing.T) {
	ctx := context.Background()
	b := board(t, "bluepill")
	s, err := device.Open(ctx, "emu:bluepill", b, "swd", device.Options{})
	if err != nil {
		t.Fatal(err)
	}
	img, _ := flash.NewImage("t", flash.Segment{Addr: b.Flash.Base, Data: payload()[:4096]})
	if _, err := flash.Program(ctx, s, img, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := device.Open(ctx, "emu:nucleo-f401re", b, "swd", device.Options{}); !errors.Is(err, flash.ErrWrongDevice) {
		t.Fatalf("err = %v, want ErrWrongDevice", err)
	}
}
