package eventlog

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
)

// Vectors from guest-components' eventlog tests (event "domain operation content").
func TestEntryDigestVectors(t *testing.T) {
	for _, tc := range []struct {
		alg  Alg
		want string
	}{
		{AlgSHA256, "46df8dacf00a07d34a83cdf56d7978697790787cf2ba1432ef7c38f22cd96351"},
		{AlgSHA384, "dad5f0e226318ffa9839b75a472c6aa7fdb5834949d0a0a22990cf04d5692440fb00f3aa0609db7e49cd8d793f670d02"},
		{AlgSHA512, "b708d222ca8bd44dfe6ba0c4ca2cbb72379276fba8091025217064be45a813e5d6124ccf073219edb617d1faf007d55061465bdf34b7437dbdc9a7405bd4e9c0"},
	} {
		t.Run(tc.want[:8], func(t *testing.T) {
			e, err := NewEntry(Event{"domain", "operation", "content"}, 4, tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(e.Digests[0].Value); got != tc.want {
				t.Fatalf("digest %s, want %s", got, tc.want)
			}
		})
	}
}

func TestEntryBytes(t *testing.T) {
	e, err := NewEntry(Event{"d", "o", "c x"}, 4, AlgSHA384)
	if err != nil {
		t.Fatal(err)
	}
	text := "d o c x"
	data := append([]byte{0x4c, 0x45, 0x41, 0x41, byte(len(text)), 0, 0, 0}, text...)
	sum := sha512.Sum384(data)
	var want []byte
	want = append(want, 4, 0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0x0c, 0x00)
	want = append(want, sum[:]...)
	want = append(want, byte(len(data)), 0, 0, 0)
	want = append(want, data...)
	if got := e.Marshal(); !bytes.Equal(got, want) {
		t.Fatalf("entry\n got %x\nwant %x", got, want)
	}
	parsed, err := Parse(append(e.Marshal(), e.Marshal()...))
	if err != nil || len(parsed) != 2 {
		t.Fatalf("Parse = %d entries, %v", len(parsed), err)
	}
	ev, ok, err := parsed[1].AAEL()
	if err != nil || !ok || ev != (Event{"d", "o", "c x"}) {
		t.Fatalf("AAEL() = %+v, %v, %v", ev, ok, err)
	}
}

func TestEventValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		ev   Event
		ok   bool
	}{
		{"pull-image", Event{"github.com/confidential-containers", "PullImage", `{"image":"busybox", "digest":"sha256:00"}`}, true},
		{"empty-content", Event{"d", "o", ""}, true},
		{"content-spaces", Event{"d", "o", "a b  c"}, true},
		{"empty-domain", Event{"", "o", "c"}, false},
		{"empty-operation", Event{"d", "", "c"}, false},
		{"space-in-domain", Event{"a b", "o", "c"}, false},
		{"tab-in-operation", Event{"d", "o\tp", "c"}, false},
		{"newline-in-content", Event{"d", "o", "a\nb"}, false},
		{"invalid-utf8", Event{"d", "o", "\xff"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.ev.Validate()
			if tc.ok != (err == nil) {
				t.Fatalf("Validate = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error not classified: %v", err)
			}
			if tc.ok {
				back, err := ParseEventText(tc.ev.String())
				if err != nil || back != tc.ev {
					t.Fatalf("ParseEventText = %+v, %v", back, err)
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	good, _ := NewEntry(Event{"d", "o", "c"}, 4, AlgSHA256)
	b := good.Marshal()
	unknownAlg := bytes.Clone(b)
	unknownAlg[12] = 0x99
	tooManyDigests := bytes.Clone(b)
	tooManyDigests[8] = 200
	hugeSize := bytes.Clone(b)
	binary.LittleEndian.PutUint32(hugeSize[12+2+32:], 0xffffffff)
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"truncated", b[:len(b)-1]},
		{"short-header", b[:5]},
		{"unknown-alg", unknownAlg},
		{"too-many-digests", tooManyDigests},
		{"huge-size", hugeSize},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.in); !errors.Is(err, errdefs.ErrDataLoss) {
				t.Fatalf("Parse err = %v", err)
			}
		})
	}
}

// fakeRegisters emulates RTMRs (sha384) or PCRs (sha256) keyed by CC register.
type fakeRegisters struct {
	mu        sync.Mutex
	alg       crypto.Hash
	regs      map[uint32][]byte
	failNext  bool // Extend fails without extending
	crashNext bool // Extend extends, then fails
	// blindNext makes the next Measurement fail (the register cannot be
	// read back, as after a crash of the device path).
	blindNext bool
	// blindAfterExtend makes the Measurement after the next Extend fail.
	blindAfterExtend bool
	tdx              bool
}

var errInjected = errors.New("injected failure before extend")

func (f *fakeRegisters) Register(pcr uint64) uint32 {
	if !f.tdx {
		return uint32(pcr)
	}
	switch {
	case pcr == 1 || pcr == 7:
		return 1
	case pcr >= 2 && pcr <= 6:
		return 2
	case pcr >= 8 && pcr <= 15:
		return 3
	}
	return 4
}
func (f *fakeRegisters) HashAlg() crypto.Hash { return f.alg }
func (f *fakeRegisters) Measurement(_ context.Context, pcr uint64) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blindNext {
		f.blindNext = false
		return nil, errors.New("injected read failure")
	}
	v, ok := f.regs[f.Register(pcr)]
	if !ok {
		v = make([]byte, f.alg.Size())
	}
	return bytes.Clone(v), nil
}
func (f *fakeRegisters) Extend(ctx context.Context, pcr uint64, d []byte) error {
	if f.blindAfterExtend {
		f.blindAfterExtend = false
		defer func() { f.mu.Lock(); f.blindNext = true; f.mu.Unlock() }()
	}
	if f.failNext {
		f.failNext = false
		return errInjected
	}
	cur, _ := f.Measurement(ctx, pcr)
	h := f.alg.New()
	h.Write(cur)
	h.Write(attester.FitDigest(d, f.alg.Size()))
	f.mu.Lock()
	if f.regs == nil {
		f.regs = map[uint32][]byte{}
	}
	f.regs[f.Register(pcr)] = h.Sum(nil)
	f.mu.Unlock()
	if f.crashNext {
		f.crashNext = false
		return errors.New("injected crash after extend")
	}
	return nil
}

func openTest(t *testing.T, m attester.RuntimeMeasurer) (*Log, Config) {
	t.Helper()
	dir := t.TempDir()
	cfg := Config{Path: filepath.Join(dir, "aa", "eventlog"), WALPath: filepath.Join(dir, "aa", ".wal"), Measurer: m}
	l, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, cfg
}

func replayFile(t *testing.T, path string, register uint32, alg Alg) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	v, err := Replay(entries, register, alg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRecordReplays(t *testing.T) {
	for _, tc := range []struct {
		name     string
		m        *fakeRegisters
		pcr      uint64
		register uint32
		alg      Alg
	}{
		{"tdx-rtmr3", &fakeRegisters{alg: crypto.SHA384, tdx: true}, 17, 4, AlgSHA384},
		{"vtpm-pcr17", &fakeRegisters{alg: crypto.SHA256}, 17, 17, AlgSHA256},
		{"vtpm-pcr16", &fakeRegisters{alg: crypto.SHA256}, 16, 16, AlgSHA256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, _ := openTest(t, tc.m)
			ctx := context.Background()
			for _, c := range []string{"one", `{"image":"docker.io/library/busybox:latest", "digest":"sha256:ab"}`, "three"} {
				if err := l.Record(ctx, Event{"cova", "Test", c}, tc.pcr); err != nil {
					t.Fatal(err)
				}
			}
			got := replayFile(t, l.Path(), tc.register, tc.alg)
			want, _ := tc.m.Measurement(ctx, tc.pcr)
			if !bytes.Equal(got, want) {
				t.Fatalf("replay %x, register %x", got, want)
			}
			if other := replayFile(t, l.Path(), tc.register+1, tc.alg); bytes.Equal(other, want) {
				t.Fatal("replaying another register gave the same value")
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(l.Path()), ".wal")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("write-ahead file left behind: %v", err)
			}
		})
	}
}

func TestRecordRejectsBadEvent(t *testing.T) {
	l, _ := openTest(t, &fakeRegisters{alg: crypto.SHA384, tdx: true})
	if err := l.Record(context.Background(), Event{"a b", "o", "c"}, 17); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("err = %v", err)
	}
}

func TestRecovery(t *testing.T) {
	// Each case injects a fault into the second of three records.
	for _, tc := range []struct {
		name        string
		inject      func(*fakeRegisters)
		recordErr   error // from the faulty Record; nil = it completes
		walKept     bool  // the write-ahead file survives the faulty Record
		tamper      func(t *testing.T, cfg Config, m *fakeRegisters)
		openErr     error
		wantEntries int
	}{
		// The extend fails and the register did not move: rolled back, the
		// event is not measured now or later.
		{"extend-fails-rolled-back", func(m *fakeRegisters) { m.failNext = true }, errInjected, false, nil, nil, 2},
		// The extend errs after moving the register: the record completes.
		{"extend-errs-after-moving", func(m *fakeRegisters) { m.crashNext = true }, nil, false, nil, nil, 3},
		// The register cannot be read back: the write-ahead file stays for
		// Open, which completes the record whichever side it is on.
		{"unknown-before-extend", func(m *fakeRegisters) { m.failNext = true; m.blindAfterExtend = true }, errdefs.ErrDataLoss, true, nil, nil, 3},
		{"unknown-after-extend", func(m *fakeRegisters) { m.crashNext = true; m.blindAfterExtend = true }, errdefs.ErrDataLoss, true, nil, nil, 3},
		{"register-moved-by-another-writer", func(m *fakeRegisters) { m.crashNext = true; m.blindAfterExtend = true }, errdefs.ErrDataLoss, true, func(t *testing.T, _ Config, m *fakeRegisters) {
			m.Extend(context.Background(), 17, []byte("intruder"))
		}, errdefs.ErrDataLoss, 0},
		{"truncated-wal", func(m *fakeRegisters) { m.failNext = true; m.blindAfterExtend = true }, errdefs.ErrDataLoss, true, func(t *testing.T, cfg Config, _ *fakeRegisters) {
			if err := os.Truncate(cfg.WALPath, 20); err != nil {
				t.Fatal(err)
			}
		}, errdefs.ErrDataLoss, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &fakeRegisters{alg: crypto.SHA384, tdx: true}
			l, cfg := openTest(t, m)
			ctx := context.Background()
			if err := l.Record(ctx, Event{"cova", "First", "1"}, 17); err != nil {
				t.Fatal(err)
			}
			tc.inject(m)
			err := l.Record(ctx, Event{"cova", "Second", "2"}, 17)
			if !errors.Is(err, tc.recordErr) || (tc.recordErr == nil && err != nil) {
				t.Fatalf("faulty Record = %v, want %v", err, tc.recordErr)
			}
			if _, serr := os.Stat(cfg.WALPath); (serr == nil) != tc.walKept {
				t.Fatalf("write-ahead file kept = %v, want %v", serr == nil, tc.walKept)
			}
			if tc.walKept {
				if err := l.Record(ctx, Event{"cova", "Blocked", "x"}, 17); !errors.Is(err, errdefs.ErrDataLoss) {
					t.Fatalf("Record after an unresolved one = %v", err)
				}
			}
			l.Close()
			if tc.tamper != nil {
				tc.tamper(t, cfg, m)
			}
			l2, err := Open(ctx, cfg)
			if !errors.Is(err, tc.openErr) || (tc.openErr == nil && err != nil) {
				t.Fatalf("Open after the fault = %v, want %v", err, tc.openErr)
			}
			if err != nil {
				return
			}
			defer l2.Close()
			if err := l2.Record(ctx, Event{"cova", "Third", "3"}, 17); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(cfg.Path)
			entries, err := Parse(b)
			if err != nil || len(entries) != tc.wantEntries {
				t.Fatalf("log has %d entries, want %d (%v)", len(entries), tc.wantEntries, err)
			}
			got, _ := Replay(entries, 4, AlgSHA384, nil)
			want, _ := m.Measurement(ctx, 17)
			if !bytes.Equal(got, want) {
				t.Fatalf("replay %x, register %x", got, want)
			}
			if _, err := os.Stat(cfg.WALPath); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("write-ahead file left behind: %v", err)
			}
		})
	}
}

func TestWALWriteFailureLeavesNoFile(t *testing.T) {
	m := &fakeRegisters{alg: crypto.SHA256}
	l, cfg := openTest(t, m)
	// Make the write-ahead path a directory: opening it for writing fails.
	if err := os.Mkdir(cfg.WALPath, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.Record(context.Background(), Event{"cova", "X", "1"}, 17); err == nil {
		t.Fatal("write-ahead failure not reported")
	}
	if v, _ := m.Measurement(context.Background(), 17); !bytes.Equal(v, make([]byte, 32)) {
		t.Fatal("register extended although the write-ahead file failed")
	}
}

func TestReplayDetectsTamper(t *testing.T) {
	e, _ := NewEntry(Event{"d", "o", "c"}, 4, AlgSHA384)
	e.Data[len(e.Data)-1] = 'x'
	if _, err := Replay([]Entry{e}, 4, AlgSHA384, nil); !errors.Is(err, errdefs.ErrDataLoss) {
		t.Fatalf("Replay of a tampered entry: %v", err)
	}
	if _, err := Replay(nil, 4, AlgSHA384, make([]byte, 3)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad initial: %v", err)
	}
	ff := bytes.Repeat([]byte{0xff}, 32)
	v, err := Replay(nil, 17, AlgSHA256, ff)
	if err != nil || !bytes.Equal(v, ff) {
		t.Fatalf("empty replay from 0xff.. = %x, %v", v, err)
	}
}

func TestCCEventLog(t *testing.T) {
	e1, _ := NewEntry(Event{"fw", "Boot", "x"}, 1, AlgSHA384)
	aael1, _ := NewEntry(Event{"cova", "A", "1"}, 4, AlgSHA384)
	aael := aael1.Marshal()
	// A CCEL: spec-ID header, one event, the end marker, then table padding.
	ccel := append(append(append(SpecIDHeader[:], e1.Marshal()...), EndMarker[:]...), bytes.Repeat([]byte{0xff}, 100)...)
	zeroPadded := append(append(SpecIDHeader[:], e1.Marshal()...), make([]byte, 64)...)
	for _, tc := range []struct {
		name        string
		ccel, aael  []byte
		wantNil     bool
		wantEntries int
		wantErr     error
	}{
		{"neither", nil, nil, true, 0, nil},
		{"aael-only", nil, aael, false, 1, nil},
		{"empty-aael-file", nil, []byte{}, false, 0, nil},
		{"ccel-only", ccel, nil, false, 1, nil},
		{"ccel-zero-terminated", zeroPadded, aael, false, 2, nil},
		{"both", ccel, aael, false, 2, nil},
		{"ccel-no-marker", append(SpecIDHeader[:], e1.Marshal()...), aael, false, 0, errdefs.ErrDataLoss},
		{"ccel-garbage", append(SpecIDHeader[:], 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13), nil, false, 0, errdefs.ErrDataLoss},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CCEventLog(tc.ccel, tc.aael)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if (got == nil) != tc.wantNil {
				t.Fatalf("nil = %v, want %v", got == nil, tc.wantNil)
			}
			if got == nil {
				return
			}
			if !bytes.HasSuffix(got, EndMarker[:]) || !bytes.HasPrefix(got, SpecIDHeader[:]) {
				t.Fatalf("framing wrong: %x", got)
			}
			first, entries, err := ParseCCEventLog(got)
			if err != nil || first.Type != EvNoAction || len(entries) != tc.wantEntries {
				t.Fatalf("parsed first=%+v entries=%d err=%v", first, len(entries), err)
			}
			if len(tc.aael) > 0 {
				v, err := Replay(entries, 4, AlgSHA384, nil)
				want, _ := Replay([]Entry{aael1}, 4, AlgSHA384, nil)
				if err != nil || !bytes.Equal(v, want) {
					t.Fatalf("RTMR3 replay %x, %v", v, err)
				}
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	e, _ := NewEntry(Event{"d", "o", "c"}, 4, AlgSHA384)
	f.Add(e.Marshal())
	f.Add(append(e.Marshal(), e.Marshal()...))
	f.Add([]byte{})
	f.Add(append(SpecIDHeader[:], EndMarker[:]...))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, err := Parse(b)
		if err == nil {
			var back []byte
			for _, e := range entries {
				back = append(back, e.Marshal()...)
				e.AAEL()
			}
			if !bytes.Equal(back, b) {
				t.Fatalf("round trip differs")
			}
		}
		ParseCCEventLog(b)
		TrimCCEL(b)
	})
}
