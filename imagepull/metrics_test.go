package imagepull

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/test/regtest"
)

// syncBuffer is a bytes.Buffer safe for concurrent log writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) records(t *testing.T) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.b.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

// parseExposition checks Prometheus text format 0.0.4 as WritePrometheus
// writes it (HELP and TYPE before each sample, no labels) and returns the
// samples by name.
func parseExposition(t *testing.T, text string) map[string]float64 {
	t.Helper()
	samples := map[string]float64{}
	typed := map[string]string{}
	helped := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "# HELP "):
			if len(f) < 4 {
				t.Fatalf("HELP without text: %q", line)
			}
			helped[f[2]] = true
		case strings.HasPrefix(line, "# TYPE "):
			if len(f) != 4 || (f[3] != "counter" && f[3] != "gauge") {
				t.Fatalf("bad TYPE line %q", line)
			}
			typed[f[2]] = f[3]
		default:
			if len(f) != 2 {
				t.Fatalf("bad sample line %q", line)
			}
			name := f[0]
			if !strings.HasPrefix(name, MetricsPrefix) || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz_") != "" {
				t.Fatalf("bad metric name %q", name)
			}
			if !helped[name] || typed[name] == "" {
				t.Fatalf("%s: sample before its HELP/TYPE", name)
			}
			if typed[name] == "counter" && !strings.HasSuffix(name, "_total") {
				t.Fatalf("counter %s does not end in _total", name)
			}
			if _, dup := samples[name]; dup {
				t.Fatalf("%s twice", name)
			}
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatalf("%s: value %q: %v", name, f[1], err)
			}
			samples[name] = v
		}
	}
	return samples
}

// TestMetricsAndProgress pulls an image whose layer the registry sends
// slowly (so progress is logged), pulls it again (layers from the store),
// fails a pull, and checks the snapshot, its exposition and the logs.
func TestMetricsAndProgress(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	ctx := context.Background()
	big := make([]byte, 2<<20)
	for i := range big {
		big[i] = byte(i * 13 / 7)
	}
	slow := tarLayer(t, file("big", string(big)))
	small := tarLayer(t, file("small", "s"))
	if _, err := regtest.PushImage(ctx, reg.Host, "test/metrics", "v1", []regtest.Layer{small, slow}); err != nil {
		t.Fatal(err)
	}
	slowPath := "/v2/test/metrics/blobs/" + oci.FromBytes(slow.Blob).String()
	bp := newBadProxy(t, reg.Host)
	bp.hook = func(w http.ResponseWriter, r *http.Request, n int) bool {
		if r.URL.Path != slowPath || r.Method != http.MethodGet {
			return false
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(slow.Blob)))
		w.WriteHeader(http.StatusOK)
		step := len(slow.Blob)/6 + 1
		for off := 0; off < len(slow.Blob); off += step {
			w.Write(slow.Blob[off:min(off+step, len(slow.Blob))])
			w.(http.Flusher).Flush()
			time.Sleep(25 * time.Millisecond)
		}
		return true
	}
	var logs syncBuffer
	p := newPuller(t, bp.host(), func(c *Config) {
		c.ProgressInterval = 20 * time.Millisecond
		c.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	ref := bp.host() + "/test/metrics:v1"
	img, err := p.Pull(ctx, ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Pull(ctx, ref, PullOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Pull(ctx, bp.host()+"/test/metrics:missing", PullOptions{}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing tag: %v", err)
	}

	m := p.Metrics()
	blobBytes := uint64(len(slow.Blob) + len(small.Blob))
	want := Metrics{
		PullsStarted: 3, PullsSucceeded: 2, PullsFailed: 1,
		LayersFetched: 2, LayersFromCache: 2, BytesFetched: blobBytes,
		BytesUnpacked: uint64(img.Stats.UnpackedBytes), StoreLayers: 2,
	}
	got := m
	got.PullSeconds, got.LastPullSeconds, got.RegistryRequests = 0, 0, 0
	if got != want {
		t.Fatalf("metrics\n got %+v\nwant %+v", got, want)
	}
	if m.PullSeconds < 0.1 || m.LastPullSeconds <= 0 || m.LastPullSeconds > m.PullSeconds || m.RegistryRequests < 7 {
		t.Fatalf("seconds/requests: %+v", m)
	}

	var b bytes.Buffer
	m.WritePrometheus(&b)
	samples := parseExposition(t, b.String())
	for name, v := range map[string]float64{
		"pulls_started_total": 3, "pulls_succeeded_total": 2, "pulls_failed_total": 1, "pulls_in_progress": 0,
		"layers_fetched_total": 2, "layers_from_cache_total": 2, "fetched_bytes_total": float64(blobBytes),
		"pull_seconds_total": m.PullSeconds, "store_layers": 2, "layers_failed_total": 0,
	} {
		if got, ok := samples[MetricsPrefix+name]; !ok || got != v {
			t.Errorf("%s: got %v (present %v), want %v", name, got, ok, v)
		}
	}

	var progress, done int
	for _, r := range logs.records(t) {
		switch r["msg"] {
		case "layer progress":
			progress++
			if r["digest"] != oci.FromBytes(slow.Blob).String() || r["size"] != float64(len(slow.Blob)) {
				t.Errorf("progress record %v", r)
			}
			if _, ok := r["mb_per_s"].(float64); !ok {
				t.Errorf("progress without mb_per_s: %v", r)
			}
		case "layer pulled":
			done++
			if r["blob_bytes"].(float64) <= 0 || r["seconds"] == nil || r["mb_per_s"] == nil {
				t.Errorf("layer record %v", r)
			}
		}
	}
	if progress == 0 || done != 2 {
		t.Fatalf("%d progress and %d layer records, want some and 2", progress, done)
	}
}

// TestWritePrometheusFormat checks the exposition of a zero and a full
// snapshot without a registry.
func TestWritePrometheusFormat(t *testing.T) {
	for _, m := range []Metrics{{}, {PullsStarted: 1 << 40, PullSeconds: 1.25, BytesFetched: 123456789012, PullsInProgress: 2}} {
		t.Run(fmt.Sprint(m.PullsStarted), func(t *testing.T) {
			var b bytes.Buffer
			m.WritePrometheus(&b)
			s := parseExposition(t, b.String())
			if len(s) != 16 || s[MetricsPrefix+"pulls_started_total"] != float64(m.PullsStarted) ||
				s[MetricsPrefix+"pull_seconds_total"] != m.PullSeconds || s[MetricsPrefix+"fetched_bytes_total"] != float64(m.BytesFetched) ||
				s[MetricsPrefix+"pulls_in_progress"] != float64(m.PullsInProgress) {
				t.Fatalf("samples %v", s)
			}
			if !strings.HasSuffix(b.String(), "\n") {
				t.Fatal("no final newline")
			}
		})
	}
}
