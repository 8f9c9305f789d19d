package imagepull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/test/regtest"
)

// badProxy sits in front of the real registry and misbehaves through hook.
type badProxy struct {
	srv  *httptest.Server
	mu   sync.Mutex
	n    map[string]int // requests per path
	hook func(w http.ResponseWriter, r *http.Request, n int) bool
}

func newBadProxy(t *testing.T, target string) *badProxy {
	u, _ := url.Parse("http://" + target)
	rp := httputil.NewSingleHostReverseProxy(u)
	bp := &badProxy{n: map[string]int{}}
	bp.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		bp.mu.Lock()
		bp.n[r.URL.Path]++
		n := bp.n[r.URL.Path]
		hook := bp.hook
		bp.mu.Unlock()
		if hook != nil && hook(w, r, n) {
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(bp.srv.Close)
	return bp
}

func (bp *badProxy) host() string { return strings.TrimPrefix(bp.srv.URL, "http://") }

// fetchUpstream gets the real blob from the registry.
func fetchUpstream(t *testing.T, host, path string) []byte {
	resp, err := http.Get("http://" + host + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

func TestPullThroughMisbehavingRegistry(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	ctx := context.Background()
	big := make([]byte, 4<<20)
	for i := range big {
		big[i] = byte(i * 7 / 5)
	}
	layer := tarGz(t, tarOf(t, file("big", string(big)), file("small", "s")))
	if _, err := regtest.PushImage(ctx, reg.Host, "test/app", "v1", []regtest.Layer{{Blob: layer.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: layer.diffID}}); err != nil {
		t.Fatal(err)
	}
	blobPath := "/v2/test/app/blobs/" + oci.FromBytes(layer.blob).String()
	tests := []struct {
		name    string
		hook    func(t *testing.T) func(w http.ResponseWriter, r *http.Request, n int) bool
		wantErr error
		check   func(t *testing.T, p *Puller)
	}{
		{
			name: "reset mid-layer resumes",
			hook: func(t *testing.T) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					if r.URL.Path != blobPath || n != 1 {
						return false
					}
					hj, _ := w.(http.Hijacker)
					conn, buf, _ := hj.Hijack()
					fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(layer.blob))
					buf.Write(layer.blob[:len(layer.blob)/2])
					buf.Flush()
					conn.Close()
					return true
				}
			},
			check: func(t *testing.T, p *Puller) {
				if p.Registry().Stats.Resumes.Load() != 1 {
					t.Fatalf("resumes %d", p.Registry().Stats.Resumes.Load())
				}
			},
		},
		{
			name: "429 on the manifest with Retry-After",
			hook: func(t *testing.T) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					if strings.Contains(r.URL.Path, "/manifests/") && n == 1 {
						w.Header().Set("Retry-After", "1")
						w.WriteHeader(http.StatusTooManyRequests)
						return true
					}
					return false
				}
			},
			check: func(t *testing.T, p *Puller) {
				if p.Registry().Stats.Retries.Load() != 1 {
					t.Fatalf("retries %d", p.Registry().Stats.Retries.Load())
				}
			},
		},
		{
			name: "tampered blob",
			hook: func(t *testing.T) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					if r.URL.Path != blobPath {
						return false
					}
					b := fetchUpstream(t, reg.Host, blobPath)
					b[len(b)-10] ^= 0xff // inside the gzip trailer region
					w.Write(b)
					return true
				}
			},
			wantErr: errdefs.ErrFailedPrecondition,
		},
		{
			name: "short body every time",
			hook: func(t *testing.T) func(w http.ResponseWriter, r *http.Request, n int) bool {
				return func(w http.ResponseWriter, r *http.Request, n int) bool {
					if r.URL.Path != blobPath {
						return false
					}
					hj, _ := w.(http.Hijacker)
					conn, buf, _ := hj.Hijack()
					fmt.Fprintf(buf, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(layer.blob))
					buf.Write(layer.blob[:100])
					buf.Flush()
					conn.Close()
					return true
				}
			},
			wantErr: errdefs.ErrUnavailable,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bp := newBadProxy(t, reg.Host)
			bp.hook = tc.hook(t)
			p := newPuller(t, bp.host(), func(c *Config) {
				c.Registry.MaxRetryWait = 5 * time.Second
				c.Registry.Retries = 2
			})
			img, err := p.Pull(ctx, bp.host()+"/test/app:v1", PullOptions{})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				if len(p.Store().Layers()) != 0 {
					t.Fatal("layer committed despite the failure")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(img.Layers) != 1 {
				t.Fatalf("layers %v", img.Layers)
			}
			if tc.check != nil {
				tc.check(t, p)
			}
		})
	}
}

// TestForeignURLsNotFollowed: a layer descriptor's urls (ContainerDrip,
// CVE-2020-15157) are ignored; the blob comes from the registry by digest
// and the foreign host never sees a request, let alone credentials.
func TestForeignURLsNotFollowed(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	var foreign atomic.Int32
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		foreign.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer evil.Close()
	layer := tarGz(t, tarOf(t, file("f", "x")))
	ctx := context.Background()
	if _, err := regtest.PushImage(ctx, reg.Host, "test/foreign", "v1", []regtest.Layer{{
		Blob: layer.blob, MediaType: oci.MediaTypeDockerForeignLayer, DiffID: layer.diffID, URLs: []string{evil.URL + "/layer"},
	}}); err != nil {
		t.Fatal(err)
	}
	p := newPuller(t, reg.Host, nil)
	if _, err := p.Pull(ctx, reg.Host+"/test/foreign:v1", PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if foreign.Load() != 0 {
		t.Fatalf("foreign URL contacted %d times", foreign.Load())
	}
}

// TestCancelMidLayer cancels a pull while a layer is downloading; the
// staging directory must be gone and nothing committed or referenced.
func TestCancelMidLayer(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	layer := tarGz(t, tarOf(t, file("f", strings.Repeat("x", 1<<20))))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := regtest.PushImage(ctx, reg.Host, "test/slow", "v1", []regtest.Layer{{Blob: layer.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: layer.diffID}}); err != nil {
		t.Fatal(err)
	}
	bp := newBadProxy(t, reg.Host)
	started := make(chan struct{})
	var once sync.Once
	bp.hook = func(w http.ResponseWriter, r *http.Request, n int) bool {
		if !strings.Contains(r.URL.Path, "/blobs/"+oci.FromBytes(layer.blob).String()) {
			return false
		}
		w.Header().Set("Content-Length", fmt.Sprint(len(layer.blob)))
		w.Write(layer.blob[:len(layer.blob)/2])
		w.(http.Flusher).Flush()
		once.Do(func() { close(started) })
		<-r.Context().Done()
		return true
	}
	p := newPuller(t, bp.host(), nil)
	go func() {
		<-started
		cancel()
	}()
	_, err := p.Pull(ctx, bp.host()+"/test/slow:v1", PullOptions{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(p.Store().Root(), "staging")); len(ents) != 0 {
		t.Fatalf("staging left: %v", ents)
	}
	if len(p.Store().Layers()) != 0 {
		t.Fatal("layer committed")
	}
}
