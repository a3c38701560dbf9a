package emuwire

import (
	"fmt"
	"sync"
)

// Memory is an AVR emulator's flash and EEPROM with the accessors the
// emulators share. An emulator embeds it, fills it in with Init, and holds
// Mu whenever its protocol loop touches Code or Data. The accessors are safe
// to call while the emulator serves.
type Memory struct {
	Mu   sync.Mutex
	Code []byte // the whole flash, bootloader included
	Data []byte // the EEPROM

	appSize int    // bytes of the application area
	name    string // the emulator's package, for errors
	written bool   // a page was written since the last session end
	hooks   []func()
	pages   int
}

// Init makes flashSize bytes of flash and eepromSize bytes of EEPROM, all
// erased (0xFF), with an application area of appSize bytes. name prefixes
// errors.
func (m *Memory) Init(name string, flashSize, appSize, eepromSize int) {
	m.name = name
	m.appSize = appSize
	m.Code = erased(flashSize)
	m.Data = erased(eepromSize)
}

func erased(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 0xFF
	}
	return b
}

// Flash returns a copy of the whole flash, bootloader included.
func (m *Memory) Flash() []byte {
	m.Mu.Lock()
	defer m.Mu.Unlock()
	return append([]byte(nil), m.Code...)
}

// AppFlash returns a copy of the application area.
func (m *Memory) AppFlash() []byte {
	m.Mu.Lock()
	defer m.Mu.Unlock()
	return append([]byte(nil), m.Code[:m.appSize]...)
}

// LoadAppFlash replaces the start of the application area with data.
func (m *Memory) LoadAppFlash(data []byte) error {
	m.Mu.Lock()
	defer m.Mu.Unlock()
	if len(data) > m.appSize {
		return fmt.Errorf("%s: state holds %d bytes, the application area %d", m.name, len(data), m.appSize)
	}
	copy(m.Code, data)
	return nil
}

// OnSessionEnd registers f, called after a programming session that wrote
// flash ends.
func (m *Memory) OnSessionEnd(f func()) {
	m.Mu.Lock()
	m.hooks = append(m.hooks, f)
	m.Mu.Unlock()
}

// PagesWritten counts page writes since Init.
func (m *Memory) PagesWritten() int {
	m.Mu.Lock()
	defer m.Mu.Unlock()
	return m.pages
}

// PageWritten counts a page write and marks the session as having written
// flash. The caller holds Mu.
func (m *Memory) PageWritten() {
	m.written = true
	m.pages++
}

// EndSession runs the OnSessionEnd hooks if a page was written since the
// last session end.
func (m *Memory) EndSession() {
	m.Mu.Lock()
	hooks, run := m.hooks, m.written
	m.written = false
	m.Mu.Unlock()
	if run {
		for _, f := range hooks {
			f()
		}
	}
}
