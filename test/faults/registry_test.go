package faults

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/registry"
	"github.com/cova-project/cova/test/regtest"
)

// registryPassword is a credential no error may carry.
const registryPassword = "REGISTRY-PASSWORD-MARKER-91d4"

// testImage is one single-layer image held in memory.
type testImage struct {
	layer, config, manifest []byte
	layerDigest             string
	layerSize               int64
}

// makeImage builds an image whose layer holds a file of size pseudo-random
// (incompressible) bytes; the manifest declares the layer's size plus delta
// (a lying manifest when delta is not 0).
func makeImage(t testing.TB, size int, delta int64) *testImage {
	t.Helper()
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{7})
	_, _ = rng.Read(data)
	var raw bytes.Buffer
	tw := tar.NewWriter(&raw)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "data.bin", Mode: 0o644, Size: int64(size)}); err != nil {
		t.Fatal(err)
	}
	_, _ = tw.Write(data)
	_ = tw.Close()
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
	_, _ = zw.Write(raw.Bytes())
	_ = zw.Close()
	img := &testImage{layer: gz.Bytes()}
	img.layerDigest = oci.FromBytes(img.layer).String()
	img.layerSize = int64(len(img.layer))
	type rootfs struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	}
	cfg, _ := json.Marshal(struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		RootFS       rootfs `json:"rootfs"`
	}{oci.DefaultPlatform().Architecture, "linux", rootfs{"layers", []string{oci.FromBytes(raw.Bytes()).String()}}})
	img.config = cfg
	ls := img.layerSize + delta
	m := oci.Manifest{SchemaVersion: 2, MediaType: oci.MediaTypeOCIManifest,
		Config: oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: oci.FromBytes(cfg), Size: int64(len(cfg))},
		Layers: []oci.Descriptor{{MediaType: oci.MediaTypeOCILayerGzip, Digest: oci.FromBytes(img.layer), Size: ls}},
	}
	img.manifest, _ = json.Marshal(m)
	return img
}

// hookFunc may answer a request itself (returning true); n counts the
// requests for the same path so far (1 for the first).
type hookFunc func(w http.ResponseWriter, r *http.Request, n int) bool

// fakeRegistry serves one image as repository test/app, tag v1, and lets a
// hook misbehave.
type fakeRegistry struct {
	img  *testImage
	srv  *httptest.Server
	hook hookFunc
	// auth, when set, requires basic auth with user "cova" and
	// registryPassword.
	auth bool

	mu     sync.Mutex
	counts map[string]int
	ranges []string
}

func startRegistry(t testing.TB, img *testImage, hook hookFunc) *fakeRegistry {
	t.Helper()
	f := &fakeRegistry{img: img, hook: hook, counts: map[string]int{}}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.srv.Start()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeRegistry) host() string { return strings.TrimPrefix(f.srv.URL, "http://") }

func (f *fakeRegistry) ref() string { return f.host() + "/test/app:v1" }

func (f *fakeRegistry) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.counts[r.URL.Path]++
	n := f.counts[r.URL.Path]
	if rg := r.Header.Get("Range"); rg != "" {
		f.ranges = append(f.ranges, rg)
	}
	f.mu.Unlock()
	if f.auth {
		if u, p, ok := r.BasicAuth(); !ok || u != "cova" || p != registryPassword {
			w.Header().Set("WWW-Authenticate", `Basic realm="cova"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	if f.hook != nil && f.hook(w, r, n) {
		return
	}
	switch p := r.URL.Path; {
	case p == "/v2/":
		w.WriteHeader(http.StatusOK)
	case p == "/v2/test/app/manifests/v1" || p == "/v2/test/app/manifests/"+oci.FromBytes(f.img.manifest).String():
		w.Header().Set("Content-Type", oci.MediaTypeOCIManifest)
		w.Header().Set("Docker-Content-Digest", oci.FromBytes(f.img.manifest).String())
		_, _ = w.Write(f.img.manifest)
	case p == "/v2/test/app/blobs/"+oci.FromBytes(f.img.config).String():
		_, _ = w.Write(f.img.config)
	case p == f.blobPath():
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.img.layer))
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeRegistry) blobPath() string { return "/v2/test/app/blobs/" + f.img.layerDigest }

func (f *fakeRegistry) isBlob(r *http.Request) bool { return r.URL.Path == f.blobPath() }

// newPuller is a puller with its store in a temp dir, the fake registry
// allowed over plain HTTP, two attempts per request and a 5 s retry budget.
func newPuller(t testing.TB, host, workDir string, mod func(*imagepull.Config)) *imagepull.Puller {
	t.Helper()
	if workDir == "" {
		// Not t.TempDir: its name comes from the row's and may hold a ','
		// or ':', which overlay options (and so the store) refuse.
		d, err := os.MkdirTemp("", "cova-faults-store-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(d) })
		workDir = d
	}
	cfg := imagepull.Config{
		WorkDir: workDir,
		Registry: registry.Config{
			Registries:   []registry.Registry{{Prefix: host, Insecure: true}},
			Retries:      2,
			MaxRetryWait: 5 * time.Second,
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := imagepull.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// nothingHalfWritten fails unless the store holds no committed layer and
// no staging directory.
func nothingHalfWritten(p *imagepull.Puller) error {
	if ls := p.Store().Layers(); len(ls) != 0 {
		return fmt.Errorf("%d layers committed despite the failure", len(ls))
	}
	ents, err := os.ReadDir(filepath.Join(p.Store().Root(), "staging"))
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	if len(ents) != 0 {
		return fmt.Errorf("staging left behind: %v", ents)
	}
	return nil
}

// hijack writes a raw response head and body prefix, then drops the
// connection (a reset mid-body).
func hijack(w http.ResponseWriter, head string, body []byte) {
	conn, buf, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	_, _ = buf.WriteString(head)
	_, _ = buf.Write(body)
	_ = buf.Flush()
	_ = conn.Close()
}

// pullRow builds a registry row: an image of size bytes (its manifest
// declaring the layer delta bytes longer than it is), a hook, a puller tweak and an optional check of the registry
// client's stats. Error rows also check that nothing was half-written.
func pullRow(name string, want outcome, bound time.Duration, size int, delta int64, classes []error, says []string,
	hook func(f *fakeRegistry) hookFunc, mod func(*imagepull.Config), check func(t *testing.T, f *fakeRegistry, p *imagepull.Puller)) fault {
	return fault{
		area: "registry", name: name, want: want, bound: bound, classes: classes, says: says,
		run: func(ctx context.Context, t *testing.T) error {
			img := makeImage(t, size, delta)
			f := startRegistry(t, img, nil)
			if hook != nil {
				f.hook = hook(f)
			}
			p := newPuller(t, f.host(), "", mod)
			got, err := p.Pull(ctx, f.ref(), imagepull.PullOptions{})
			if err != nil {
				if herr := nothingHalfWritten(p); herr != nil {
					t.Error(herr)
				}
				return err
			}
			if len(got.Layers) != 1 {
				t.Errorf("pulled layers %v", got.Layers)
			}
			if check != nil {
				check(t, f, p)
			}
			p.Release(got)
			return nil
		},
	}
}

func registryFaults() []fault {
	const mib = 1 << 20
	onBlob := func(h func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool) func(*fakeRegistry) hookFunc {
		return func(f *fakeRegistry) hookFunc {
			return func(w http.ResponseWriter, r *http.Request, n int) bool {
				return f.isBlob(r) && h(f, w, r, n)
			}
		}
	}
	return []fault{
		pullRow("429 + Retry-After: 1 on the manifest", retried, 10*time.Second, 64<<10, 0, nil, nil,
			func(f *fakeRegistry) hookFunc {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					if strings.Contains(r.URL.Path, "/manifests/") && n == 1 {
						w.Header().Set("Retry-After", "1")
						w.WriteHeader(http.StatusTooManyRequests)
						return true
					}
					return false
				}
			}, nil,
			func(t *testing.T, f *fakeRegistry, p *imagepull.Puller) {
				if n := p.Registry().Stats.Retries.Load(); n != 1 {
					t.Errorf("retries %d, want 1", n)
				}
			}),
		pullRow("429 storm, Retry-After 3600 beyond the retry budget", clearError, 5*time.Second, 64<<10, 0,
			[]error{errdefs.ErrResourceExhausted}, []string{"HTTP 429", "Retry-After", "budget"},
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				w.Header().Set("Retry-After", "3600")
				w.WriteHeader(http.StatusTooManyRequests)
				return true
			}), nil, nil),
		pullRow("503 on every blob request", clearError, 10*time.Second, 64<<10, 0,
			[]error{errdefs.ErrUnavailable}, []string{"HTTP 503", "blobs/"},
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				w.WriteHeader(http.StatusServiceUnavailable)
				return true
			}), nil, nil),
		pullRow("connection reset mid-layer: Range resume", retried, 15*time.Second, 3*mib, 0, nil, nil,
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				if n != 1 {
					return false
				}
				hijack(w, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", f.img.layerSize), f.img.layer[:f.img.layerSize/2])
				return true
			}), nil,
			func(t *testing.T, f *fakeRegistry, p *imagepull.Puller) {
				f.mu.Lock()
				defer f.mu.Unlock()
				if n := p.Registry().Stats.Resumes.Load(); n != 1 || len(f.ranges) != 1 || f.ranges[0] != fmt.Sprintf("bytes=%d-", f.img.layerSize/2) {
					t.Errorf("resumes %d, Range headers %q", n, f.ranges)
				}
			}),
		pullRow("resets without progress: gives up", clearError, 15*time.Second, 3*mib, 0,
			[]error{errdefs.ErrUnavailable}, []string{"body ended", "attempts"},
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				hijack(w, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", f.img.layerSize), f.img.layer[:100])
				return true
			}), nil, nil),
		pullRow("stalled body: abandoned after 300 ms and resumed", retried, 15*time.Second, 3*mib, 0, nil, nil,
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				if n != 1 {
					return false
				}
				w.Header().Set("Content-Length", fmt.Sprint(f.img.layerSize))
				_, _ = w.Write(f.img.layer[:f.img.layerSize/2])
				w.(http.Flusher).Flush()
				<-r.Context().Done() // never sends the rest
				return true
			}),
			func(c *imagepull.Config) { c.Registry.StallTimeout = 300 * time.Millisecond },
			func(t *testing.T, f *fakeRegistry, p *imagepull.Puller) {
				if n := p.Registry().Stats.Resumes.Load(); n != 1 {
					t.Errorf("resumes %d, want 1", n)
				}
			}),
		pullRow("endless blob body", failClosed, 10*time.Second, 64<<10, 0,
			[]error{errdefs.ErrFailedPrecondition}, []string{"longer than the descriptor size"},
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				_, _ = w.Write(f.img.layer)
				chunk := make([]byte, 32<<10)
				for r.Context().Err() == nil {
					if _, err := w.Write(chunk); err != nil {
						break
					}
				}
				return true
			}), nil, nil),
		pullRow("endless manifest body", clearError, 10*time.Second, 64<<10, 0,
			nil, []string{"manifest"},
			func(f *fakeRegistry) hookFunc {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					if !strings.Contains(r.URL.Path, "/manifests/") {
						return false
					}
					w.Header().Set("Content-Type", oci.MediaTypeOCIManifest)
					chunk := bytes.Repeat([]byte(" "), 32<<10)
					_, _ = w.Write([]byte("{"))
					for r.Context().Err() == nil {
						if _, err := w.Write(chunk); err != nil {
							break
						}
					}
					return true
				}
			}, nil, nil),
		pullRow("Content-Length longer than the descriptor", failClosed, 10*time.Second, 64<<10, 0,
			[]error{errdefs.ErrFailedPrecondition}, []string{"Content-Length", "descriptor size"},
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				w.Header().Set("Content-Length", fmt.Sprint(f.img.layerSize+5))
				_, _ = w.Write(append(append([]byte{}, f.img.layer...), 1, 2, 3, 4, 5))
				return true
			}), nil, nil),
		pullRow("manifest declares the layer 1 KiB shorter than it is", failClosed, 10*time.Second, 64<<10, -1024,
			[]error{errdefs.ErrFailedPrecondition}, []string{"Content-Length", "descriptor size"}, nil, nil, nil),
		pullRow("manifest declares the layer 1 KiB longer than it is", failClosed, 10*time.Second, 64<<10, 1024,
			[]error{errdefs.ErrFailedPrecondition}, []string{"Content-Length", "descriptor size"}, nil, nil, nil),
		pullRow("lying sizes without Content-Length (chunked), 1 KiB short", failClosed, 15*time.Second, 64<<10, 1024,
			[]error{errdefs.ErrInvalidArgument}, []string{"HTTP 416", "out of range"},
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				if r.Header.Get("Range") != "" {
					return false // the resume asks past the end: 416
				}
				_, _ = w.Write(f.img.layer[:len(f.img.layer)/2])
				w.(http.Flusher).Flush() // chunked: no Content-Length to compare
				_, _ = w.Write(f.img.layer[len(f.img.layer)/2:])
				return true
			}), nil, nil),
		// The gzip trailer's check fails before the blob digest is known:
		// refused as an invalid archive.
		pullRow("right size, wrong bytes (last byte flipped)", failClosed, 10*time.Second, 64<<10, 0,
			[]error{errdefs.ErrInvalidArgument}, []string{"invalid layer archive"},
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				bad := bytes.Clone(f.img.layer)
				bad[len(bad)-1] ^= 1
				_, _ = w.Write(bad)
				return true
			}), nil, nil),
		pullRow("redirect loop on the blob", clearError, 10*time.Second, 64<<10, 0,
			[]error{errdefs.ErrUnavailable}, []string{"redirects"},
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				http.Redirect(w, r, r.URL.Path+"?n="+fmt.Sprint(n), http.StatusFound)
				return true
			}), nil, nil),
		pullRow("redirect to plain http on another host", failClosed, 10*time.Second, 64<<10, 0,
			[]error{errdefs.ErrPermissionDenied}, []string{"refused"},
			onBlob(func(f *fakeRegistry, w http.ResponseWriter, r *http.Request, n int) bool {
				http.Redirect(w, r, "http://localhost."+":1"+r.URL.Path, http.StatusFound)
				return true
			}), nil, nil),
		{
			area: "registry", name: "real docker-registry behind a proxy that resets mid-layer", want: retried, bound: 30 * time.Second,
			run: func(ctx context.Context, t *testing.T) error {
				reg := regtest.Start(t)
				img := makeImage(t, 3*mib, 0)
				for _, b := range [][]byte{img.layer, img.config} {
					if _, err := regtest.PushBlob(ctx, reg.Host, "test/app", b); err != nil {
						t.Fatal(err)
					}
				}
				if err := regtest.PushManifest(ctx, reg.Host, "test/app", "v1", oci.MediaTypeOCIManifest, img.manifest); err != nil {
					t.Fatal(err)
				}
				target, _ := url.Parse("http://" + reg.Host)
				rp := httputil.NewSingleHostReverseProxy(target)
				var mu sync.Mutex
				blobGets := 0
				proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/v2/test/app/blobs/"+img.layerDigest {
						mu.Lock()
						blobGets++
						first := blobGets == 1
						mu.Unlock()
						if first {
							hijack(w, fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", img.layerSize), img.layer[:img.layerSize/2])
							return
						}
					}
					rp.ServeHTTP(w, r)
				}))
				t.Cleanup(proxy.Close)
				host := strings.TrimPrefix(proxy.URL, "http://")
				p := newPuller(t, host, "", nil)
				got, err := p.Pull(ctx, host+"/test/app:v1", imagepull.PullOptions{})
				if err != nil {
					return err
				}
				defer p.Release(got)
				if n := p.Registry().Stats.Resumes.Load(); n != 1 {
					t.Errorf("resumes %d, want 1", n)
				}
				return nil
			},
		},
		{
			area: "registry", name: "wrong registry password: 401 and the password not echoed", want: clearError, bound: 10 * time.Second,
			classes: []error{errdefs.ErrUnauthenticated}, says: []string{"401"},
			run: func(ctx context.Context, t *testing.T) error {
				f := startRegistry(t, makeImage(t, 1024, 0), nil)
				f.auth = true
				auth, err := registry.ParseAuthFile([]byte(fmt.Sprintf(`{"auths":{%q:{"username":"cova","password":%q}}}`,
					f.host(), registryPassword+"-wrong")))
				if err != nil {
					t.Fatal(err)
				}
				p := newPuller(t, f.host(), "", func(c *imagepull.Config) { c.Registry.Auth = auth })
				_, err = p.Pull(ctx, f.ref(), imagepull.PullOptions{})
				if herr := nothingHalfWritten(p); herr != nil {
					t.Error(herr)
				}
				return err
			},
		},
	}
}
