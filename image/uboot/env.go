package uboot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
	"strings"
)

// EnvSize is CONFIG_ENV_SIZE of Debian's u-boot-rpi builds (rpi_3, rpi_4,
// rpi_arm64): the size of uboot.env.
const EnvSize = 0x4000

// ErrBadCRC is returned (wrapped) by DecodeEnv when the stored CRC does not
// match the data: U-Boot then ignores the file and uses its built-in
// default environment.
var ErrBadCRC = errors.New("uboot env: bad CRC")

// ErrBadEnv is returned (wrapped) for an environment that cannot be encoded
// (a name with '=' or a NUL, a value with a NUL, too large for its size) or
// decoded.
var ErrBadEnv = errors.New("uboot env: malformed")

// EncodeEnv returns a non-redundant environment of size bytes holding vars.
func EncodeEnv(vars map[string]string, size int) ([]byte, error) {
	if size < 6 {
		return nil, fmt.Errorf("%w: size %d", ErrBadEnv, size)
	}
	names := make([]string, 0, len(vars))
	for k, v := range vars {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return nil, fmt.Errorf("%w: variable %q", ErrBadEnv, k)
		}
		names = append(names, k)
	}
	sort.Strings(names)
	buf := make([]byte, size)
	w := buf[4:4]
	for _, k := range names {
		w = append(w, k...)
		w = append(w, '=')
		w = append(w, vars[k]...)
		w = append(w, 0)
	}
	if len(w) == 0 {
		w = append(w, 0)
	}
	// The list ends with a second NUL, which must fit in the data area.
	if len(w)+1 > size-4 {
		return nil, fmt.Errorf("%w: %d bytes of variables do not fit in %d", ErrBadEnv, len(w)+1, size-4)
	}
	copy(buf[4:], w)
	binary.LittleEndian.PutUint32(buf, crc32.ChecksumIEEE(buf[4:]))
	return buf, nil
}

// DecodeEnv reads a non-redundant environment (the whole file or device
// area, its size being the environment's size).
func DecodeEnv(b []byte) (map[string]string, error) {
	if len(b) < 6 {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadEnv, len(b))
	}
	if got, want := crc32.ChecksumIEEE(b[4:]), binary.LittleEndian.Uint32(b); got != want {
		return nil, fmt.Errorf("%w: stored %08x, data %08x", ErrBadCRC, want, got)
	}
	vars := map[string]string{}
	data := b[4:]
	for len(data) > 0 && data[0] != 0 {
		i := bytes.IndexByte(data, 0)
		if i < 0 {
			return nil, fmt.Errorf("%w: last variable not terminated", ErrBadEnv)
		}
		k, v, ok := strings.Cut(string(data[:i]), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%w: entry %q has no name=", ErrBadEnv, data[:i])
		}
		vars[k] = v
		data = data[i+1:]
	}
	return vars, nil
}

// The variables of kiln's U-Boot A/B (see recipebuild's boot.scr).
const (
	VarSlot      = "boot_slot"
	VarFallback  = "boot_fallback"
	VarTrial     = "upgrade_available"
	VarBootCount = "bootcount"
	VarBootLimit = "bootlimit"
)

// ArmTrial sets env so that U-Boot boots slot on trial: the slot booted
// now becomes the fallback, the boot counter restarts. Unless the system in
// slot marks itself good (MarkGood) within bootlimit boots, U-Boot returns
// to the fallback by itself.
func ArmTrial(env map[string]string, slot string) error {
	cur := env[VarSlot]
	if cur == "" {
		return fmt.Errorf("%w: no %s: not a kiln U-Boot A/B environment", ErrBadEnv, VarSlot)
	}
	if cur == slot && env[VarTrial] == "1" {
		return fmt.Errorf("uboot env: slot %s is already on trial", slot)
	}
	env[VarFallback] = cur
	env[VarSlot] = slot
	env[VarTrial] = "1"
	env[VarBootCount] = "0"
	return nil
}

// MarkGood commits the slot U-Boot boots: no trial, counter cleared, the
// slot is its own fallback. It is what `fw_setenv upgrade_available 0;
// fw_setenv bootcount 0` does on the device, plus the fallback.
func MarkGood(env map[string]string) {
	env[VarTrial] = "0"
	env[VarBootCount] = "0"
	env[VarFallback] = env[VarSlot]
}
