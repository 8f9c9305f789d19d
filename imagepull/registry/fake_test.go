package registry

import (
	"context"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/reference"
)

// fakeRegistry serves manifests and blobs from maps; hooks let a test
// misbehave per request. It records every request it sees.
type fakeRegistry struct {
	t         *testing.T
	srv       *httptest.Server
	mu        sync.Mutex
	blobs     map[string][]byte // digest -> content
	manifests map[string]fakeManifest
	// hook, if set, may handle the request itself (returns true).
	hook func(w http.ResponseWriter, r *http.Request, n int) bool
	reqs []*http.Request
}

type fakeManifest struct {
	mediaType string
	body      []byte
}

func newFake(t *testing.T, tlsServer bool) *fakeRegistry {
	f := &fakeRegistry{t: t, blobs: map[string][]byte{}, manifests: map[string]fakeManifest{}}
	h := http.HandlerFunc(f.serve)
	f.srv = httptest.NewUnstartedServer(h)
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // expected TLS failures
	if tlsServer {
		f.srv.StartTLS()
	} else {
		f.srv.Start()
	}
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeRegistry) host() string {
	return strings.TrimPrefix(strings.TrimPrefix(f.srv.URL, "http://"), "https://")
}

func (f *fakeRegistry) certPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
}

func (f *fakeRegistry) addBlob(b []byte) oci.Descriptor {
	d := oci.FromBytes(b)
	f.mu.Lock()
	f.blobs[d.String()] = b
	f.mu.Unlock()
	return oci.Descriptor{MediaType: oci.MediaTypeOCILayer, Digest: d, Size: int64(len(b))}
}

func (f *fakeRegistry) addManifest(tag, mt string, body []byte) oci.Digest {
	d := oci.FromBytes(body)
	f.mu.Lock()
	f.manifests[tag] = fakeManifest{mt, body}
	f.manifests[d.String()] = fakeManifest{mt, body}
	f.mu.Unlock()
	return d
}

func (f *fakeRegistry) requests() []*http.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*http.Request(nil), f.reqs...)
}

func (f *fakeRegistry) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.reqs = append(f.reqs, r.Clone(context.Background()))
	n := len(f.reqs)
	hook := f.hook
	f.mu.Unlock()
	if hook != nil && hook(w, r, n) {
		return
	}
	if r.URL.Path == "/v2/" {
		return
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v2/"), "/")
	if len(parts) < 3 {
		http.NotFound(w, r)
		return
	}
	kind, obj := parts[len(parts)-2], parts[len(parts)-1]
	f.mu.Lock()
	defer f.mu.Unlock()
	switch kind {
	case "manifests":
		m, ok := f.manifests[obj]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", m.mediaType)
		w.Header().Set("Docker-Content-Digest", oci.FromBytes(m.body).String())
		w.Write(m.body)
	case "blobs":
		b, ok := f.blobs[obj]
		if !ok {
			http.NotFound(w, r)
			return
		}
		serveRange(w, r, b)
	default:
		http.NotFound(w, r)
	}
}

// serveRange answers a GET with optional "Range: bytes=N-".
func serveRange(w http.ResponseWriter, r *http.Request, b []byte) {
	rng := r.Header.Get("Range")
	if rng == "" {
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Write(b)
		return
	}
	start, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(rng, "bytes="), "-"))
	if err != nil || start >= len(b) {
		w.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return
	}
	w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(b)-1, len(b)))
	w.Header().Set("Content-Length", strconv.Itoa(len(b)-start))
	w.WriteHeader(http.StatusPartialContent)
	w.Write(b[start:])
}

// hijackClose sends a partial response and then resets the connection.
func hijackClose(w http.ResponseWriter, status int, headers map[string]string, body []byte) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("no hijacker")
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(buf, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	for k, v := range headers {
		fmt.Fprintf(buf, "%s: %s\r\n", k, v)
	}
	buf.WriteString("\r\n")
	buf.Write(body)
	buf.Flush()
	conn.Close()
}

// testClient returns a client whose sleeps are recorded, not slept.
func testClient(t *testing.T, cfg Config) (*Client, *[]time.Duration) {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var waits []time.Duration
	c.sleep = func(ctx context.Context, d time.Duration) error {
		mu.Lock()
		waits = append(waits, d)
		mu.Unlock()
		return ctx.Err()
	}
	return c, &waits
}

func insecure(hosts ...string) []Registry {
	var rs []Registry
	for _, h := range hosts {
		rs = append(rs, Registry{Prefix: h, Insecure: true})
	}
	return rs
}

func mustRef(t *testing.T, s string) reference.Reference {
	t.Helper()
	r, err := reference.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
