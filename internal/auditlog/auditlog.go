package auditlog

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"kiln.dev/kiln/internal/trust"
)

// ErrTampered means the log (or its head file) is not what kiln wrote: a
// line was edited, removed, inserted, reordered or cut off, or a checkpoint
// signature does not verify.
var ErrTampered = errors.New("audit log tampered with")

// Kinds of entry.
const (
	KindFlash      = "flash"
	KindVerify     = "verify"
	KindUpdate     = "update"
	KindAudit      = "audit"
	KindProvision  = "provision" // kiln station: firmware and a per-device record
	KindCheckpoint = "checkpoint"
)

// zeroHash is the prev of the first line.
var zeroHash = strings.Repeat("0", 64)

// Entry is one line of the log: a record of an operation, or a checkpoint.
// Field order is the encoding order; do not reorder.
type Entry struct {
	Seq      int64     `json:"seq"`
	Prev     string    `json:"prev"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Host     string    `json:"host,omitempty"`
	Operator string    `json:"operator,omitempty"`

	// Records.
	Board          string `json:"board,omitempty"`
	Port           string `json:"port,omitempty"`
	Device         string `json:"device,omitempty"` // MCU signature, unique ID, Pi serial
	Artifact       string `json:"artifact,omitempty"`
	ArtifactSHA256 string `json:"artifact_sha256,omitempty"`
	ReadbackSHA256 string `json:"readback_sha256,omitempty"`
	Derivation     string `json:"derivation,omitempty"`
	Result         string `json:"result,omitempty"` // ok, mismatch, untrusted, error, identical, different
	Detail         string `json:"detail,omitempty"`
	// Provision is what kiln station wrote to a device besides its
	// firmware: serial number, public key, record hash (never a secret).
	Provision map[string]string `json:"provision,omitempty"`

	// Checkpoints: the key that signed, and the Ed25519 signature over the
	// line's canonical encoding with Sig empty.
	PublicKey string `json:"public_key,omitempty"`
	Sig       string `json:"sig,omitempty"`
}

func encode(e *Entry) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(e) // cannot fail: plain fields
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

func lineHash(line []byte) string {
	h := sha256.Sum256(line)
	return hex.EncodeToString(h[:])
}

func checkpointMessage(e Entry) []byte {
	e.Sig = ""
	return append([]byte("kiln audit checkpoint v1\n"), encode(&e)...)
}

// HeadPath is the file beside a log that holds a copy of its last
// checkpoint.
func HeadPath(log string) string { return log + ".head" }

// Options tune a Log.
type Options struct {
	// CheckpointEvery seals the log after this many records (0: only on
	// Close).
	CheckpointEvery int
	// Host and Operator fill records that leave them empty; when empty
	// they are the host name and the user ($KILN_OPERATOR overrides).
	Host, Operator string
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
}

// Log is an open audit log. It holds an exclusive lock on the file until
// Close, so concurrent kiln processes append in turn.
type Log struct {
	path  string
	f     *os.File
	key   *trust.SecretKey
	opts  Options
	seq   int64
	prev  string
	since int // records since the last checkpoint
}

// Open opens (creating if needed) the log at path for appending. key signs
// checkpoints; with a nil key the log is chained but never sealed.
func Open(path string, key *trust.SecretKey, opts Options) (*Log, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("auditlog: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("auditlog: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("auditlog: lock %s: %w", path, err)
	}
	l := &Log{path: path, f: f, key: key, opts: opts, prev: zeroHash}
	if l.opts.Now == nil {
		l.opts.Now = time.Now
	}
	if l.opts.Host == "" {
		l.opts.Host, _ = os.Hostname()
	}
	if l.opts.Operator == "" {
		l.opts.Operator = operator()
	}
	// The last line's hash and sequence number continue the chain.
	last, err := lastLine(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("auditlog: read %s: %w", path, err)
	}
	if last != nil {
		var e Entry
		if err := json.Unmarshal(last, &e); err != nil {
			f.Close()
			return nil, fmt.Errorf("auditlog: %s: last line: %w: %v", path, ErrTampered, err)
		}
		l.seq, l.prev = e.Seq, lineHash(last)
		if e.Kind != KindCheckpoint {
			l.since = 1 // unsealed records: the next checkpoint covers them
		}
	}
	return l, nil
}

// lastLine returns the last line of f (without its newline), reading only
// the file's tail; nil for an empty file. A file that does not end in a
// newline was cut mid-line: ErrTampered.
func lastLine(f *os.File) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size == 0 {
		return nil, nil
	}
	for chunk := int64(64 << 10); ; chunk *= 4 {
		off := max(0, size-chunk)
		buf := make([]byte, size-off)
		if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
			return nil, err
		}
		if buf[len(buf)-1] != '\n' {
			return nil, fmt.Errorf("%w: the last line has no newline (cut mid-line?)", ErrTampered)
		}
		buf = buf[:len(buf)-1]
		if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
			return buf[i+1:], nil
		}
		if off == 0 {
			return buf, nil
		}
	}
}

func operator() string {
	if s := os.Getenv("KILN_OPERATOR"); s != "" {
		return s
	}
	if s := os.Getenv("SUDO_USER"); s != "" {
		return s
	}
	if u, err := user.Current(); err == nil {
		return u.Username
	}
	return os.Getenv("USER")
}

func (l *Log) write(e *Entry) error {
	line := encode(e)
	if _, err := l.f.Write(append(line, '\n')); err != nil {
		return fmt.Errorf("auditlog: append to %s: %w", l.path, err)
	}
	l.seq, l.prev = e.Seq, lineHash(line)
	return nil
}

// Append adds a record. Seq, Prev and Kind-independent defaults (time,
// host, operator) are filled in; the entry as written is returned.
func (l *Log) Append(e Entry) (Entry, error) {
	if e.Kind == "" || e.Kind == KindCheckpoint {
		return e, fmt.Errorf("auditlog: append: bad kind %q", e.Kind)
	}
	e.Seq, e.Prev, e.PublicKey, e.Sig = l.seq+1, l.prev, "", ""
	if e.Time.IsZero() {
		e.Time = l.opts.Now()
	}
	e.Time = e.Time.UTC()
	if e.Host == "" {
		e.Host = l.opts.Host
	}
	if e.Operator == "" {
		e.Operator = l.opts.Operator
	}
	if err := l.write(&e); err != nil {
		return e, err
	}
	l.since++
	if l.opts.CheckpointEvery > 0 && l.since >= l.opts.CheckpointEvery {
		if err := l.Checkpoint(); err != nil {
			return e, err
		}
	}
	return e, nil
}

// Checkpoint seals every line so far with a signed entry and updates the
// head file. It does nothing without a key.
func (l *Log) Checkpoint() error {
	if l.key == nil {
		return nil
	}
	e := Entry{
		Seq: l.seq + 1, Prev: l.prev, Time: l.opts.Now().UTC(), Kind: KindCheckpoint,
		Host: l.opts.Host, PublicKey: l.key.Public().String(),
	}
	e.Sig = base64.StdEncoding.EncodeToString(ed25519.Sign(l.key.Key, checkpointMessage(e)))
	if err := l.write(&e); err != nil {
		return err
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("auditlog: sync %s: %w", l.path, err)
	}
	l.since = 0
	return writeAtomic(HeadPath(l.path), append(encode(&e), '\n'))
}

// Head seals the log with a new checkpoint, signed by the log's key, and
// returns its line: the signed head kiln log checkpoint exports as a
// witness. It needs a key.
func (l *Log) Head() ([]byte, error) {
	if l.key == nil {
		return nil, fmt.Errorf("auditlog: %s: no key to sign a checkpoint", l.path)
	}
	if err := l.Checkpoint(); err != nil {
		return nil, err
	}
	return os.ReadFile(HeadPath(l.path))
}

// Close seals what was appended since the last checkpoint and releases the
// log.
func (l *Log) Close() error {
	var err error
	if l.since > 0 {
		err = l.Checkpoint()
	}
	if cerr := l.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("auditlog: %w", cerr)
	}
	return err
}

func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".head-*")
	if err != nil {
		return fmt.Errorf("auditlog: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("auditlog: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("auditlog: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("auditlog: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("auditlog: %w", err)
	}
	return nil
}

// VerifyOptions say what to check a log against.
type VerifyOptions struct {
	// Keys are the keys allowed to sign checkpoints. When empty, the key
	// of the first checkpoint is taken and every later one must match it.
	Keys []*trust.PublicKey
	// Head is the content of the head file (or a copy kept elsewhere);
	// nil skips that check.
	Head []byte
	// Witnesses are signed heads exported earlier (kiln log checkpoint)
	// and kept where whoever can write the log cannot: the log must hold
	// each, byte for byte, at its sequence number. Each must be signed by
	// a trusted key.
	Witnesses [][]byte
}

// Report is what Verify found in an intact log.
type Report struct {
	Records     int    `json:"records"`
	Checkpoints int    `json:"checkpoints"`
	Unsealed    int    `json:"unsealed"` // records after the last checkpoint
	KeyID       string `json:"key_id,omitempty"`
	HeadSeq     int64  `json:"head_seq,omitempty"`
	LastHash    string `json:"last_hash,omitempty"`
	// Witnesses is how many exported heads the log was checked against.
	Witnesses int `json:"witnesses,omitempty"`
}

// Verify reads a whole log and checks its chain, its encoding, its
// checkpoints' signatures and its head. Any failure wraps ErrTampered and
// names the line.
func Verify(r io.Reader, opts VerifyOptions) (*Report, error) {
	type pin struct {
		what string
		line []byte
		e    Entry
		seen bool
	}
	var pins []*pin
	parse := func(what string, data []byte) error {
		p := &pin{what: what, line: bytes.TrimRight(data, "\n")}
		if err := json.Unmarshal(p.line, &p.e); err != nil || p.e.Kind != KindCheckpoint {
			return fmt.Errorf("auditlog: %s: %w: not a checkpoint", what, ErrTampered)
		}
		pins = append(pins, p)
		return nil
	}
	var head *Entry
	if opts.Head != nil {
		if err := parse("head", opts.Head); err != nil {
			return nil, err
		}
		head = &pins[0].e
	}
	for i, w := range opts.Witnesses {
		if err := parse(fmt.Sprintf("witness %d", i+1), w); err != nil {
			return nil, err
		}
	}
	keys := opts.Keys
	rep := &Report{}
	prev := zeroHash
	var seq int64
	br := bufio.NewReader(r)
	for n := 1; ; n++ {
		line, err := br.ReadBytes('\n')
		if err == io.EOF && len(line) == 0 {
			break
		}
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("auditlog: read: %w", err)
		}
		if err == io.EOF {
			return nil, fmt.Errorf("auditlog: line %d: %w: no final newline (cut mid-line?)", n, ErrTampered)
		}
		line = line[:len(line)-1]
		var e Entry
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("auditlog: line %d: %w: %v", n, ErrTampered, err)
		}
		if !bytes.Equal(encode(&e), line) {
			return nil, fmt.Errorf("auditlog: line %d: %w: not as kiln wrote it (edited)", n, ErrTampered)
		}
		if e.Seq != seq+1 {
			return nil, fmt.Errorf("auditlog: line %d: %w: sequence %d after %d (lines removed, added or reordered)", n, ErrTampered, e.Seq, seq)
		}
		if e.Prev != prev {
			return nil, fmt.Errorf("auditlog: line %d (seq %d): %w: previous-line hash does not match (the line before was edited, removed or moved)", n, e.Seq, ErrTampered)
		}
		switch e.Kind {
		case KindCheckpoint:
			pk, err := trust.ParsePublicKey([]byte(e.PublicKey))
			if err != nil {
				return nil, fmt.Errorf("auditlog: line %d (checkpoint): %w: %v", n, ErrTampered, err)
			}
			if len(keys) == 0 {
				keys = []*trust.PublicKey{pk}
			}
			trusted := false
			for _, k := range keys {
				trusted = trusted || k.Equal(pk)
			}
			if !trusted {
				return nil, fmt.Errorf("auditlog: line %d (checkpoint): %w: signed by key %s, which is not trusted", n, ErrTampered, pk.ID)
			}
			sig, err := base64.StdEncoding.DecodeString(e.Sig)
			if err != nil || !ed25519.Verify(pk.Key, checkpointMessage(e), sig) {
				return nil, fmt.Errorf("auditlog: line %d (checkpoint): %w: bad signature", n, ErrTampered)
			}
			rep.Checkpoints++
			rep.Unsealed = 0
			rep.KeyID = pk.ID.String()
			for _, p := range pins {
				if e.Seq != p.e.Seq {
					continue
				}
				if !bytes.Equal(line, p.line) {
					return nil, fmt.Errorf("auditlog: line %d: %w: differs from the %s checkpoint (the log was rewritten up to there)", n, ErrTampered, p.what)
				}
				p.seen = true
			}
		case KindFlash, KindVerify, KindUpdate, KindAudit, KindProvision:
			for _, p := range pins {
				if e.Seq == p.e.Seq {
					return nil, fmt.Errorf("auditlog: line %d: %w: a record where the %s checkpoint was (the log was rewritten)", n, ErrTampered, p.what)
				}
			}
			if e.Sig != "" || e.PublicKey != "" {
				return nil, fmt.Errorf("auditlog: line %d: %w: a record with a signature", n, ErrTampered)
			}
			rep.Records++
			rep.Unsealed++
		default:
			return nil, fmt.Errorf("auditlog: line %d: %w: unknown kind %q", n, ErrTampered, e.Kind)
		}
		seq, prev = e.Seq, lineHash(line)
	}
	for _, p := range pins {
		if !p.seen {
			return nil, fmt.Errorf("auditlog: %w: the %s checkpoint (seq %d) is missing: the log was cut short or rewritten", ErrTampered, p.what, p.e.Seq)
		}
	}
	rep.Witnesses = len(opts.Witnesses)
	if head != nil {
		rep.HeadSeq = head.Seq
	}
	if seq > 0 {
		rep.LastHash = prev
	}
	return rep, nil
}

// VerifyFile verifies the log at path against its head file (when there is
// one) and keys.
func VerifyFile(path string, keys []*trust.PublicKey) (*Report, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auditlog: %w", err)
	}
	defer f.Close()
	head, err := os.ReadFile(HeadPath(path))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("auditlog: %w", err)
	}
	return Verify(f, VerifyOptions{Keys: keys, Head: head})
}

// Read returns the log's entries without checking them (kiln log show;
// run Verify for proof).
func Read(r io.Reader) ([]Entry, error) {
	var es []Entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for n := 1; sc.Scan(); n++ {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return es, fmt.Errorf("auditlog: line %d: %w", n, err)
		}
		es = append(es, e)
	}
	return es, sc.Err()
}
