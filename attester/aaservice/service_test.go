package aaservice

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/protocols/aa"
)

// serve runs a Service built from o on a fresh unix socket and returns a
// client for it.
func serve(t *testing.T, o Options) aa.AttestationAgentServiceService {
	t.Helper()
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return serveService(t, s, filepath.Join(t.TempDir(), "run", "aa", "attestation-agent.sock"))
}

func serveService(t *testing.T, s *Service, sock string) aa.AttestationAgentServiceService {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	l, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- s.ServeListener(ctx, l) }()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() {
		c.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return aa.NewAttestationAgentServiceClient(c)
}

func code(err error) codes.Code { return status.Code(err) }

func TestSampleOverSocket(t *testing.T) {
	ctx := context.Background()
	c := serve(t, Options{Primary: sample.New(), Additional: []attester.Attester{sample.NewDevice()}})
	digest := sha512.Sum384([]byte("runtime data"))

	for _, rd := range [][]byte{digest[:], []byte("short"), nil, bytes.Repeat([]byte{9}, 100)} {
		t.Run(fmt.Sprintf("GetEvidence %d bytes", len(rd)), func(t *testing.T) {
			r, err := c.GetEvidence(ctx, &aa.GetEvidenceRequest{RuntimeData: rd})
			if err != nil {
				t.Fatal(err)
			}
			// RuntimeData is the report data as is: not hashed, not padded.
			if _, err := sample.Verify(r.GetEvidence(), rd); err != nil {
				t.Fatalf("sample verifier rejects: %v", err)
			}
			if _, err := sample.Verify(r.GetEvidence(), append(slices.Clone(rd), 0)); err == nil {
				t.Fatal("verifies for padded report data")
			}
		})
	}
	t.Run("GetAdditionalEvidence", func(t *testing.T) {
		r, err := c.GetAdditionalEvidence(ctx, &aa.GetAdditionalEvidenceRequest{RuntimeData: digest[:]})
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(r.GetEvidence(), &m); err != nil {
			t.Fatalf("%s: %v", r.GetEvidence(), err)
		}
		if len(m) != 1 || m["sampledevice"] == nil {
			t.Fatalf("keys of %s", r.GetEvidence())
		}
		ev, err := sample.Verify(m["sampledevice"], digest[:])
		if err != nil || ev.SVN != "2" {
			t.Fatalf("sampledevice evidence: %v %+v", err, ev)
		}
		if bytes.ContainsAny(r.GetEvidence(), " \n") {
			t.Errorf("not compact: %s", r.GetEvidence())
		}
	})
	t.Run("GetTeeType", func(t *testing.T) {
		r, err := c.GetTeeType(ctx, &aa.GetTeeTypeRequest{})
		if err != nil || r.GetTee() != "sample" {
			t.Fatalf("%v %v", r, err)
		}
	})
	t.Run("GetAdditionalTees", func(t *testing.T) {
		r, err := c.GetAdditionalTees(ctx, &aa.GetAdditionalTeesRequest{})
		if err != nil || !slices.Equal(r.GetAdditionalTees(), []string{"sampledevice"}) {
			t.Fatalf("%v %v", r, err)
		}
	})
	t.Run("GetToken is unimplemented", func(t *testing.T) {
		for _, tt := range []string{"kbs", "coco_as"} {
			_, err := c.GetToken(ctx, &aa.GetTokenRequest{TokenType: tt})
			if code(err) != codes.Unimplemented || !strings.Contains(err.Error(), "issue 5") {
				t.Errorf("%s: %v", tt, err)
			}
		}
		_, err := c.GetToken(ctx, &aa.GetTokenRequest{TokenType: "bogus"})
		if code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "TokenType") {
			t.Errorf("bogus: %v", err)
		}
	})
	t.Run("ExtendRuntimeMeasurement without event log", func(t *testing.T) {
		r, err := c.ExtendRuntimeMeasurement(ctx, &aa.ExtendRuntimeMeasurementRequest{Domain: "d", Operation: "o", Content: "c"})
		if err != nil || r.GetResult() != aa.RuntimeMeasurementResult_NOT_ENABLED {
			t.Fatalf("%v %v", r, err)
		}
	})
	t.Run("BindInitData is not served", func(t *testing.T) {
		_, err := c.BindInitData(ctx, &aa.BindInitDataRequest{Digest: []byte{1}})
		if code(err) != codes.NotFound || !strings.Contains(err.Error(), "/attestation_agent.AttestationAgentService/BindInitData is not supported") {
			t.Fatalf("%v", err)
		}
	})
}

func TestNoAdditionalEvidenceIsEmpty(t *testing.T) {
	c := serve(t, Options{Primary: sample.New()})
	r, err := c.GetAdditionalEvidence(context.Background(), &aa.GetAdditionalEvidenceRequest{RuntimeData: []byte("x")})
	if err != nil || len(r.GetEvidence()) != 0 {
		t.Fatalf("%q %v", r.GetEvidence(), err)
	}
	tees, err := c.GetAdditionalTees(context.Background(), &aa.GetAdditionalTeesRequest{})
	if err != nil || len(tees.GetAdditionalTees()) != 0 {
		t.Fatalf("%v %v", tees, err)
	}
}

type tokenFunc func(context.Context, string) ([]byte, error)

func (f tokenFunc) Token(ctx context.Context, tt string) ([]byte, error) { return f(ctx, tt) }

func TestGetTokenWithGetter(t *testing.T) {
	c := serve(t, Options{Primary: sample.New(), Tokens: tokenFunc(func(_ context.Context, tt string) ([]byte, error) {
		if tt == "coco_as" {
			return nil, fmt.Errorf("no coco_as config: %w", errdefs.ErrFailedPrecondition)
		}
		return []byte(`{"token":"t","tee_keypair":"k"}`), nil
	})})
	r, err := c.GetToken(context.Background(), &aa.GetTokenRequest{TokenType: "kbs"})
	if err != nil || string(r.GetToken()) != `{"token":"t","tee_keypair":"k"}` {
		t.Fatalf("%v %v", r, err)
	}
	_, err = c.GetToken(context.Background(), &aa.GetTokenRequest{TokenType: "coco_as"})
	if code(err) != codes.FailedPrecondition || !strings.HasPrefix(status.Convert(err).Message(), "GetToken: ") {
		t.Fatalf("%v", err)
	}
}

// memRTMR is an attester with SHA-384 registers in memory, mapped like TDX
// (PCR 17 → CC MR 4).
type memRTMR struct {
	mu        sync.Mutex
	regs      map[uint32][]byte
	extendErr error
}

func newMemRTMR() *memRTMR { return &memRTMR{regs: map[uint32][]byte{}} }

func (m *memRTMR) Tee() attester.Tee { return attester.TeeTDX }
func (m *memRTMR) Evidence(_ context.Context, rd []byte) ([]byte, error) {
	return sample.New().Evidence(context.Background(), rd)
}
func (m *memRTMR) Register(pcr uint64) uint32 {
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
func (m *memRTMR) HashAlg() crypto.Hash { return crypto.SHA384 }
func (m *memRTMR) Measurement(_ context.Context, pcr uint64) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v := m.regs[m.Register(pcr)]
	if v == nil {
		v = make([]byte, 48)
	}
	return slices.Clone(v), nil
}
func (m *memRTMR) Extend(ctx context.Context, pcr uint64, d []byte) error {
	if m.extendErr != nil {
		return m.extendErr
	}
	cur, _ := m.Measurement(ctx, pcr)
	h := sha512.New384()
	h.Write(cur)
	h.Write(attester.FitDigest(d, 48))
	m.mu.Lock()
	m.regs[m.Register(pcr)] = h.Sum(nil)
	m.mu.Unlock()
	return nil
}

func openLog(t *testing.T, m attester.RuntimeMeasurer) (*eventlog.Log, string) {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "eventlog")
	l, err := eventlog.Open(context.Background(), eventlog.Config{Path: p, WALPath: filepath.Join(dir, ".wal"), Measurer: m})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, p
}

func TestExtendRuntimeMeasurement(t *testing.T) {
	ctx := context.Background()
	m := newMemRTMR()
	elog, path := openLog(t, m)
	c := serve(t, Options{Primary: m, EventLog: elog})

	pcr8 := uint64(8)
	reqs := []*aa.ExtendRuntimeMeasurementRequest{
		{Domain: "github.com/confidential-containers", Operation: "PullImage", Content: `{"image":"docker.io/library/busybox:latest", "digest":"sha256:abc"}`},
		{Domain: "cova", Operation: "StartContainer", Content: "id=1"},
		{Domain: "cova", Operation: "Config", Content: "x", RegisterIndex: &pcr8},
	}
	for _, r := range reqs {
		resp, err := c.ExtendRuntimeMeasurement(ctx, r)
		if err != nil || resp.GetResult() != aa.RuntimeMeasurementResult_OK {
			t.Fatalf("%v %v", resp, err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := eventlog.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 3 {
		t.Fatalf("%d entries", len(entries))
	}
	for i, e := range entries {
		ev, ok, err := e.AAEL()
		if err != nil || !ok || ev.Domain != reqs[i].Domain || ev.Operation != reqs[i].Operation || ev.Content != reqs[i].Content {
			t.Errorf("entry %d: %+v %v %v", i, ev, ok, err)
		}
	}
	if entries[0].Register != 4 || entries[2].Register != 3 {
		t.Errorf("registers %d, %d; want 4 (default PCR 17) and 3 (PCR 8)", entries[0].Register, entries[2].Register)
	}
	for _, tc := range []struct {
		pcr uint64
		reg uint32
	}{{17, 4}, {8, 3}} {
		want, err := eventlog.Replay(entries, tc.reg, eventlog.AlgSHA384, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := m.Measurement(ctx, tc.pcr)
		if !bytes.Equal(got, want) {
			t.Errorf("register %d = %x, replay %x", tc.reg, got, want)
		}
	}

	t.Run("invalid events", func(t *testing.T) {
		for _, r := range []*aa.ExtendRuntimeMeasurementRequest{
			{Domain: "has space", Operation: "o", Content: "c"},
			{Domain: "d", Operation: "", Content: "c"},
			{Domain: "d", Operation: "o", Content: "two\nlines"},
		} {
			_, err := c.ExtendRuntimeMeasurement(ctx, r)
			if code(err) != codes.InvalidArgument {
				t.Errorf("%+v: %v", r, err)
			}
		}
		b2, _ := os.ReadFile(path)
		if !bytes.Equal(b, b2) {
			t.Error("rejected event changed the log")
		}
	})
}

func TestExtendNotSupported(t *testing.T) {
	ctx := context.Background()
	req := &aa.ExtendRuntimeMeasurementRequest{Domain: "d", Operation: "o", Content: "c"}
	t.Run("attester without registers", func(t *testing.T) {
		elog, _ := openLog(t, newMemRTMR())
		c := serve(t, Options{Primary: sample.New(), EventLog: elog})
		r, err := c.ExtendRuntimeMeasurement(ctx, req)
		if err != nil || r.GetResult() != aa.RuntimeMeasurementResult_NOT_SUPPORTED {
			t.Fatalf("%v %v", r, err)
		}
	})
	t.Run("registers not extendable at run time", func(t *testing.T) {
		m := newMemRTMR()
		m.extendErr = fmt.Errorf("no sysfs: %w", attester.ErrNotSupported)
		elog, _ := openLog(t, m)
		c := serve(t, Options{Primary: m, EventLog: elog})
		r, err := c.ExtendRuntimeMeasurement(ctx, req)
		if err != nil || r.GetResult() != aa.RuntimeMeasurementResult_NOT_SUPPORTED {
			t.Fatalf("%v %v", r, err)
		}
	})
}

// failing is an attester whose evidence fails with err.
type failing struct{ err error }

func (f failing) Tee() attester.Tee { return attester.TeeSNP }
func (f failing) Evidence(context.Context, []byte) ([]byte, error) {
	if f.err == nil {
		panic("boom")
	}
	return nil, f.err
}

func TestErrorCodes(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		err  error
		want codes.Code
	}{
		{"invalid report data", fmt.Errorf("report data: 65 bytes: %w", errdefs.ErrInvalidArgument), codes.InvalidArgument},
		{"device missing", fmt.Errorf("open: %w", errdefs.ErrNotFound), codes.NotFound},
		{"unclassified", errors.New("ioctl failed"), codes.Internal},
		{"deadline", fmt.Errorf("quote: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{"panic", nil, codes.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := serve(t, Options{Primary: failing{tc.err}})
			_, err := c.GetEvidence(ctx, &aa.GetEvidenceRequest{RuntimeData: []byte{1}})
			if code(err) != tc.want {
				t.Fatalf("code %v (%v), want %v", code(err), err, tc.want)
			}
			if !strings.HasPrefix(status.Convert(err).Message(), "GetEvidence: ") {
				t.Errorf("message %q does not name the rpc", status.Convert(err).Message())
			}
		})
	}
	t.Run("additional attester error", func(t *testing.T) {
		c := serve(t, Options{Primary: sample.New(), Additional: []attester.Attester{failing{fmt.Errorf("x: %w", errdefs.ErrUnavailable)}}})
		_, err := c.GetAdditionalEvidence(ctx, &aa.GetAdditionalEvidenceRequest{})
		if code(err) != codes.Unavailable {
			t.Fatalf("%v", err)
		}
	})
}

func TestNew(t *testing.T) {
	if _, err := New(Options{}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("no primary: %v", err)
	}
	if _, err := New(Options{Primary: sample.New(), Additional: []attester.Attester{sample.NewDevice(), sample.NewDevice()}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("duplicate additional: %v", err)
	}
	if _, err := New(Options{Primary: sample.New(), Additional: []attester.Attester{nil}}); !errdefs.IsInvalidArgument(err) {
		t.Errorf("nil additional: %v", err)
	}
}

func TestListen(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "a", "b", "aa.sock")
	l, err := Listen("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v", fi.Mode(), err)
	}
	// A second Listen replaces the stale socket (a crashed agent's).
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen(sock)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	l2.Close()

	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		addr string
		want func(error) bool
	}{
		{"unix://" + file, errdefs.IsAlreadyExists},
		{"relative.sock", errdefs.IsInvalidArgument},
		{"vsock://3:1024", errdefs.IsInvalidArgument},
	} {
		if _, err := Listen(tc.addr); !tc.want(err) {
			t.Errorf("%s: %v", tc.addr, err)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "keep" {
		t.Error("Listen removed a regular file")
	}
	if p, err := SocketPath(DefaultAddr); err != nil || p != DefaultSocket {
		t.Errorf("SocketPath(DefaultAddr) = %q, %v", p, err)
	}
}

func TestServeStops(t *testing.T) {
	s, err := New(Options{Primary: sample.New(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "aa.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, "unix://"+sock) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			c := ttrpc.NewClient(conn)
			r, err := aa.NewAttestationAgentServiceClient(c).GetTeeType(ctx, &aa.GetTeeTypeRequest{})
			c.Close()
			if err != nil || r.GetTee() != "sample" {
				t.Fatalf("%v %v", r, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server did not listen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestConfig(t *testing.T) {
	c, err := ParseConfig([]byte(`
[token_configs.kbs]
url = "http://10.0.2.2:8080"
cert = "PEM"
[eventlog_config]
enable_eventlog = true
init_pcr = 16
[unknown]
x = 1
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.TokenConfigs.KBS == nil || c.TokenConfigs.KBS.URL != "http://10.0.2.2:8080" || c.TokenConfigs.KBS.Cert != "PEM" ||
		c.TokenConfigs.CoCoAS != nil || !c.Eventlog.Enable || c.Eventlog.InitPCR != 16 || c.Log.Level != "info" {
		t.Errorf("%+v", c)
	}
	d, err := ParseConfig(nil)
	if err != nil || d.Eventlog.Enable || d.Eventlog.InitPCR != 17 || d.TokenConfigs.KBS != nil {
		t.Errorf("empty file: %+v %v", d, err)
	}
	for _, bad := range []string{
		"[token_configs.kbs]\ncert = \"x\"\n",
		"[eventlog_config]\ninit_pcr = 0\n",
		"[eventlog_config]\nenable_eventlog = \"yes\"\n",
		"not toml",
	} {
		if _, err := ParseConfig([]byte(bad)); !errdefs.IsInvalidArgument(err) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if c, err := LoadConfig(filepath.Join(t.TempDir(), "missing.toml")); err != nil || c.Eventlog.InitPCR != 17 {
		t.Errorf("missing file: %+v %v", c, err)
	}
}

func TestNewAttester(t *testing.T) {
	env := func(m map[string]string) attester.Env {
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	for _, tc := range []struct {
		tee  attester.Tee
		env  map[string]string
		want attester.Tee
		err  func(error) bool
	}{
		{attester.TeeSample, nil, attester.TeeSample, nil},
		{attester.TeeSampleDevice, nil, attester.TeeSampleDevice, nil},
		{attester.TeeTPM, map[string]string{"AA_TPM_DEVICE": "/nonexistent/tpm"}, "", errdefs.IsNotFound},
		{attester.TeeAzSNPvTPM, nil, attester.TeeAzSNPvTPM, nil},
		{attester.TeeAzTDXvTPM, nil, attester.TeeAzTDXvTPM, nil},
		{attester.TeeSE, nil, attester.TeeSE, nil},
		{attester.TeeCSV, nil, "", errdefs.IsNotImplemented},
	} {
		t.Run(string(tc.tee), func(t *testing.T) {
			a, err := NewAttester(tc.tee, env(tc.env))
			if tc.err != nil {
				if !tc.err(err) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil || a.Tee() != tc.want {
				t.Fatalf("%v %v", a, err)
			}
		})
	}
}

func BenchmarkSampleGetEvidence(b *testing.B) {
	s, err := New(Options{Primary: sample.New()})
	if err != nil {
		b.Fatal(err)
	}
	d := sha512.Sum384([]byte("x"))
	req := &aa.GetEvidenceRequest{RuntimeData: d[:]}
	ctx := context.Background()
	for b.Loop() {
		if _, err := s.GetEvidence(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
}

func TestStart(t *testing.T) {
	req := &aa.ExtendRuntimeMeasurementRequest{Domain: "cova", Operation: "Boot", Content: "x"}
	for _, tc := range []struct {
		name    string
		primary attester.Attester
		enable  bool
		want    aa.RuntimeMeasurementResult
		logged  bool
	}{
		{"registers, event log on", newMemRTMR(), true, aa.RuntimeMeasurementResult_OK, true},
		{"registers, event log off", newMemRTMR(), false, aa.RuntimeMeasurementResult_NOT_ENABLED, false},
		{"no registers, event log on", sample.New(), true, aa.RuntimeMeasurementResult_NOT_SUPPORTED, false},
		{"no registers, event log off", sample.New(), false, aa.RuntimeMeasurementResult_NOT_ENABLED, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			sock := filepath.Join(dir, "sock", "aa.sock")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cfg := DefaultConfig()
			cfg.Eventlog.Enable = tc.enable
			_, err := Start(ctx, StartOptions{
				Primary: tc.primary, Config: cfg, Addr: "unix://" + sock,
				EventLogPath: filepath.Join(dir, "el", "eventlog"), WALPath: filepath.Join(dir, "el", ".wal"),
			})
			if err != nil {
				t.Fatal(err)
			}
			conn, err := net.Dial("unix", sock) // listening when Start returns
			if err != nil {
				t.Fatal(err)
			}
			c := ttrpc.NewClient(conn)
			defer c.Close()
			r, err := aa.NewAttestationAgentServiceClient(c).ExtendRuntimeMeasurement(ctx, req)
			if err != nil || r.GetResult() != tc.want {
				t.Fatalf("%v %v, want %v", r, err, tc.want)
			}
			b, err := os.ReadFile(filepath.Join(dir, "el", "eventlog"))
			if tc.logged {
				entries, perr := eventlog.Parse(b)
				if err != nil || perr != nil || len(entries) != 1 {
					t.Fatalf("event log: %v %v %d", err, perr, len(entries))
				}
			} else if !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("event log created: %v", err)
			}
			cancel()
			deadline := time.Now().Add(5 * time.Second)
			for {
				if _, err := os.Lstat(sock); errors.Is(err, fs.ErrNotExist) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("socket not removed after cancel")
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

// TestEventlogPCRForTPM: TPM-backed attesters log on PCR 23 unless aa.toml
// says otherwise, and a configured PCR 17-22 (locality 4 only) is refused.
func TestEventlogPCRForTPM(t *testing.T) {
	parse := func(t *testing.T, doc string) EventlogConfig {
		t.Helper()
		c, err := ParseConfig([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return c.Eventlog
	}
	cases := []struct {
		name string
		doc  string
		tee  attester.Tee
		want uint64
		err  bool
	}{
		{"tdx default", "", attester.TeeTDX, 17, false},
		{"sample default", "", attester.TeeSample, 17, false},
		{"tpm default", "", attester.TeeTPM, 23, false},
		{"azure snp default", "", attester.TeeAzSNPvTPM, 23, false},
		{"azure tdx default", "", attester.TeeAzTDXvTPM, 23, false},
		{"tpm explicit 23", "[eventlog_config]\ninit_pcr = 23\n", attester.TeeTPM, 23, false},
		{"tpm explicit 16", "[eventlog_config]\ninit_pcr = 16\n", attester.TeeTPM, 16, false},
		{"tpm explicit 17", "[eventlog_config]\ninit_pcr = 17\n", attester.TeeTPM, 0, true},
		{"tpm explicit 22", "[eventlog_config]\ninit_pcr = 22\n", attester.TeeTPM, 0, true},
		{"tdx explicit 17", "[eventlog_config]\ninit_pcr = 17\n", attester.TeeTDX, 17, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parse(t, tc.doc).eventlogPCR(tc.tee)
			if tc.err {
				if err == nil || !strings.Contains(err.Error(), "locality") {
					t.Fatalf("got %d, %v; want a locality error", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}
