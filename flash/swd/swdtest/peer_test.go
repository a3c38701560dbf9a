package swdtest_test

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash/internal/usbshim"
	"kiln.dev/kiln/flash/swd/swdtest"
)

// openocd runs Debian's OpenOCD, unmodified, against the CMSIS-DAP model
// through the libusb stand-in, and returns its output.
func openocd(t *testing.T, chip *swdtest.Chip, target string, cmds ...string) (string, error) {
	t.Helper()
	if _, err := exec.LookPath("openocd"); err != nil {
		t.Skip("openocd is not installed (make deps installs it)")
	}
	dir := t.TempDir()
	so, err := usbshim.Build(dir)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "usb.sock")
	probe := swdtest.NewProbe(chip, "OOCD0001")
	stop, err := usbshim.Listen(sock, &swdtest.USB{Probe: probe})
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{"-f", "interface/cmsis-dap.cfg", "-c", "cmsis_dap_backend usb_bulk", "-c", "transport select swd",
		// No working area: OpenOCD cannot run its flash loader on a model
		// that executes no code, so it drives the flash controller itself.
		"-c", "set WORKAREASIZE 0", "-f", target}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	cmd := exec.CommandContext(ctx, "openocd", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), usbshim.Env(so, sock)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// elf links data at addr into an ELF with one loadable segment, with the
// real binutils, as a build's firmware.elf would be.
func elf(t *testing.T, dir string, addr string, data []byte) string {
	t.Helper()
	bin := filepath.Join(dir, "image.bin")
	if err := os.WriteFile(bin, data, 0o644); err != nil {
		t.Fatal(err)
	}
	lds := filepath.Join(dir, "image.ld")
	script := "SECTIONS { .text " + addr + " : { image.o(.data) } }\n"
	if err := os.WriteFile(lds, []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{
		{"arm-none-eabi-ld", "-r", "-b", "binary", "-o", "image.o", "image.bin"},
		{"arm-none-eabi-ld", "-T", "image.ld", "-o", "image.elf", "image.o"},
	} {
		cmd := exec.Command(c[0], c[1:]...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v\n%s", c, err, out)
		}
	}
	return filepath.Join(dir, "image.elf")
}

// TestOpenOCDPrograms is the peer check for the models: OpenOCD 0.12,
// unmodified, programs and verifies an ELF through the CMSIS-DAP model in
// front of an F401 (sectors of 16 and 64 KiB) and an F103 (1 KiB pages),
// and the flash each model holds afterwards is the image.
func TestOpenOCDPrograms(t *testing.T) {
	for _, tc := range []struct {
		board, cfg string
		size       int
	}{
		{"nucleo-f401re", "target/stm32f4x.cfg", 70000},
		{"bluepill", "target/stm32f1x.cfg", 5000},
	} {
		t.Run(tc.board, func(t *testing.T) {
			b, err := boards.Get(tc.board)
			if err != nil {
				t.Fatal(err)
			}
			chip, err := swdtest.NewChip(b)
			if err != nil {
				t.Fatal(err)
			}
			img := make([]byte, tc.size)
			rand.New(rand.NewSource(7)).Read(img)
			f := elf(t, t.TempDir(), "0x08000000", img)
			out, err := openocd(t, chip, tc.cfg, "program "+f+" verify reset exit")
			got := chip.Page(0x08000000, len(img))
			if err != nil {
				t.Fatalf("openocd: %v\n%s", err, out)
			}
			if !bytes.Equal(got, img) || !strings.Contains(out, "Verified OK") {
				t.Fatalf("the model's flash differs from the image OpenOCD programmed\n%s", out)
			}
		})
	}
}

// TestStFlashPrograms: Debian's st-flash (stlink-tools 1.7), unmodified,
// writes and verifies an image through the ST-LINK model on both families.
// st-flash programs through its own flash loader, which it copies into the
// chip's RAM and runs on the core: the model's core executes it.
func TestStFlashPrograms(t *testing.T) {
	if _, err := exec.LookPath("st-flash"); err != nil {
		t.Skip("st-flash is not installed (make deps installs stlink-tools)")
	}
	for _, tc := range []struct {
		board string
		size  int
	}{{"nucleo-f401re", 70000}, {"bluepill", 5000}} {
		t.Run(tc.board, func(t *testing.T) {
			b, err := boards.Get(tc.board)
			if err != nil {
				t.Fatal(err)
			}
			chip, err := swdtest.NewChip(b)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			so, err := usbshim.Build(dir)
			if err != nil {
				t.Fatal(err)
			}
			sock := filepath.Join(dir, "usb.sock")
			stop, err := usbshim.Listen(sock, swdtest.NewSTLink(chip, "066DFF495150"))
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			img := make([]byte, tc.size)
			rand.New(rand.NewSource(5)).Read(img)
			bin := filepath.Join(dir, "image.bin")
			if err := os.WriteFile(bin, img, 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "st-flash", "--reset", "write", bin, "0x08000000")
			cmd.Env = append(os.Environ(), usbshim.Env(so, sock)...)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Flash written and verified") {
				t.Fatalf("st-flash: %v\n%s", err, out)
			}
			if !bytes.Equal(chip.Page(0x08000000, len(img)), img) {
				t.Fatalf("the model's flash differs from the image st-flash wrote\n%s", out)
			}
		})
	}
}
