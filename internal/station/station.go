package station

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"kiln.dev/kiln/boards"
	"kiln.dev/kiln/flash"
	"kiln.dev/kiln/flash/device"
	"kiln.dev/kiln/flash/serialport"
	"kiln.dev/kiln/internal/auditlog"
	"kiln.dev/kiln/internal/op"
	"kiln.dev/kiln/internal/trust"
)

// KindProvision is the audit-log kind of a station job's record.
const KindProvision = auditlog.KindProvision

// Job and port states.
const (
	StateRunning  = "running"
	StateVerified = "verified"
	StateFailed   = "failed"
	StateAborted  = "aborted"
	StateAbsent   = "absent" // no board on the port
)

// Results in the audit log besides auditlog's ok, mismatch, untrusted and
// error.
const (
	ResultUnplugged = "unplugged"
	ResultAborted   = "aborted"
)

// Options tune a Station beyond its file.
type Options struct {
	// LogKey seals the audit log's checkpoints; nil leaves it chained but
	// unsealed. LogKeys are the keys whose checkpoints the log may hold
	// (default: LogKey's public key; none: the first checkpoint's key).
	LogKey  *trust.SecretKey
	LogKeys []*trust.PublicKey
	// Log overrides the file's log path.
	Log string
	// Policy overrides the file's policy; with neither, no signature is
	// required (a signature that is present is still checked).
	Policy *trust.Policy
	// ListPorts lists USB serial ports for usb targets (default: the
	// system's).
	ListPorts ListPorts
	// Device is the base of every job's device.Options (emulator pacing,
	// reset pins).
	Device device.Options
	// OnEvent, if set, is called with every event, in order, before
	// Subscribe's channels get it. It must not block for long.
	OnEvent func(Event)
	// MaxJobs ends Run after that many jobs have finished (0: run until the
	// context ends).
	MaxJobs int
}

// Event is a change on one port.
type Event struct {
	Time   time.Time `json:"time"`
	Port   string    `json:"port"`
	Board  string    `json:"board,omitempty"`
	Job    int64     `json:"job,omitempty"`
	State  string    `json:"state"`
	Phase  string    `json:"phase,omitempty"`
	Done   int64     `json:"done,omitempty"`
	Total  int64     `json:"total,omitempty"`
	Serial string    `json:"serial,omitempty"`
	Device string    `json:"device,omitempty"`
	Error  string    `json:"error,omitempty"`
	Result string    `json:"result,omitempty"`
	Seq    int64     `json:"log_seq,omitempty"` // the job's audit-log line
}

// PortStatus is one port as the operator sees it.
type PortStatus struct {
	Port      string `json:"port"`
	Board     string `json:"board"`
	Present   bool   `json:"present"`
	State     string `json:"state"`
	Phase     string `json:"phase,omitempty"`
	Done      int64  `json:"done,omitempty"`
	Total     int64  `json:"total,omitempty"`
	Job       int64  `json:"job,omitempty"`
	Serial    string `json:"serial,omitempty"`
	Device    string `json:"device,omitempty"`
	Jobs      int    `json:"jobs"`
	Verified  int    `json:"verified"`
	Failed    int    `json:"failed"`
	LastError string `json:"last_error,omitempty"`
}

// Status is the whole station at one moment.
type Status struct {
	Station   string       `json:"station"`
	Operator  string       `json:"operator,omitempty"`
	Started   time.Time    `json:"started"`
	Running   int          `json:"running"`
	Jobs      int          `json:"jobs"`
	Verified  int          `json:"verified"`
	Failed    int          `json:"failed"`
	Aborted   int          `json:"aborted"`
	Yield     float64      `json:"yield"` // verified / (verified + failed)
	LastError string       `json:"last_error,omitempty"`
	Log       string       `json:"log"`
	LogOK     *bool        `json:"log_verified,omitempty"`
	Ports     []PortStatus `json:"ports"`
}

// target is a Target made ready: board, trusted artifact bytes, image.
type target struct {
	Target
	board    *boards.Board
	artifact *op.Artifact
	image    *flash.Image
	decision *trust.Decision
}

// Station is a running provisioning station.
type Station struct {
	cfg     *Config
	opts    Options
	policy  *trust.Policy
	targets []*target
	serials *Serials
	logPath string

	logMu sync.Mutex
	log   *auditlog.Log

	mu      sync.Mutex
	status  Status
	ports   map[string]*PortStatus
	jobSeq  int64
	subs    map[chan Event]struct{}
	eventMu sync.Mutex // orders OnEvent calls
}

// ErrLog marks an audit log that does not verify: the station refuses to
// add to it.
var ErrLog = errors.New("audit log does not verify")

// New prepares a station: it loads every board and artifact and checks the
// artifacts against the trust policy (a refusal wraps trust.ErrUntrusted;
// no device has been touched), checks the firmware leaves the provision
// region free, verifies the audit log and opens the serial-number pool.
func New(cfg *Config, opts Options) (*Station, error) {
	s := &Station{cfg: cfg, opts: opts, ports: map[string]*PortStatus{}, subs: map[chan Event]struct{}{}}
	s.logPath = cfg.Log
	if opts.Log != "" {
		s.logPath = opts.Log
	}
	if s.logPath == "" {
		return nil, fmt.Errorf("station: %s: %w: no audit log (log = \"FILE\")", cfg.Source, ErrConfig)
	}
	s.policy = opts.Policy
	if s.policy == nil && cfg.Policy != "" {
		p, err := trust.LoadPolicy(cfg.Policy)
		if err != nil {
			return nil, fmt.Errorf("station: %w", err)
		}
		s.policy = p
	}
	if s.opts.ListPorts == nil {
		s.opts.ListPorts = serialport.ListPorts
	}
	if len(s.opts.LogKeys) == 0 && opts.LogKey != nil {
		s.opts.LogKeys = []*trust.PublicKey{opts.LogKey.Public()}
	}
	for _, t := range cfg.Targets {
		tg, err := s.prepare(t)
		if err != nil {
			return nil, err
		}
		s.targets = append(s.targets, tg)
	}
	used, err := s.verifyLog()
	if err != nil {
		return nil, err
	}
	s.serials, err = OpenSerials(cfg.Serial, cfg.State, used)
	if err != nil {
		return nil, err
	}
	s.status = Status{Station: cfg.Name, Operator: cfg.Operator, Log: s.logPath}
	return s, nil
}

func (s *Station) prepare(t Target) (*target, error) {
	b, err := boards.Get(t.Board)
	if err != nil {
		return nil, fmt.Errorf("station: %w", err)
	}
	if b.Provision == nil {
		return nil, fmt.Errorf("station: board %s declares no provision region (provision = { region = \"flash\", base = …, size = … } in its board file)", b.Name)
	}
	if b.Provision.Region != "flash" {
		return nil, fmt.Errorf("station: board %s keeps its record in %s; this station writes records to flash only", b.Name, b.Provision.Region)
	}
	// The one artifact loader kiln flash uses: the bytes are read once,
	// and the policy sees the bytes the image was parsed from.
	a, err := op.LoadFirmware(t.Artifact, op.LoadOptions{Address: t.Address, Sig: t.Sig})
	if err != nil {
		return nil, fmt.Errorf("station: artifact: %w", err)
	}
	if err := op.CheckBoard(a, b); err != nil {
		return nil, fmt.Errorf("station: %w", err)
	}
	tg := &target{Target: t, board: b, artifact: a, image: a.Image}
	if tg.decision, err = s.check(tg, ""); err != nil {
		return nil, err
	}
	img := a.Image
	pr := b.Provision
	for _, seg := range img.Segments {
		if uint64(seg.Addr) < uint64(pr.Base)+uint64(pr.Size) && seg.End() > uint64(pr.Base) {
			return nil, fmt.Errorf("station: %w: %s: segment 0x%x-0x%x overlaps %s's provision region 0x%x-0x%x",
				flash.ErrBadImage, t.Artifact, seg.Addr, seg.End(), b.Name, pr.Base, uint64(pr.Base)+uint64(pr.Size))
		}
	}
	tg.image = img
	return tg, nil
}

// check applies the trust gate to tg's artifact going to port ("" for
// any of the target's ports).
func (s *Station) check(tg *target, port string) (*trust.Decision, error) {
	d, err := op.Trust(s.policy, tg.artifact, trust.Target{Board: tg.Board, Group: tg.Group, Port: port})
	if err != nil {
		return nil, fmt.Errorf("station: %w", err)
	}
	return d, nil
}

// verifyLog checks the audit log (if there is one yet) and returns the
// serial numbers its verified provision records hold.
func (s *Station) verifyLog() ([]string, error) {
	f, err := os.Open(s.logPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("station: %w", err)
	}
	defer f.Close()
	if _, err := auditlog.VerifyFile(s.logPath, s.opts.LogKeys); err != nil {
		return nil, fmt.Errorf("station: %w: %s: %w", ErrLog, s.logPath, err)
	}
	es, err := auditlog.Read(f)
	if err != nil {
		return nil, fmt.Errorf("station: %w: %w", ErrLog, err)
	}
	var used []string
	for _, e := range es {
		if e.Kind == KindProvision && e.Result == "ok" && e.Provision["serial"] != "" {
			used = append(used, e.Provision["serial"])
		}
	}
	return used, nil
}

// Subscribe returns a channel of events and a function that ends the
// subscription. A slow reader misses events (Status has the truth).
func (s *Station) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 256)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}

// Status returns a snapshot of the station.
func (s *Station) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.status
	st.Ports = make([]PortStatus, 0, len(s.ports))
	for _, p := range s.ports {
		st.Ports = append(st.Ports, *p)
	}
	sort.Slice(st.Ports, func(i, j int) bool { return st.Ports[i].Port < st.Ports[j].Port })
	if n := st.Verified + st.Failed; n > 0 {
		st.Yield = float64(st.Verified) / float64(n)
	}
	return st
}

// emit applies e to the status and tells the listeners.
func (s *Station) emit(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	s.eventMu.Lock()
	defer s.eventMu.Unlock()
	s.mu.Lock()
	p := s.ports[e.Port]
	if p == nil {
		p = &PortStatus{Port: e.Port, Board: e.Board}
		s.ports[e.Port] = p
	}
	switch e.State {
	case StateAbsent:
		p.Present = false
		if p.State != StateRunning {
			p.State = StateAbsent
		}
	case StateRunning:
		if p.Job != e.Job {
			p.Serial, p.Device, p.Done, p.Total = "", "", 0, 0
			s.status.Running++
		}
		p.Present, p.State, p.Job, p.Phase = true, StateRunning, e.Job, e.Phase
		if e.Total > 0 {
			p.Done, p.Total = e.Done, e.Total
		}
	default: // a job's end
		s.status.Running--
		s.status.Jobs++
		p.Jobs++
		p.State, p.Phase = e.State, ""
		switch e.State {
		case StateVerified:
			p.Verified++
			s.status.Verified++
		case StateFailed:
			p.Failed++
			s.status.Failed++
		case StateAborted:
			s.status.Aborted++
		}
		if e.Error != "" {
			p.LastError = e.Error
			s.status.LastError = e.Port + ": " + e.Error
		}
	}
	if e.Board != "" {
		p.Board = e.Board
	}
	if e.Serial != "" {
		p.Serial = e.Serial
	}
	if e.Device != "" {
		p.Device = e.Device
	}
	subs := make([]chan Event, 0, len(s.subs))
	for ch := range s.subs {
		subs = append(subs, ch)
	}
	s.mu.Unlock()
	if s.opts.OnEvent != nil {
		s.opts.OnEvent(e)
	}
	for _, ch := range subs {
		select {
		case ch <- e:
		default:
		}
	}
}

// Run discovers boards and provisions each until ctx ends (or MaxJobs jobs
// have finished). Jobs in flight then get the file's grace period to
// finish; the rest are cancelled and recorded as aborted. The audit log is
// sealed and verified before Run returns.
func (s *Station) Run(ctx context.Context) (err error) {
	l, err := auditlog.Open(s.logPath, s.opts.LogKey, auditlog.Options{Operator: s.cfg.Operator})
	if err != nil {
		return fmt.Errorf("station: %w", err)
	}
	s.log = l
	s.mu.Lock()
	s.status.Started = time.Now().UTC()
	s.mu.Unlock()
	defer func() {
		cerr := l.Close()
		_, verr := s.verifyLog()
		ok := cerr == nil && verr == nil
		s.mu.Lock()
		s.status.LogOK = &ok
		s.mu.Unlock()
		if err == nil {
			err = errors.Join(cerr, verr)
		}
	}()

	jobsCtx, cancelJobs := context.WithCancel(context.Background())
	defer cancelJobs()
	var wg sync.WaitGroup
	ended := make(chan string, 16)
	running := map[string]bool{}
	lastKey := map[string]string{}
	present := map[string]bool{}
	started, finished := 0, 0
	tick := time.NewTicker(s.cfg.poll)
	defer tick.Stop()
	boardsOf := make([]*boards.Board, len(s.targets))
	for i, t := range s.targets {
		boardsOf[i] = t.board
	}
	lastScanErr := ""
loop:
	for {
		found, serr := scan(s.cfg, boardsOf, s.opts.ListPorts)
		if serr != nil && serr.Error() != lastScanErr {
			lastScanErr = serr.Error()
			s.mu.Lock()
			s.status.LastError = lastScanErr
			s.mu.Unlock()
		}
		for port := range present {
			if _, ok := found[port]; !ok {
				delete(present, port)
				delete(lastKey, port) // the same node coming back is a new board
				s.emit(Event{Port: port, State: StateAbsent})
			}
		}
		ports := make([]string, 0, len(found))
		for p := range found {
			ports = append(ports, p)
		}
		sort.Strings(ports)
		for _, port := range ports {
			pl := found[port]
			if !present[port] {
				present[port] = true
				s.mu.Lock()
				if s.ports[port] == nil {
					s.ports[port] = &PortStatus{Port: port, Board: s.targets[pl.Target].Board, State: "idle"}
				}
				s.ports[port].Present = true
				s.mu.Unlock()
			}
			if running[port] || lastKey[port] == pl.Key || (s.opts.MaxJobs > 0 && started >= s.opts.MaxJobs) {
				continue
			}
			lastKey[port] = pl.Key
			running[port] = true
			started++
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.job(jobsCtx, pl)
				ended <- pl.Port
			}()
		}
		if s.opts.MaxJobs > 0 && finished >= s.opts.MaxJobs {
			break
		}
		select {
		case <-ctx.Done():
			break loop
		case port := <-ended:
			delete(running, port)
			finished++
		case <-tick.C:
		}
	}
	// Interrupted: let jobs in flight finish, then abort what is left.
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	grace := time.NewTimer(s.cfg.grace)
	defer grace.Stop()
	for {
		select {
		case <-all:
			return nil
		case <-ended:
		case <-grace.C:
			cancelJobs()
		}
	}
}

// job provisions the board on one port and records the outcome.
func (s *Station) job(ctx context.Context, pl plug) {
	tg := s.targets[pl.Target]
	b := tg.board
	s.mu.Lock()
	s.jobSeq++
	id := s.jobSeq
	s.mu.Unlock()
	ev := func(phase string, done, total int64) Event {
		return Event{Port: pl.Port, Board: b.Name, Job: id, State: StateRunning, Phase: phase, Done: done, Total: total}
	}
	s.emit(ev("trust", 0, 0))
	j := &jobRun{id: id, port: pl.Port, target: tg, prov: map[string]string{
		"station": s.cfg.Name, "job": strconv.FormatInt(id, 10),
	}}
	err := s.provision(ctx, pl, j, func(e Event) { s.emit(e) }, ev)
	if j.serial != "" && err != nil {
		s.serials.Release(j.serial)
	}
	s.finish(ctx, pl, j, err)
}

// jobRun is what a job learned and wrote, for its log record.
type jobRun struct {
	id       int64
	port     string
	target   *target
	phase    string
	serial   string
	device   string
	fwRes    flash.Result
	prov     map[string]string
	verified bool
}

func (s *Station) provision(ctx context.Context, pl plug, j *jobRun, emit func(Event), ev func(string, int64, int64) Event) error {
	tg := j.target
	b := tg.board
	j.phase = "trust"
	// The policy may name ports: check this one before any device I/O.
	d, err := s.check(tg, pl.Port)
	if err != nil {
		return err
	}
	if d.KeyID != "" {
		j.prov["artifact_key_id"] = d.KeyID
	}
	j.phase = "open"
	emit(ev("open", 0, 0))
	opts := s.opts.Device
	if tg.Baud > 0 {
		opts.Baud = tg.Baud
	}
	if s.cfg.timeout > 0 {
		opts.Timeout = s.cfg.timeout
	}
	if s.cfg.Tries > 0 {
		opts.Tries = s.cfg.Tries
	}
	var last time.Time
	lastPhase := ""
	progress := func(phase string, done, total int64) {
		if now := time.Now(); phase != lastPhase || done == total || now.Sub(last) > 50*time.Millisecond {
			last, lastPhase = now, phase
			emit(ev(phase, done, total))
		}
	}
	pr := b.Provision
	var serial string
	var rec *Record
	var recData []byte
	// The device work (open through the back-end table, write firmware
	// and record in one session, prove both) is op.Provision's; the
	// station makes the record once the device has said who it is.
	done, err := op.Provision(ctx, op.Request{Port: pl.Port, Protocol: tg.Protocol, Device: opts, Progress: progress}, op.Provisioning{
		Board: b, Firmware: tg.image,
		Phase: func(p string) {
			if p == "record" {
				p = "serial"
			}
			j.phase = p
		},
		Record: func(identity string) (*flash.Image, error) {
			j.device = identity
			var err error
			if serial, err = s.serials.Reserve(); err != nil {
				return nil, err
			}
			j.serial = serial
			rec = &Record{Version: RecordVersion, Serial: serial, Time: time.Now().UTC()}
			if s.cfg.Keys.Ed25519 {
				pub, priv, err := ed25519.GenerateKey(rand.Reader)
				if err != nil {
					return nil, err
				}
				rec.PrivateKey, rec.PublicKey = priv, pub
				j.prov["public_key"] = "ed25519:" + base64.StdEncoding.EncodeToString(pub)
			}
			if recData, err = rec.Encode(int(pr.Size)); err != nil {
				return nil, err
			}
			sum := sha256.Sum256(recData)
			j.prov["record_version"] = strconv.Itoa(RecordVersion)
			j.prov["record_region"] = pr.Region
			j.prov["record_address"] = fmt.Sprintf("0x%x", pr.Base)
			j.prov["record_size"] = strconv.Itoa(int(pr.Size))
			j.prov["record_sha256"] = hex.EncodeToString(sum[:])
			j.prov["record_crc32"] = fmt.Sprintf("%08x", crc32.ChecksumIEEE(recData))
			emit(Event{Port: pl.Port, Board: b.Name, Job: j.id, State: StateRunning, Phase: "write", Serial: serial, Device: j.device})
			return flash.NewImage("provision record", flash.Segment{Addr: pr.Base, Data: recData})
		},
	})
	if done != nil {
		if done.Device != "" {
			j.device = done.Device
		}
		j.fwRes = done.Firmware
		if done.Record != nil {
			gsum := sha256.Sum256(done.Record)
			j.prov["record_readback_sha256"] = hex.EncodeToString(gsum[:])
		}
	}
	if err != nil {
		return err
	}
	got := done.Record
	back, err := DecodeRecord(got)
	if err != nil {
		return err
	}
	if back.Serial != serial || (rec.PublicKey != nil && !back.PublicKey.Equal(rec.PublicKey)) {
		return fmt.Errorf("provision record decodes to serial %s: %w", back.Serial, flash.ErrVerify)
	}
	j.verified = true
	return nil
}

// finish writes the job's one audit record, commits its serial number if
// the device was verified, and reports the end.
func (s *Station) finish(ctx context.Context, pl plug, j *jobRun, err error) {
	tg := j.target
	e := auditlog.Entry{
		Kind: KindProvision, Operator: s.cfg.Operator, Board: tg.board.Name, Port: pl.Port, Device: j.device,
		Artifact: tg.Artifact, ArtifactSHA256: tg.image.SHA256(), ReadbackSHA256: j.fwRes.DeviceSHA256,
		Provision: j.prov,
	}
	state := StateVerified
	switch {
	case err == nil:
		e.Result = "ok"
		e.Provision["serial"] = j.serial
	case ctx.Err() != nil:
		state, e.Result = StateAborted, ResultAborted
	case unplugged(pl):
		state, e.Result = StateFailed, ResultUnplugged
	case errors.Is(err, trust.ErrUntrusted):
		state, e.Result = StateFailed, "untrusted"
	case errors.Is(err, flash.ErrVerify):
		state, e.Result = StateFailed, "mismatch"
	default:
		state, e.Result = StateFailed, "error"
	}
	if err != nil {
		e.Detail = oneLine(j.phase + ": " + err.Error())
		if e.Result == ResultUnplugged {
			e.Detail = "board unplugged during " + e.Detail
		}
		if j.serial != "" {
			e.Provision["serial_released"] = j.serial
		}
	}
	s.logMu.Lock()
	written, lerr := s.log.Append(e)
	if lerr == nil && err == nil {
		// Committed only after the record is in the log: a crash between
		// the two is healed at the next start from the log.
		lerr = s.serials.Commit(j.serial)
	}
	s.logMu.Unlock()
	if lerr != nil {
		if err == nil {
			// The device holds this number and was proven: it must never
			// go to another device, logged or not.
			if cerr := s.serials.Commit(j.serial); cerr != nil {
				lerr = errors.Join(lerr, cerr)
			}
		}
		state = StateFailed
		e.Detail = oneLine("audit log: " + lerr.Error())
	}
	end := Event{Port: pl.Port, Board: tg.board.Name, Job: j.id, State: state, Device: j.device, Result: e.Result, Seq: written.Seq}
	if state == StateVerified {
		end.Serial = j.serial
	} else {
		end.Error = e.Detail
	}
	s.emit(end)
}

// unplugged reports whether the board the job started on is gone.
func unplugged(pl plug) bool {
	if pl.Node == "" {
		return false
	}
	k, ok := nodeKey(pl.Port)
	return !ok || k != pl.Node
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
