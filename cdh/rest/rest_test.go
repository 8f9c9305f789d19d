package rest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/attester/aaservice"
	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/protocols/aa"
)

// Both AA forms satisfy the interface as they are.
var (
	_ AttestationAgent = (*aaservice.Service)(nil)
	_ AttestationAgent = aa.NewAttestationAgentServiceClient(nil)
)

// marker stands for secret material that must never reach a log.
const marker = "S3CRET-MARKER-b41d"

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeAA answers with fixed values and records the last request.
type fakeAA struct {
	mu     sync.Mutex
	last   string
	err    error
	result aa.RuntimeMeasurementResult
	panics bool
}

func (f *fakeAA) note(s string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = s
	if f.panics {
		panic("aa boom")
	}
	return f.err
}

func (f *fakeAA) GetToken(_ context.Context, r *aa.GetTokenRequest) (*aa.GetTokenResponse, error) {
	if err := f.note("token " + r.GetTokenType()); err != nil {
		return nil, err
	}
	return &aa.GetTokenResponse{Token: []byte(`{"token":"` + marker + `","tee_keypair":"k"}`)}, nil
}

func (f *fakeAA) GetEvidence(_ context.Context, r *aa.GetEvidenceRequest) (*aa.GetEvidenceResponse, error) {
	if err := f.note(fmt.Sprintf("evidence %q", r.GetRuntimeData())); err != nil {
		return nil, err
	}
	return &aa.GetEvidenceResponse{Evidence: []byte(`{"ev":"` + marker + `"}`)}, nil
}

func (f *fakeAA) GetAdditionalEvidence(_ context.Context, r *aa.GetAdditionalEvidenceRequest) (*aa.GetEvidenceResponse, error) {
	if err := f.note(fmt.Sprintf("additional %q", r.GetRuntimeData())); err != nil {
		return nil, err
	}
	return &aa.GetEvidenceResponse{Evidence: []byte(`{"dev":1}`)}, nil
}

func (f *fakeAA) ExtendRuntimeMeasurement(_ context.Context, r *aa.ExtendRuntimeMeasurementRequest) (*aa.ExtendRuntimeMeasurementResponse, error) {
	if err := f.note(fmt.Sprintf("extend %q %q %q %v", r.GetDomain(), r.GetOperation(), r.GetContent(), r.RegisterIndex != nil)); err != nil {
		return nil, err
	}
	return &aa.ExtendRuntimeMeasurementResponse{Result: f.result}, nil
}

func (f *fakeAA) GetTeeType(context.Context, *aa.GetTeeTypeRequest) (*aa.GetTeeTypeResponse, error) {
	if err := f.note("tee"); err != nil {
		return nil, err
	}
	return &aa.GetTeeTypeResponse{Tee: "tdx"}, nil
}

func (f *fakeAA) GetAdditionalTees(context.Context, *aa.GetAdditionalTeesRequest) (*aa.GetAdditionalTeesResponse, error) {
	return &aa.GetAdditionalTeesResponse{AdditionalTees: []string{"nvidia"}}, nil
}

type fakeRes struct {
	mu   sync.Mutex
	last string
	err  error
}

func (f *fakeRes) GetResource(_ context.Context, uri string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = uri
	if f.err != nil {
		return nil, f.err
	}
	return []byte("res:" + marker), nil
}

// start serves cfg on 127.0.0.1 and returns the base URL and the log.
func start(t *testing.T, cfg Config) (string, *syncBuf) {
	t.Helper()
	logs := &syncBuf{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	addr, err := s.Start(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return "http://" + addr.String(), logs
}

type result struct {
	code  int
	ctype string
	body  string
	allow string
}

func do(t *testing.T, method, u, body string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return result{resp.StatusCode, resp.Header.Get("Content-Type"), string(b), resp.Header.Get("Allow")}
}

func TestRoutes(t *testing.T) {
	fa := &fakeAA{}
	fr := &fakeRes{}
	base, _ := start(t, Config{Feature: FeatureAll, Resources: fr, AA: fa, Version: "v1.2.3"})
	octet := "application/octet-stream"
	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		ctype, wantBody          string
		wantCall                 func() string
		want                     string
	}{
		{"info", "GET", "/info", "", 200, "application/json",
			`{"version":"v1.2.3","tee":"tdx","additional_tees":["nvidia"],"feature":"all"}`, nil, ""},
		{"resource", "GET", "/cdh/resource/default/key/1", "", 200, octet, "res:" + marker,
			func() string { return fr.last }, "kbs:///default/key/1"},
		{"token", "GET", "/aa/token?token_type=kbs", "", 200, octet, `{"token":"` + marker + `","tee_keypair":"k"}`,
			func() string { return fa.last }, "token kbs"},
		{"evidence raw", "GET", "/aa/evidence?runtime_data=a%20b%2Bc", "", 200, octet, `{"ev":"` + marker + `"}`,
			func() string { return fa.last }, `evidence "a b+c"`},
		{"evidence base64", "GET", "/aa/evidence?runtime_data=cmVwb3J0&encoding=base64", "", 200, octet, `{"ev":"` + marker + `"}`,
			func() string { return fa.last }, `evidence "report"`},
		{"evidence empty", "GET", "/aa/evidence?runtime_data=", "", 200, octet, `{"ev":"` + marker + `"}`,
			func() string { return fa.last }, `evidence ""`},
		{"additional evidence", "GET", "/aa/additional-evidence?runtime_data=-_8&encoding=base64", "", 200, octet, `{"dev":1}`,
			func() string { return fa.last }, `additional "\xfb\xff"`},
		{"aael", "POST", "/aa/aael", `{"domain":"d","operation":"o","content":"c d","extra":1}`, 200, "application/json", `{"success":"true"}`,
			func() string { return fa.last }, `extend "d" "o" "c d" false`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := do(t, tc.method, base+tc.path, tc.body)
			if r.code != tc.code || r.ctype != tc.ctype || r.body != tc.wantBody {
				t.Errorf("got %d %q %q, want %d %q %q", r.code, r.ctype, r.body, tc.code, tc.ctype, tc.wantBody)
			}
			if tc.wantCall != nil {
				fa.mu.Lock()
				fr.mu.Lock()
				got := tc.wantCall()
				fr.mu.Unlock()
				fa.mu.Unlock()
				if got != tc.want {
					t.Errorf("backend got %q, want %q", got, tc.want)
				}
			}
		})
	}
}

func TestAAELResults(t *testing.T) {
	for _, tc := range []struct {
		res  aa.RuntimeMeasurementResult
		want string
	}{
		{aa.RuntimeMeasurementResult_OK, `{"success":"true"}`},
		{aa.RuntimeMeasurementResult_NOT_SUPPORTED, `{"success":"false","message": "The platform does not support runtime measurement"}`},
		{aa.RuntimeMeasurementResult_NOT_ENABLED, `{"success":"false","message": "Attestation Agent does not enable eventlog recording"}`},
		{aa.RuntimeMeasurementResult(7), `{"success":"false","message": "Unknown runtime measurement result"}`},
	} {
		t.Run(tc.res.String(), func(t *testing.T) {
			base, _ := start(t, Config{Feature: FeatureAttestation, AA: &fakeAA{result: tc.res}})
			r := do(t, "POST", base+"/aa/aael", `{"domain":"d","operation":"o","content":"c"}`)
			if r.code != 200 || r.body != tc.want {
				t.Errorf("got %d %s", r.code, r.body)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	fa := &fakeAA{}
	fr := &fakeRes{}
	base, _ := start(t, Config{Feature: FeatureAll, Resources: fr, AA: fa})
	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		bodyPrefix, allow        string
	}{
		{"unknown root", "GET", "/foo/bar", "", 404, "URL NOT FOUND", ""},
		{"root only", "GET", "/", "", 404, "URL NOT FOUND", ""},
		{"no second slash", "GET", "/aa", "", 404, "URL NOT FOUND", ""},
		{"unknown aa api", "GET", "/aa/unknown", "", 404, "URL NOT FOUND", ""},
		{"aa trailing slash", "GET", "/aa/token/?token_type=kbs", "", 404, "URL NOT FOUND", ""},
		{"unknown cdh api", "GET", "/cdh/secret/a/b/c", "", 404, "URL NOT FOUND", ""},
		{"cdh no path", "GET", "/cdh/resource", "", 404, "URL NOT FOUND", ""},
		{"info POST", "POST", "/info", "", 405, "Method Not Allowed", "GET"},
		{"token POST", "POST", "/aa/token?token_type=kbs", "", 405, "Method Not Allowed", "GET"},
		{"aael GET", "GET", "/aa/aael", "", 405, "Method Not Allowed", "POST"},
		{"resource DELETE", "DELETE", "/cdh/resource/a/b/c", "", 405, "Method Not Allowed", "GET"},
		{"token missing", "GET", "/aa/token", "", 400, "BAD REQUEST", ""},
		{"token empty", "GET", "/aa/token?token_type=", "", 400, "BAD REQUEST", ""},
		{"token twice", "GET", "/aa/token?token_type=kbs&token_type=coco_as", "", 400, "BAD REQUEST", ""},
		{"bad query", "GET", "/aa/token?token_type=%zz", "", 400, "BAD REQUEST", ""},
		{"evidence missing", "GET", "/aa/evidence", "", 400, "BAD REQUEST", ""},
		{"evidence bad encoding", "GET", "/aa/evidence?runtime_data=x&encoding=hex", "", 400, "BAD REQUEST", ""},
		{"evidence empty encoding", "GET", "/aa/evidence?runtime_data=x&encoding=", "", 400, "BAD REQUEST", ""},
		{"evidence padded base64", "GET", "/aa/evidence?runtime_data=cmVwb3J0MQ%3D%3D&encoding=base64", "", 400, "BAD REQUEST", ""},
		{"evidence std base64", "GET", "/aa/evidence?runtime_data=%2B%2F8&encoding=base64", "", 400, "BAD REQUEST", ""},
		{"evidence trailing bits", "GET", "/aa/evidence?runtime_data=-_9&encoding=base64", "", 400, "BAD REQUEST", ""},
		{"additional missing", "GET", "/aa/additional-evidence?encoding=base64", "", 400, "BAD REQUEST", ""},
		{"query too long", "GET", "/aa/evidence?runtime_data=" + strings.Repeat("a", MaxQueryLen), "", 400, "BAD REQUEST", ""},
		{"resource two segments", "GET", "/cdh/resource/a/b", "", 400, "BAD REQUEST", ""},
		{"resource traversal", "GET", "/cdh/resource/a/../c", "", 400, "BAD REQUEST", ""},
		{"resource escaped slash", "GET", "/cdh/resource/a%2Fb/c/d", "", 400, "BAD REQUEST", ""},
		{"resource trailing slash", "GET", "/cdh/resource/a/b/c/", "", 400, "BAD REQUEST", ""},
		{"aael not JSON", "POST", "/aa/aael", "domain=d", 400, "BAD REQUEST", ""},
		{"aael missing content", "POST", "/aa/aael", `{"domain":"d","operation":"o"}`, 400, "BAD REQUEST", ""},
		{"aael null member", "POST", "/aa/aael", `{"domain":"d","operation":null,"content":"c"}`, 400, "BAD REQUEST", ""},
		{"aael wrong type", "POST", "/aa/aael", `{"domain":"d","operation":"o","content":1}`, 400, "BAD REQUEST", ""},
		{"aael trailing data", "POST", "/aa/aael", `{"domain":"d","operation":"o","content":"c"} {}`, 400, "BAD REQUEST", ""},
		{"aael too big", "POST", "/aa/aael", `{"domain":"d","operation":"o","content":"` + strings.Repeat("c", MaxAAELBody) + `"}`, 413, "body larger", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fa.mu.Lock()
			fa.last = ""
			fa.mu.Unlock()
			r := do(t, tc.method, base+tc.path, tc.body)
			if r.code != tc.code || !strings.HasPrefix(r.body, tc.bodyPrefix) || r.allow != tc.allow {
				t.Errorf("got %d %q allow %q, want %d %q allow %q", r.code, r.body, r.allow, tc.code, tc.bodyPrefix, tc.allow)
			}
			fa.mu.Lock()
			defer fa.mu.Unlock()
			if fa.last != "" {
				t.Errorf("backend called: %s", fa.last)
			}
		})
	}
}

func TestBackendErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code int
	}{
		{"invalid argument class", fmt.Errorf("bad type: %w", errdefs.ErrInvalidArgument), 400},
		{"invalid argument status", status.Error(codes.InvalidArgument, "GetToken: TokenType \"x\""), 400},
		{"not found", fmt.Errorf("no such key: %w", errdefs.ErrNotFound), 500},
		{"plain", errors.New("kbs unreachable"), 500},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fa := &fakeAA{err: tc.err}
			fr := &fakeRes{err: tc.err}
			base, _ := start(t, Config{Feature: FeatureAll, Resources: fr, AA: fa})
			for _, p := range []string{"/cdh/resource/a/b/c", "/aa/token?token_type=kbs", "/aa/evidence?runtime_data=x", "/aa/additional-evidence?runtime_data=x", "/info"} {
				r := do(t, "GET", base+p, "")
				if r.code != tc.code || !strings.Contains(r.body, errText(tc.err)) {
					t.Errorf("%s: got %d %q, want %d with the error text", p, r.code, r.body, tc.code)
				}
			}
			r := do(t, "POST", base+"/aa/aael", `{"domain":"d","operation":"o","content":"c"}`)
			if r.code != tc.code {
				t.Errorf("aael: got %d %q", r.code, r.body)
			}
		})
	}
}

func TestFeatureNotEnabled(t *testing.T) {
	t.Run("resource (the default)", func(t *testing.T) {
		base, _ := start(t, Config{Resources: &fakeRes{}, AA: &fakeAA{}})
		for _, p := range []string{"/aa/token?token_type=kbs", "/aa/evidence?runtime_data=x", "/aa/unknown"} {
			if r := do(t, "GET", base+p, ""); r.code != 404 || r.body != "Attestation Feature Not Enabled" {
				t.Errorf("%s: %d %q", p, r.code, r.body)
			}
		}
		if r := do(t, "POST", base+"/aa/aael", "{}"); r.code != 404 || r.body != "Attestation Feature Not Enabled" {
			t.Errorf("aael: %d %q", r.code, r.body)
		}
		// No tee fields: the AA is not selected even though it is wired.
		if r := do(t, "GET", base+"/info", ""); r.body != `{"version":"unknown","feature":"resource"}` {
			t.Errorf("info: %q", r.body)
		}
		if r := do(t, "GET", base+"/cdh/resource/a/b/c", ""); r.code != 200 {
			t.Errorf("resource: %d %q", r.code, r.body)
		}
	})
	t.Run("attestation", func(t *testing.T) {
		base, _ := start(t, Config{Feature: FeatureAttestation, Resources: &fakeRes{}, AA: &fakeAA{}})
		for _, p := range []string{"/cdh/resource/a/b/c", "/cdh/resource", "/cdh/x/y"} {
			if r := do(t, "GET", base+p, ""); r.code != 404 || r.body != "Resource Feature Not Enabled" {
				t.Errorf("%s: %d %q", p, r.code, r.body)
			}
		}
	})
	t.Run("selected but not wired", func(t *testing.T) {
		base, _ := start(t, Config{Feature: FeatureAll})
		for _, p := range []string{"/cdh/resource/a/b/c", "/aa/token?token_type=kbs"} {
			if r := do(t, "GET", base+p, ""); r.code != 500 || !strings.Contains(r.body, "not configured") {
				t.Errorf("%s: %d %q", p, r.code, r.body)
			}
		}
		if r := do(t, "GET", base+"/info", ""); r.code != 200 || r.body != `{"version":"unknown","feature":"all"}` {
			t.Errorf("info: %d %q", r.code, r.body)
		}
	})
	t.Run("unknown feature", func(t *testing.T) {
		if _, err := New(Config{Feature: "none"}); !errdefs.IsInvalidArgument(err) {
			t.Errorf("New with feature none: %v", err)
		}
	})
}

// TestPeers drives the handler directly with crafted peer addresses: only
// loopback peers are answered.
func TestPeers(t *testing.T) {
	s, err := New(Config{Feature: FeatureAll, Resources: &fakeRes{}, AA: &fakeAA{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		remote string
		code   int
	}{
		{"127.0.0.1:4000", 200},
		{"127.9.9.9:4000", 200},
		{"[::1]:4000", 200},
		{"[::ffff:127.0.0.1]:4000", 200},
		{"10.0.0.1:4000", 403},
		{"192.168.1.5:80", 403},
		{"[fe80::1]:4000", 403},
		{"[::ffff:10.0.0.1]:4000", 403},
		{"0.0.0.0:4000", 403},
		{"", 403},
		{"@", 403},
		{"127.0.0.1", 403}, // no port: not a TCP peer
	} {
		t.Run(tc.remote, func(t *testing.T) {
			for _, p := range []string{"/info", "/cdh/resource/a/b/c", "/aa/token?token_type=kbs", "/nope"} {
				req := httptest.NewRequest("GET", p, nil)
				req.RemoteAddr = tc.remote
				w := httptest.NewRecorder()
				s.ServeHTTP(w, req)
				want := tc.code
				if want == 200 && p == "/nope" {
					want = 404
				}
				if w.Code != want {
					t.Errorf("%s from %q: %d, want %d", p, tc.remote, w.Code, want)
				}
				if want == 403 && w.Body.String() != "Forbidden" {
					t.Errorf("body %q", w.Body.String())
				}
			}
		})
	}
}

func TestPanicRecovered(t *testing.T) {
	fa := &fakeAA{panics: true}
	base, logs := start(t, Config{Feature: FeatureAttestation, AA: fa})
	if r := do(t, "GET", base+"/aa/token?token_type=kbs", ""); r.code != 500 || r.body != "internal error" {
		t.Errorf("panic: %d %q", r.code, r.body)
	}
	fa.mu.Lock()
	fa.panics = false
	fa.mu.Unlock()
	if r := do(t, "GET", base+"/aa/token?token_type=kbs", ""); r.code != 200 {
		t.Errorf("after panic: %d %q", r.code, r.body)
	}
	if !strings.Contains(logs.String(), "panic in REST handler") {
		t.Error("panic not logged")
	}
}

// TestNoSecretsInLogs: resources, tokens and evidence (all carrying the
// marker) are answered and refused without the marker reaching the log.
func TestNoSecretsInLogs(t *testing.T) {
	fa := &fakeAA{}
	fr := &fakeRes{}
	base, logs := start(t, Config{Feature: FeatureAll, Resources: fr, AA: fa})
	paths := []string{"/cdh/resource/a/b/c", "/aa/token?token_type=kbs", "/aa/evidence?runtime_data=" + marker, "/aa/additional-evidence?runtime_data=" + marker, "/info"}
	for _, p := range paths {
		if r := do(t, "GET", base+p, ""); r.code != 200 || (p != "/info" && p != "/aa/additional-evidence?runtime_data="+marker && !strings.Contains(r.body, marker)) {
			t.Fatalf("%s: %d %q", p, r.code, r.body)
		}
	}
	do(t, "POST", base+"/aa/aael", `{"domain":"d","operation":"o","content":"`+marker+`"}`)
	do(t, "GET", base+"/aa/evidence?encoding=hex&runtime_data="+marker, "")
	fa.mu.Lock()
	fa.err = errors.New("backend down")
	fa.mu.Unlock()
	fr.mu.Lock()
	fr.err = errors.New("backend down")
	fr.mu.Unlock()
	for _, p := range paths {
		do(t, "GET", base+p, "")
	}
	l := logs.String()
	if !strings.Contains(l, "REST request failed") || !strings.Contains(l, "route=/aa/token") {
		t.Fatalf("expected request lines in the log:\n%s", l)
	}
	if strings.Contains(l, marker) {
		t.Errorf("secret in log:\n%s", l)
	}
}

// TestInProcessAA serves the real in-process AA (sample attester) behind
// the REST API: its errdefs classes map as ttrpc statuses do.
func TestInProcessAA(t *testing.T) {
	svc, err := aaservice.New(aaservice.Options{Primary: sample.New()})
	if err != nil {
		t.Fatal(err)
	}
	base, _ := start(t, Config{Feature: FeatureAttestation, AA: svc, Version: "v0"})
	if r := do(t, "GET", base+"/info", ""); r.code != 200 || r.body != `{"version":"v0","tee":"sample","feature":"attestation"}` {
		t.Errorf("info: %d %q", r.code, r.body)
	}
	if r := do(t, "GET", base+"/aa/evidence?runtime_data=abc", ""); r.code != 200 || !strings.Contains(r.body, "{") {
		t.Errorf("evidence: %d %q", r.code, r.body)
	}
	if r := do(t, "GET", base+"/aa/token?token_type=bogus", ""); r.code != 400 || !strings.Contains(r.body, "TokenType") {
		t.Errorf("bogus token type: %d %q", r.code, r.body)
	}
	if r := do(t, "GET", base+"/aa/token?token_type=kbs", ""); r.code != 500 {
		t.Errorf("token without KBS client: %d %q", r.code, r.body)
	}
	if r := do(t, "POST", base+"/aa/aael", `{"domain":"d","operation":"o","content":"c"}`); r.code != 200 || r.body != aaelNotEnabled {
		t.Errorf("aael: %d %q", r.code, r.body)
	}
}

func TestSplitNth(t *testing.T) {
	for _, tc := range []struct {
		in         string
		n          int
		head, tail string
		ok         bool
	}{
		{"/cdh/resource/default/", 1, "", "/cdh/resource/default/", true},
		{"/cdh/resource/default/", 2, "/cdh", "/resource/default/", true},
		{"/cdh/resource/default/", 3, "/cdh/resource", "/default/", true},
		{"/cdh/resource/default/", 4, "/cdh/resource/default", "/", true},
		{"/cdh/resource/default/", 5, "", "", false},
		{"/aa", 2, "", "", false},
	} {
		t.Run(fmt.Sprint(tc.in, tc.n), func(t *testing.T) {
			h, tl, ok := splitNth(tc.in, tc.n)
			if h != tc.head || tl != tc.tail || ok != tc.ok {
				t.Errorf("got %q %q %v", h, tl, ok)
			}
		})
	}
}

// TestAAELRead: GET /aa/aael (a Cova extension) returns the event log when
// the server has one; without it the route stays POST-only as upstream.
func TestAAELRead(t *testing.T) {
	const logText = "INIT sha256/0000\ngithub.com/cova-project/cova StartContainer {}\n"
	base, _ := start(t, Config{Feature: FeatureAttestation, AA: &fakeAA{}, EventLog: func() ([]byte, error) { return []byte(logText), nil }})
	if r := do(t, "GET", base+"/aa/aael", ""); r.code != 200 || r.body != logText || !strings.HasPrefix(r.ctype, "text/plain") {
		t.Fatalf("GET /aa/aael = %d %q %q", r.code, r.ctype, r.body)
	}
	off, _ := start(t, Config{Feature: FeatureAttestation, AA: &fakeAA{}, EventLog: func() ([]byte, error) {
		return nil, fmt.Errorf("the event log is not enabled: %w", errdefs.ErrNotFound)
	}})
	if r := do(t, "GET", off+"/aa/aael", ""); r.code != 404 || !strings.Contains(r.body, "not enabled") {
		t.Fatalf("GET /aa/aael with the log off = %d %q", r.code, r.body)
	}
	plain, _ := start(t, Config{Feature: FeatureAttestation, AA: &fakeAA{}})
	if r := do(t, "GET", plain+"/aa/aael", ""); r.code != 405 || r.allow != "POST" {
		t.Fatalf("GET /aa/aael without EventLog = %d allow %q", r.code, r.allow)
	}
	resOnly, _ := start(t, Config{EventLog: func() ([]byte, error) { return []byte(logText), nil }})
	if r := do(t, "GET", resOnly+"/aa/aael", ""); r.code != 404 {
		t.Fatalf("GET /aa/aael with the attestation feature off = %d", r.code)
	}
}
