package imagepull

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"sync/atomic"
	"time"
)

// pullMetrics are the Puller's live counters.
type pullMetrics struct {
	started, succeeded, failed atomic.Uint64
	inProgress                 atomic.Int64
	layersFetched, layersCache atomic.Uint64
	layersDecrypted            atomic.Uint64
	layersFailed               atomic.Uint64
	bytesFetched, bytesUnpack  atomic.Uint64
	nanos                      atomic.Uint64 // wall time of finished pulls
	lastNanos                  atomic.Uint64 // wall time of the last successful pull
}

// Metrics is a snapshot of a Puller's counters since it was created.
type Metrics struct {
	// Pulls: started, finished successfully, failed; in progress now.
	PullsStarted, PullsSucceeded, PullsFailed uint64
	PullsInProgress                           int64
	// LayersFetched were downloaded and committed; LayersFromCache were
	// already in the store; LayersDecrypted is the encrypted part of
	// LayersFetched; LayersFailed were started and not committed.
	LayersFetched, LayersFromCache, LayersDecrypted, LayersFailed uint64
	// BytesFetched counts layer blob bytes read from registries (also of
	// layers that then failed); BytesUnpacked the uncompressed content of
	// committed layers.
	BytesFetched, BytesUnpacked uint64
	// PullSeconds is the wall time of all finished pulls;
	// LastPullSeconds that of the last successful one.
	PullSeconds, LastPullSeconds float64
	// Registry requests, retries and resumed blob downloads.
	RegistryRequests, RegistryRetries, RegistryResumes uint64
	// StoreLayers is the number of layers in the store now.
	StoreLayers int
}

// Metrics returns a snapshot of the Puller's counters.
func (p *Puller) Metrics() Metrics {
	m := &p.metrics
	return Metrics{
		PullsStarted:     m.started.Load(),
		PullsSucceeded:   m.succeeded.Load(),
		PullsFailed:      m.failed.Load(),
		PullsInProgress:  m.inProgress.Load(),
		LayersFetched:    m.layersFetched.Load(),
		LayersFromCache:  m.layersCache.Load(),
		LayersDecrypted:  m.layersDecrypted.Load(),
		LayersFailed:     m.layersFailed.Load(),
		BytesFetched:     m.bytesFetched.Load(),
		BytesUnpacked:    m.bytesUnpack.Load(),
		PullSeconds:      time.Duration(m.nanos.Load()).Seconds(),
		LastPullSeconds:  time.Duration(m.lastNanos.Load()).Seconds(),
		RegistryRequests: nonNeg(p.reg.Stats.Requests.Load()),
		RegistryRetries:  nonNeg(p.reg.Stats.Retries.Load()),
		RegistryResumes:  nonNeg(p.reg.Stats.Resumes.Load()),
		StoreLayers:      len(p.store.Layers()),
	}
}

func nonNeg(v int64) uint64 { return uint64(max(v, 0)) }

// MetricsPrefix starts every metric name WritePrometheus writes.
const MetricsPrefix = "cova_imagepull_"

// WritePrometheus writes m in the Prometheus text exposition format
// (version 0.0.4), every name starting with MetricsPrefix, so the agent can
// append it to its GetMetrics answer. Write errors of w are ignored: write
// into a buffer.
func (m *Metrics) WritePrometheus(w io.Writer) {
	type metric struct {
		name, typ, help string
		v               float64
	}
	for _, x := range []metric{
		{"pulls_started_total", "counter", "Image pulls started.", float64(m.PullsStarted)},
		{"pulls_succeeded_total", "counter", "Image pulls that succeeded.", float64(m.PullsSucceeded)},
		{"pulls_failed_total", "counter", "Image pulls that failed.", float64(m.PullsFailed)},
		{"pulls_in_progress", "gauge", "Image pulls in progress.", float64(m.PullsInProgress)},
		{"layers_fetched_total", "counter", "Layers downloaded, verified and committed to the store.", float64(m.LayersFetched)},
		{"layers_from_cache_total", "counter", "Layers found in the store and not downloaded.", float64(m.LayersFromCache)},
		{"layers_decrypted_total", "counter", "Encrypted layers downloaded and decrypted.", float64(m.LayersDecrypted)},
		{"layers_failed_total", "counter", "Layer downloads that failed or were cancelled.", float64(m.LayersFailed)},
		{"fetched_bytes_total", "counter", "Layer blob bytes read from registries.", float64(m.BytesFetched)},
		{"unpacked_bytes_total", "counter", "Uncompressed bytes of committed layers.", float64(m.BytesUnpacked)},
		{"pull_seconds_total", "counter", "Wall time of finished image pulls.", m.PullSeconds},
		{"last_pull_seconds", "gauge", "Wall time of the last successful image pull.", m.LastPullSeconds},
		{"registry_requests_total", "counter", "Registry HTTP requests.", float64(m.RegistryRequests)},
		{"registry_retries_total", "counter", "Registry requests retried.", float64(m.RegistryRetries)},
		{"registry_resumes_total", "counter", "Interrupted blob downloads resumed with Range.", float64(m.RegistryResumes)},
		{"store_layers", "gauge", "Layers in the layer store.", float64(m.StoreLayers)},
	} {
		name := MetricsPrefix + x.name
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n%s %s\n", name, x.help, name, x.typ, name, promFloat(x.v))
	}
}

// promFloat formats a sample value as the exposition format wants it.
func promFloat(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
