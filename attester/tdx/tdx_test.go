package tdx

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	"github.com/cova-project/cova/attester/tsm/tsmtest"
	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	tdxtest "github.com/google/go-tdx-guest/testing"
	"github.com/google/go-tdx-guest/testing/testdata"
	"github.com/google/go-tdx-guest/validate"
	"github.com/google/go-tdx-guest/verify"
)

// cannedRD is the REPORTDATA of go-tdx-guest's canned production quote.
var cannedRD = func() [64]byte {
	var b [64]byte
	q, err := abi.QuoteToProto(testdata.RawQuote)
	if err != nil {
		panic(err)
	}
	copy(b[:], q.(*pb.QuoteV4).TdQuoteBody.ReportData)
	return b
}()

// quoteFor answers like a TDX quote provider: the canned, genuinely signed
// quote for its report data, and for anything else the same quote with our
// report data patched in (its signature no longer matches).
func quoteFor(t *testing.T) tsmtest.Blobs {
	return func(in []byte, _ string) ([]byte, []byte, error) {
		if len(in) != 64 {
			return nil, nil, fmt.Errorf("inblob is %d bytes, want 64", len(in))
		}
		if bytes.Equal(in, cannedRD[:]) {
			return bytes.Clone(testdata.RawQuote), nil, nil
		}
		q, err := abi.QuoteToProto(testdata.RawQuote)
		if err != nil {
			return nil, nil, err
		}
		q.(*pb.QuoteV4).TdQuoteBody.ReportData = bytes.Clone(in)
		out, err := abi.QuoteToAbiBytes(q)
		return out, nil, err
	}
}

func verifyOpts() *verify.Options {
	ts := time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC)
	return &verify.Options{Getter: tdxtest.TestGetter, Now: &verify.TimeSet{PckCertChain: ts, TcbInfo: ts, QeIdentity: ts, PckCrl: ts, RootCaCrl: ts}}
}

func newTest(t *testing.T, cfg Config) *Attester {
	t.Helper()
	dir := t.TempDir()
	if cfg.TSM == nil {
		cfg.TSM = tsmtest.New("tdx_guest\n", quoteFor(t))
	}
	if cfg.CCELPath == "" {
		cfg.CCELPath = filepath.Join(dir, "CCEL")
	}
	if cfg.AAELPath == "" {
		cfg.AAELPath = filepath.Join(dir, "eventlog")
	}
	return New(cfg)
}

func decode(t *testing.T, ev []byte) (quote []byte, el []byte, hasEL bool) {
	t.Helper()
	var e Evidence
	if err := json.Unmarshal(ev, &e); err != nil {
		t.Fatal(err)
	}
	q, err := base64.StdEncoding.DecodeString(e.Quote)
	if err != nil {
		t.Fatal(err)
	}
	if e.CCEventlog == nil {
		return q, nil, false
	}
	el, err = base64.StdEncoding.DecodeString(*e.CCEventlog)
	if err != nil {
		t.Fatal(err)
	}
	return q, el, true
}

func TestEvidenceVerifiesWithGoTdxGuest(t *testing.T) {
	a := newTest(t, Config{})
	ev, err := a.Evidence(context.Background(), cannedRD[:])
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"cc_eventlog":null,"quote":"` + base64.StdEncoding.EncodeToString(testdata.RawQuote) + `"}`; string(ev) != want {
		t.Fatalf("evidence is not the exact guest-components shape:\n%.120s", ev)
	}
	quote, _, _ := decode(t, ev)
	if err := verify.RawTdxQuote(quote, verifyOpts()); err != nil {
		t.Fatalf("go-tdx-guest verify: %v", err)
	}
	if err := validate.RawTdxQuote(quote, &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{ReportData: cannedRD[:]}}); err != nil {
		t.Fatalf("go-tdx-guest validate: %v", err)
	}
	wrong := cannedRD
	wrong[0] = 9
	if err := validate.RawTdxQuote(quote, &validate.Options{TdQuoteBodyOptions: validate.TdQuoteBodyOptions{ReportData: wrong[:]}}); err == nil {
		t.Fatal("validator accepted other report data")
	}
}

// With any other report data only a forged quote can exist offline: the
// quote carries our padded digest, and the real verifier rejects it.
func TestReportDataBinding(t *testing.T) {
	digest := sha512.Sum384([]byte("runtime data"))
	ev, err := newTest(t, Config{}).Evidence(context.Background(), digest[:])
	if err != nil {
		t.Fatal(err)
	}
	quote, _, _ := decode(t, ev)
	q, err := abi.QuoteToProto(quote)
	if err != nil {
		t.Fatal(err)
	}
	want := attester.FitDigest(digest[:], 64)
	if got := q.(*pb.QuoteV4).TdQuoteBody.ReportData; !bytes.Equal(got, want) {
		t.Fatalf("REPORTDATA %x, want %x", got, want)
	}
	if err := verify.RawTdxQuote(quote, verifyOpts()); err == nil {
		t.Fatal("verifier accepted a quote whose report data was changed after signing")
	}
}

func TestEvidenceErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    *Attester
		rd   []byte
		want error
	}{
		{"report-data-too-long", newTest(t, Config{}), make([]byte, 65), errdefs.ErrInvalidArgument},
		{"wrong-provider", newTest(t, Config{TSM: tsmtest.New("sev_guest\n", quoteFor(t))}), nil, errdefs.ErrFailedPrecondition},
		{"no-configfs-tsm", New(Config{}), nil, errdefs.ErrNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.a.Evidence(context.Background(), tc.rd); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// fakeSysfs emulates the TDX measurement sysfs: writing 48 bytes to an RTMR
// file extends it with SHA-384.
type fakeSysfs struct {
	mu         sync.Mutex
	rtmr       [4][]byte
	mrconfigid []byte
	// failWrites makes the next RTMR writes fail without extending.
	failWrites int
}

func (f *fakeSysfs) ReadFile(name string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name == "mrconfigid" {
		return bytes.Clone(f.mrconfigid), nil
	}
	var i int
	if _, err := fmt.Sscanf(name, "rtmr%d:sha384", &i); err != nil || i < 0 || i > 3 {
		return nil, os.ErrNotExist
	}
	if f.rtmr[i] == nil {
		return make([]byte, 48), nil
	}
	return bytes.Clone(f.rtmr[i]), nil
}

func (f *fakeSysfs) WriteFile(name string, data []byte) error {
	var i int
	if _, err := fmt.Sscanf(name, "rtmr%d:sha384", &i); err != nil || i < 0 || i > 3 || len(data) != 48 {
		return os.ErrInvalid
	}
	f.mu.Lock()
	if f.failWrites > 0 {
		f.failWrites--
		f.mu.Unlock()
		return &os.PathError{Op: "write", Path: name, Err: syscall.EIO}
	}
	f.mu.Unlock()
	cur, _ := f.ReadFile(name)
	h := sha512.New384()
	h.Write(cur)
	h.Write(data)
	f.mu.Lock()
	f.rtmr[i] = h.Sum(nil)
	f.mu.Unlock()
	return nil
}

func TestRegisterMapping(t *testing.T) {
	a := New(Config{})
	for pcr, want := range map[uint64]uint32{0: 4, 1: 1, 7: 1, 2: 2, 6: 2, 8: 3, 15: 3, 16: 4, 17: 4, 23: 4} {
		if got := a.Register(pcr); got != want {
			t.Errorf("Register(%d) = %d, want %d", pcr, got, want)
		}
	}
}

// TestRuntimeMeasurementReplays records AAEL events through the event log
// writer into RTMR3 and checks that the evidence's cc_eventlog replays to
// the register value.
func TestRuntimeMeasurementReplays(t *testing.T) {
	sysfs := &fakeSysfs{}
	dir := t.TempDir()
	a := newTest(t, Config{Measurements: sysfs, AAELPath: filepath.Join(dir, "eventlog")})
	ctx := context.Background()
	l, err := eventlog.Open(ctx, eventlog.Config{Path: filepath.Join(dir, "eventlog"), WALPath: filepath.Join(dir, ".wal"), Measurer: a})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, ev := range []eventlog.Event{
		{Domain: "github.com/confidential-containers", Operation: "PullImage", Content: `{"image":"busybox", "digest":"sha256:aa"}`},
		{Domain: "cova", Operation: "StartContainer", Content: `{"id":"c1"}`},
	} {
		if err := l.Record(ctx, ev, eventlog.DefaultPCR); err != nil {
			t.Fatal(err)
		}
	}
	ev, err := a.Evidence(ctx, cannedRD[:])
	if err != nil {
		t.Fatal(err)
	}
	_, el, ok := decode(t, ev)
	if !ok {
		t.Fatal("cc_eventlog is null although an AAEL exists")
	}
	if !bytes.HasPrefix(el, eventlog.SpecIDHeader[:]) || !bytes.HasSuffix(el, eventlog.EndMarker[:]) {
		t.Fatal("cc_eventlog framing wrong")
	}
	_, entries, err := eventlog.ParseCCEventLog(el)
	if err != nil || len(entries) != 2 {
		t.Fatalf("parsed %d entries, %v", len(entries), err)
	}
	got, err := eventlog.Replay(entries, 4, eventlog.AlgSHA384, nil)
	if err != nil {
		t.Fatal(err)
	}
	rtmr3, err := a.Measurement(ctx, 17)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, rtmr3) || bytes.Equal(rtmr3, make([]byte, 48)) {
		t.Fatalf("replay %x, RTMR3 %x", got, rtmr3)
	}
	if sysfs.rtmr[0] != nil || sysfs.rtmr[1] != nil || sysfs.rtmr[2] != nil {
		t.Fatal("an RTMR other than RTMR3 moved")
	}
}

func TestCCEventlogWithCCEL(t *testing.T) {
	dir := t.TempDir()
	fw, _ := eventlog.NewEntry(eventlog.Event{Domain: "fw", Operation: "Boot", Content: "x"}, 1, eventlog.AlgSHA384)
	ccel := append(append(eventlog.SpecIDHeader[:], fw.Marshal()...), bytes.Repeat([]byte{0xff}, 64)...)
	os.WriteFile(filepath.Join(dir, "CCEL"), ccel, 0o644)
	a := newTest(t, Config{CCELPath: filepath.Join(dir, "CCEL"), AAELPath: filepath.Join(dir, "none")})
	ev, err := a.Evidence(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, el, ok := decode(t, ev)
	want := append(append(eventlog.SpecIDHeader[:], fw.Marshal()...), eventlog.EndMarker[:]...)
	if !ok || !bytes.Equal(el, want) {
		t.Fatalf("cc_eventlog %x\nwant %x", el, want)
	}
	os.WriteFile(filepath.Join(dir, "CCEL"), ccel[:80], 0o644)
	if _, err := a.Evidence(context.Background(), nil); !errors.Is(err, errdefs.ErrDataLoss) {
		t.Fatalf("corrupt CCEL: %v", err)
	}
}

func TestExtendWithoutSysfs(t *testing.T) {
	a := New(Config{})
	if err := a.Extend(context.Background(), 17, make([]byte, 48)); !errors.Is(err, attester.ErrNotSupported) {
		t.Fatalf("err = %v", err)
	}
}

func tdReport(mrconfigid, rtmr3 []byte) func(context.Context, [64]byte) ([]byte, error) {
	return func(context.Context, [64]byte) ([]byte, error) {
		r := make([]byte, TDReportSize)
		copy(r[mrConfigIDOffset:], mrconfigid)
		copy(r[rtmrOffset+3*48:], rtmr3)
		return r, nil
	}
}

func TestBindInitdata(t *testing.T) {
	d := sha512.Sum384([]byte("initdata"))
	d256 := d[:32]
	for _, tc := range []struct {
		name   string
		cfg    Config
		digest []byte
		want   error
	}{
		{"sysfs-match", Config{Measurements: &fakeSysfs{mrconfigid: d[:]}}, d[:], nil},
		{"sysfs-sha256-padded", Config{Measurements: &fakeSysfs{mrconfigid: attester.FitDigest(d256, 48)}}, d256, nil},
		{"sysfs-mismatch", Config{Measurements: &fakeSysfs{mrconfigid: make([]byte, 48)}}, d[:], attester.ErrInitdataMismatch},
		{"tdreport-match", Config{TDReport: tdReport(d[:], nil)}, d[:], nil},
		{"tdreport-mismatch", Config{TDReport: tdReport(nil, nil)}, d[:], attester.ErrInitdataMismatch},
		{"no-interface", Config{}, d[:], errdefs.ErrNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := New(tc.cfg).BindInitdata(context.Background(), tc.digest)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestMeasurementFromTDReport(t *testing.T) {
	want := bytes.Repeat([]byte{3}, 48)
	got, err := New(Config{TDReport: tdReport(nil, want)}).Measurement(context.Background(), 17)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Measurement = %x, %v", got, err)
	}
}

func TestDefaultConfigAAELPath(t *testing.T) {
	cfg := DefaultConfig(func(k string) (string, bool) {
		if k == "AAEL_PATH" {
			return "/tmp/x", true
		}
		return "", false
	})
	if cfg.AAELPath != "/tmp/x" || !strings.HasSuffix(cfg.CCELPath, "CCEL") {
		t.Fatalf("cfg = %+v", cfg)
	}
}

// TestExtendFailureRollsBack injects an RTMR write failure: the record
// fails, no write-ahead file is left (so a restart does not measure the
// failed event after all), RTMR3 and the log are unchanged, and the next
// record replays.
func TestExtendFailureRollsBack(t *testing.T) {
	sysfs := &fakeSysfs{}
	dir := t.TempDir()
	a := newTest(t, Config{Measurements: sysfs, AAELPath: filepath.Join(dir, "eventlog")})
	ctx := context.Background()
	cfg := eventlog.Config{Path: filepath.Join(dir, "eventlog"), WALPath: filepath.Join(dir, ".wal"), Measurer: a}
	l, err := eventlog.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Record(ctx, eventlog.Event{Domain: "cova", Operation: "One", Content: "1"}, eventlog.DefaultPCR); err != nil {
		t.Fatal(err)
	}
	before, _ := a.Measurement(ctx, eventlog.DefaultPCR)
	sysfs.failWrites = 1
	if err := l.Record(ctx, eventlog.Event{Domain: "cova", Operation: "Two", Content: "2"}, eventlog.DefaultPCR); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Record with a failing RTMR write = %v", err)
	}
	if _, err := os.Stat(cfg.WALPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("write-ahead file left behind: %v", err)
	}
	if after, _ := a.Measurement(ctx, eventlog.DefaultPCR); !bytes.Equal(after, before) {
		t.Fatal("RTMR3 moved")
	}
	l.Close()
	// A restart finds nothing to recover and the failed event stays out.
	l, err = eventlog.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Record(ctx, eventlog.Event{Domain: "cova", Operation: "Three", Content: "3"}, eventlog.DefaultPCR); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(cfg.Path)
	entries, err := eventlog.Parse(b)
	if err != nil || len(entries) != 2 {
		t.Fatalf("log has %d entries, %v", len(entries), err)
	}
	got, _ := eventlog.Replay(entries, 4, eventlog.AlgSHA384, nil)
	if rtmr3, _ := a.Measurement(ctx, eventlog.DefaultPCR); !bytes.Equal(got, rtmr3) {
		t.Fatalf("replay %x, RTMR3 %x", got, rtmr3)
	}
}
