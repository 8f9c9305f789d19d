package registry

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/net/http/httpproxy"

	"github.com/cova-project/cova/imagepull/oci"
)

func randBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(b)
	return b
}

func manifestFor(cfg oci.Descriptor, layers ...oci.Descriptor) []byte {
	m := oci.Manifest{SchemaVersion: 2, MediaType: oci.MediaTypeOCIManifest, Config: cfg, Layers: layers}
	if m.Layers == nil {
		m.Layers = []oci.Descriptor{}
	}
	b, _ := json.Marshal(m)
	return b
}

// TestBlobMisbehaviour drives OpenBlob against a registry that misbehaves in
// one way per case.
func TestBlobMisbehaviour(t *testing.T) {
	const size = 3 << 20
	blob := randBytes(size)
	half := size / 2
	tests := []struct {
		name string
		// hook misbehaves on request n (1-based over the whole test).
		hook    func(w http.ResponseWriter, r *http.Request, n int) bool
		wantErr error // nil: content must arrive intact
		// check inspects the requests the registry saw.
		check func(t *testing.T, reqs []*http.Request, waits []time.Duration)
	}{
		{
			name: "reset mid-layer resumes with Range",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				if n == 1 {
					hijackClose(w, 200, map[string]string{"Content-Length": fmt.Sprint(size)}, blob[:half])
					return true
				}
				return false
			},
			check: func(t *testing.T, reqs []*http.Request, _ []time.Duration) {
				if len(reqs) != 2 || reqs[1].Header.Get("Range") != fmt.Sprintf("bytes=%d-", half) {
					t.Fatalf("want one resume from %d, got %d requests, Range %q", half, len(reqs), reqs[len(reqs)-1].Header.Get("Range"))
				}
			},
		},
		{
			name: "short body then resume",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				if r.Header.Get("Range") == "" {
					hijackClose(w, 200, map[string]string{"Content-Length": fmt.Sprint(size)}, blob[:size-7])
					return true
				}
				return false
			},
		},
		{
			name: "many resets, each with progress",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				start := 0
				fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-", &start)
				end := min(start+(1<<20)+1, size)
				if end == size {
					return false
				}
				hdr := map[string]string{"Content-Length": fmt.Sprint(size - start)}
				status := 200
				if start > 0 {
					status = 206
					hdr["Content-Range"] = fmt.Sprintf("bytes %d-%d/%d", start, size-1, size)
				}
				hijackClose(w, status, hdr, blob[start:end])
				return true
			},
		},
		{
			name: "resets without progress give up",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				hijackClose(w, 200, map[string]string{"Content-Length": fmt.Sprint(size)}, blob[:10])
				return true
			},
			wantErr: errdefs.ErrUnavailable,
		},
		{
			name: "long body with chunked encoding",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				w.Write(blob)
				w.(http.Flusher).Flush()
				w.Write([]byte("trailing junk"))
				return true
			},
			wantErr: errdefs.ErrFailedPrecondition,
		},
		{
			name: "long Content-Length",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				w.Header().Set("Content-Length", fmt.Sprint(size+5))
				w.Write(append(append([]byte{}, blob...), 1, 2, 3, 4, 5))
				return true
			},
			wantErr: errdefs.ErrFailedPrecondition,
		},
		{
			name: "wrong content of the right size",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				bad := append([]byte{}, blob...)
				bad[size-1] ^= 1
				w.Write(bad)
				return true
			},
			wantErr: errdefs.ErrFailedPrecondition,
		},
		{
			name: "resume answered at the wrong offset",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				if n == 1 {
					hijackClose(w, 200, map[string]string{"Content-Length": fmt.Sprint(size)}, blob[:half])
					return true
				}
				w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", half-100, size-1, size))
				w.WriteHeader(http.StatusPartialContent)
				w.Write(blob[half-100:])
				return true
			},
			wantErr: errdefs.ErrFailedPrecondition,
		},
		{
			name: "resume answered with the wrong total",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				if n == 1 {
					hijackClose(w, 200, map[string]string{"Content-Length": fmt.Sprint(size)}, blob[:half])
					return true
				}
				w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", half, size-1, size+1))
				w.WriteHeader(http.StatusPartialContent)
				w.Write(blob[half:])
				return true
			},
			wantErr: errdefs.ErrFailedPrecondition,
		},
		{
			name: "server ignores Range and sends 200",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				if n == 1 {
					hijackClose(w, 200, map[string]string{"Content-Length": fmt.Sprint(size)}, blob[:half])
					return true
				}
				w.Write(blob)
				return true
			},
		},
		{
			name: "stalled body is abandoned and resumed",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				if n == 1 {
					w.Header().Set("Content-Length", fmt.Sprint(size))
					w.Write(blob[:half])
					w.(http.Flusher).Flush()
					select {
					case <-r.Context().Done():
					case <-time.After(10 * time.Second):
					}
					return true
				}
				return false
			},
			check: func(t *testing.T, reqs []*http.Request, _ []time.Duration) {
				if len(reqs) != 2 || reqs[1].Header.Get("Range") != fmt.Sprintf("bytes=%d-", half) {
					t.Fatalf("want one resume from %d, got %d requests", half, len(reqs))
				}
			},
		},
		{
			name: "429 with Retry-After is honoured",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				if n <= 2 {
					w.Header().Set("Retry-After", "2")
					w.WriteHeader(http.StatusTooManyRequests)
					return true
				}
				return false
			},
			check: func(t *testing.T, reqs []*http.Request, waits []time.Duration) {
				if len(waits) != 2 || waits[0] != 2*time.Second || waits[1] != 2*time.Second {
					t.Fatalf("waits %v, want [2s 2s]", waits)
				}
			},
		},
		{
			name: "429 with a Retry-After beyond the budget fails at once",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				w.Header().Set("Retry-After", "3600")
				w.WriteHeader(http.StatusTooManyRequests)
				return true
			},
			wantErr: errdefs.ErrResourceExhausted,
			check: func(t *testing.T, reqs []*http.Request, waits []time.Duration) {
				if len(reqs) != 1 || len(waits) != 0 {
					t.Fatalf("%d requests, waits %v; want 1 request and no wait", len(reqs), waits)
				}
			},
		},
		{
			name: "503 retried with back-off",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				if n == 1 {
					w.WriteHeader(http.StatusServiceUnavailable)
					return true
				}
				return false
			},
		},
		{
			name: "404",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				w.WriteHeader(http.StatusNotFound)
				fmt.Fprint(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`)
				return true
			},
			wantErr: errdefs.ErrNotFound,
		},
		{
			name: "redirect to plain http is refused",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				http.Redirect(w, r, "http://cdn.invalid/blob", http.StatusTemporaryRedirect)
				return true
			},
			wantErr: errdefs.ErrPermissionDenied,
		},
		{
			name: "redirect to link-local metadata address is refused",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				http.Redirect(w, r, "https://169.254.169.254/latest", http.StatusFound)
				return true
			},
			wantErr: errdefs.ErrPermissionDenied,
		},
		{
			name: "redirect loop is cut",
			hook: func(w http.ResponseWriter, r *http.Request, n int) bool {
				http.Redirect(w, r, r.URL.Path+"?n="+fmt.Sprint(n), http.StatusFound)
				return true
			},
			wantErr: errdefs.ErrUnavailable,
			check: func(t *testing.T, reqs []*http.Request, _ []time.Duration) {
				if len(reqs) != maxRedirects {
					t.Fatalf("%d requests, want %d", len(reqs), maxRedirects)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, false)
			desc := f.addBlob(blob)
			f.hook = tc.hook
			c, waits := testClient(t, Config{Registries: insecure(f.host()), MaxRetryWait: 10 * time.Second, StallTimeout: 300 * time.Millisecond})
			repo := &Repo{c: c, ep: endpoint{host: f.host(), repo: "test/x", insecure: true}}
			got, err := func() ([]byte, error) {
				rc, err := repo.OpenBlob(context.Background(), desc)
				if err != nil {
					return nil, err
				}
				defer rc.Close()
				return io.ReadAll(rc)
			}()
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, blob) {
					t.Fatalf("content differs (%d bytes)", len(got))
				}
			}
			if tc.check != nil {
				tc.check(t, f.requests(), *waits)
			}
		})
	}
}

// TestRedirectToHTTPSHost follows a CDN redirect and checks that the
// registry's credentials are not sent there.
func TestRedirectToHTTPSHost(t *testing.T) {
	blob := randBytes(100 << 10)
	cdn := newFake(t, true)
	desc := cdn.addBlob(blob)
	reg := newFake(t, false)
	reg.hook = func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.Header.Get("Authorization") == "" {
			w.Header().Set("Www-Authenticate", `Basic realm="x"`)
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		http.Redirect(w, r, cdn.srv.URL+"/v2/test/x/blobs/"+desc.Digest.String()+"?sig=secret", http.StatusTemporaryRedirect)
		return true
	}
	auth, _ := ParseAuthFile([]byte(`{"auths":{"` + reg.host() + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("u:p")) + `"}}}`))
	c, _ := testClient(t, Config{Registries: insecure(reg.host()), Auth: auth, ExtraRootCAs: [][]byte{cdn.certPEM()}})
	repo := &Repo{c: c, ep: endpoint{host: reg.host(), repo: "test/x", insecure: true}}
	rc, err := repo.OpenBlob(context.Background(), desc)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("read: %v (%d bytes)", err, len(got))
	}
	for _, r := range cdn.requests() {
		if r.Header.Get("Authorization") != "" {
			t.Fatalf("the CDN received Authorization %q", r.Header.Get("Authorization"))
		}
	}
	if len(cdn.requests()) != 1 {
		t.Fatalf("CDN saw %d requests", len(cdn.requests()))
	}
}

func TestManifest(t *testing.T) {
	cfgDesc := oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: oci.FromBytes([]byte("{}")), Size: 2}
	body := manifestFor(cfgDesc)
	tests := []struct {
		name    string
		ref     func(f *fakeRegistry) string
		hook    func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool
		wantErr error
	}{
		{name: "by tag", ref: func(f *fakeRegistry) string { return f.host() + "/test/x:v1" }},
		{name: "by digest", ref: func(f *fakeRegistry) string { return f.host() + "/test/x@" + oci.FromBytes(body).String() }},
		{
			name: "pinned digest mismatch",
			ref: func(f *fakeRegistry) string {
				return f.host() + "/test/x@" + oci.FromBytes([]byte("other")).String()
			},
			hook: func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					w.Header().Set("Content-Type", oci.MediaTypeOCIManifest)
					w.Write(body)
					return true
				}
			},
			wantErr: errdefs.ErrFailedPrecondition,
		},
		{
			name: "Docker-Content-Digest lies",
			ref:  func(f *fakeRegistry) string { return f.host() + "/test/x:v1" },
			hook: func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					w.Header().Set("Docker-Content-Digest", oci.FromBytes([]byte("other")).String())
					w.Write(body)
					return true
				}
			},
			wantErr: errdefs.ErrFailedPrecondition,
		},
		{
			name: "oversized manifest",
			ref:  func(f *fakeRegistry) string { return f.host() + "/test/x:v1" },
			hook: func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					w.Write(bytes.Repeat([]byte(" "), oci.MaxManifestBytes+1))
					return true
				}
			},
			wantErr: errdefs.ErrInvalidArgument,
		},
		{
			name: "manifest redirect to another host is refused",
			ref:  func(f *fakeRegistry) string { return f.host() + "/test/x:v1" },
			hook: func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					http.Redirect(w, r, "https://elsewhere.invalid/m", http.StatusFound)
					return true
				}
			},
			wantErr: errdefs.ErrPermissionDenied,
		},
		{name: "unknown tag", ref: func(f *fakeRegistry) string { return f.host() + "/test/x:nope" }, wantErr: errdefs.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, false)
			f.addManifest("v1", oci.MediaTypeOCIManifest, body)
			if tc.hook != nil {
				f.hook = tc.hook(f)
			}
			c, _ := testClient(t, Config{Registries: insecure(f.host())})
			_, got, err := c.Resolve(context.Background(), mustRef(t, tc.ref(f)))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Digest != oci.FromBytes(body) || !bytes.Equal(got.Body, body) {
				t.Fatalf("got digest %s", got.Digest)
			}
		})
	}
}

func TestAuthFlows(t *testing.T) {
	cred := base64.StdEncoding.EncodeToString([]byte("alice:s3cret"))
	body := manifestFor(oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: oci.FromBytes(nil), Size: 0})
	tests := []struct {
		name     string
		authFile string // %s = registry host
		hook     func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool
		wantErr  error
	}{
		{
			name:     "bearer token with basic credentials",
			authFile: `{"auths":{"%s/test":{"auth":"` + cred + `"}}}`,
			hook: func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					if r.URL.Path == "/token" {
						u, p, ok := r.BasicAuth()
						if !ok || u != "alice" || p != "s3cret" || r.URL.Query().Get("scope") != "repository:test/x:pull" || r.URL.Query().Get("service") != "fake" {
							w.WriteHeader(http.StatusUnauthorized)
							return true
						}
						fmt.Fprint(w, `{"token":"tok123","expires_in":300}`)
						return true
					}
					if r.Header.Get("Authorization") != "Bearer tok123" {
						w.Header().Set("Www-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="fake",scope="repository:test/x:pull"`, f.host()))
						w.WriteHeader(http.StatusUnauthorized)
						return true
					}
					return false
				}
			},
		},
		{
			name:     "basic auth, credential found by registry",
			authFile: `{"auths":{"http://%s/":{"auth":"` + cred + `"}}}`,
			hook: func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "s3cret" {
						w.Header().Set("Www-Authenticate", `Basic realm="reg"`)
						w.WriteHeader(http.StatusUnauthorized)
						return true
					}
					return false
				}
			},
		},
		{
			name:     "basic auth without credentials",
			authFile: `{"auths":{"other.io":{"auth":"` + cred + `"}}}`,
			hook: func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					w.Header().Set("Www-Authenticate", `Basic realm="reg"`)
					w.WriteHeader(http.StatusUnauthorized)
					return true
				}
			},
			wantErr: errdefs.ErrUnauthenticated,
		},
		{
			name:     "wrong credentials",
			authFile: `{"auths":{"%s":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("alice:wrong")) + `"}}}`,
			hook: func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != "s3cret" {
						w.Header().Set("Www-Authenticate", `Basic realm="reg"`)
						w.WriteHeader(http.StatusUnauthorized)
						return true
					}
					return false
				}
			},
			wantErr: errdefs.ErrUnauthenticated,
		},
		{
			name:     "token realm with a foreign scheme is refused",
			authFile: `{"auths":{}}`,
			hook: func(f *fakeRegistry) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					w.Header().Set("Www-Authenticate", `Bearer realm="ftp://x/token"`)
					w.WriteHeader(http.StatusUnauthorized)
					return true
				}
			},
			wantErr: errdefs.ErrPermissionDenied,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, false)
			f.addManifest("v1", oci.MediaTypeOCIManifest, body)
			f.hook = tc.hook(f)
			af, err := ParseAuthFile([]byte(strings.ReplaceAll(tc.authFile, "%s", f.host())))
			if err != nil {
				t.Fatal(err)
			}
			c, _ := testClient(t, Config{Registries: insecure(f.host()), Auth: af})
			_, _, err = c.Resolve(context.Background(), mustRef(t, f.host()+"/test/x:v1"))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestMirrorsAndBlocked(t *testing.T) {
	body := manifestFor(oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: oci.FromBytes(nil), Size: 0})
	empty := newFake(t, false) // mirror without the image
	good := newFake(t, false)
	good.addManifest("v1", oci.MediaTypeOCIManifest, body)
	c, _ := testClient(t, Config{Registries: []Registry{
		{Prefix: "example.io/team", Location: "nowhere.invalid/x", Mirrors: []Mirror{
			{Location: empty.host() + "/m1", Insecure: true},
			{Location: good.host() + "/m2", Insecure: true},
		}},
		{Prefix: "example.io/team/secret", Blocked: true},
	}})
	repo, f, err := c.Resolve(context.Background(), mustRef(t, "example.io/team/app:v1"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Digest != oci.FromBytes(body) || !strings.Contains(repo.Endpoint(), good.host()+"/m2/app") {
		t.Fatalf("served by %s", repo.Endpoint())
	}
	if n := len(empty.requests()); n != 1 {
		t.Fatalf("first mirror saw %d requests, want 1", n)
	}
	_, _, err = c.Resolve(context.Background(), mustRef(t, "example.io/team/secret/app:v1"))
	if !errors.Is(err, errdefs.ErrPermissionDenied) {
		t.Fatalf("blocked registry: got %v", err)
	}
}

func TestAuthFileLookup(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	af, err := ParseAuthFile([]byte(fmt.Sprintf(`{"auths":{
		"quay.io":{"auth":%q},
		"quay.io/org":{"auth":%q},
		"quay.io/org/repo":{"auth":%q},
		"https://index.docker.io/v1/":{"auth":%q},
		"reg.local:5000":{"username":"u5","password":"p5"}}}`, b64("a:1"), b64("b:2"), b64("c:3"), b64("d:4"))))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ host, repo, user string }{
		{"quay.io", "org/repo", "c"},
		{"quay.io", "org/repo/sub", "c"},
		{"quay.io", "org/other", "b"},
		{"quay.io", "else/x", "a"},
		{"registry-1.docker.io", "library/busybox", "d"},
		{"docker.io", "x/y", "d"},
		{"reg.local:5000", "a", "u5"},
		{"reg.local", "a", ""},
	}
	for _, tc := range tests {
		t.Run(tc.host+"/"+tc.repo, func(t *testing.T) {
			c, ok := af.Lookup(tc.host, tc.repo)
			if c.Username != tc.user || ok != (tc.user != "") {
				t.Fatalf("got %q %v", c.Username, ok)
			}
		})
	}
	for _, bad := range []string{`{"auths":{"x":{"auth":"!!"}}}`, `{"auths":{"x":{"auth":"` + b64("nocolon") + `"}}}`, `{"auths":{"x":{}}}`, `[`} {
		if _, err := ParseAuthFile([]byte(bad)); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("ParseAuthFile(%s): %v", bad, err)
		}
	}
}

func TestParseChallenges(t *testing.T) {
	h := http.Header{}
	h.Add("Www-Authenticate", `Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"`)
	h.Add("Www-Authenticate", `Basic realm="a \"quoted\" realm"`)
	chs := parseChallenges(h)
	if len(chs) != 2 || chs[0].scheme != "bearer" || chs[0].params["realm"] != "https://auth.docker.io/token" ||
		chs[0].params["scope"] != "repository:library/busybox:pull" || chs[1].params["realm"] != `a "quoted" realm` {
		t.Fatalf("%+v", chs)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"5", 5 * time.Second, true},
		{"0", 0, true},
		{"-1", 0, false},
		{"soon", 0, false},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{"", 0, false},
	} {
		d, ok := retryAfter(http.Header{"Retry-After": {tc.v}}, now)
		if d != tc.want || ok != tc.ok {
			t.Errorf("Retry-After %q: got %v %v", tc.v, d, ok)
		}
	}
}

// TestHTTPProxy sends registry traffic through a configured proxy.
func TestHTTPProxy(t *testing.T) {
	body := manifestFor(oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: oci.FromBytes(nil), Size: 0})
	proxy := newFake(t, false) // answers as if it were the registry
	proxy.addManifest("v1", oci.MediaTypeOCIManifest, body)
	c, _ := testClient(t, Config{
		Registries: insecure("registry.invalid:5000"),
		Proxy:      &httpproxy.Config{HTTPProxy: proxy.srv.URL},
	})
	if _, _, err := c.Resolve(context.Background(), mustRef(t, "registry.invalid:5000/test/x:v1")); err != nil {
		t.Fatal(err)
	}
	reqs := proxy.requests()
	if len(reqs) != 1 || reqs[0].Host != "registry.invalid:5000" {
		t.Fatalf("proxy saw %d requests (host %q)", len(reqs), reqs[0].Host)
	}
}

// TestTLSRegistry: an https registry is trusted only through ExtraRootCAs,
// and a certificate failure is final (not retried).
func TestTLSRegistry(t *testing.T) {
	body := manifestFor(oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: oci.FromBytes(nil), Size: 0})
	f := newFake(t, true)
	f.addManifest("v1", oci.MediaTypeOCIManifest, body)
	ref := mustRef(t, f.host()+"/test/x:v1")

	c, waits := testClient(t, Config{})
	_, _, err := c.Resolve(context.Background(), ref)
	if err == nil || !strings.Contains(err.Error(), "certificate") || len(*waits) != 0 {
		t.Fatalf("untrusted certificate: %v (waits %v)", err, *waits)
	}
	c, _ = testClient(t, Config{ExtraRootCAs: [][]byte{f.certPEM()}})
	if _, _, err := c.Resolve(context.Background(), ref); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{ExtraRootCAs: [][]byte{[]byte("not pem")}}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad PEM: %v", err)
	}
}
