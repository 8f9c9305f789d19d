package kbs

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/sample"
	devkbs "github.com/cova-project/cova/test/kbs"
)

// reportPercentiles adds p50 and p99 (in ms) of the per-iteration times.
func reportPercentiles(b *testing.B, d []time.Duration) {
	if len(d) == 0 {
		return
	}
	slices.Sort(d)
	ms := func(q float64) float64 { return float64(d[int(q*float64(len(d)-1))]) / 1e6 }
	b.ReportMetric(ms(0.5), "p50-ms")
	b.ReportMetric(ms(0.99), "p99-ms")
}

// benchRCAR measures a cold fetch: a new client (new TEE key), RCAR and one
// resource, over loopback HTTPS (a new TLS connection each time).
func benchRCAR(b *testing.B, primary attester.Attester) {
	s := startKBS(b, devkbs.Options{})
	ctx := context.Background()
	var d []time.Duration
	for b.Loop() {
		start := time.Now()
		c, err := New(Config{URL: s.URL(), ExtraRootCAs: string(s.CACertPEM()), Primary: primary})
		if err != nil {
			b.Fatal(err)
		}
		got, err := c.Resource(ctx, "kbs:///"+secretPath)
		if err != nil || !bytes.Equal(got, secret) {
			b.Fatalf("%q, %v", got, err)
		}
		d = append(d, time.Since(start))
		c.Close()
	}
	reportPercentiles(b, d)
}

func sampleAttester() attester.Attester { return sample.New() }

func BenchmarkRCARAndResource(b *testing.B) {
	b.Run("sample", func(b *testing.B) { benchRCAR(b, sampleAttester()) })
	b.Run("swtpm", func(b *testing.B) { benchRCAR(b, newTPMAttester(b)) })
}

// BenchmarkSecondResource measures a resource fetch with a reused token:
// one HTTPS round trip and a JWE decryption.
func BenchmarkSecondResource(b *testing.B) {
	s := startKBS(b, devkbs.Options{})
	c := newClient(b, s, nil)
	ctx := context.Background()
	if _, err := c.Resource(ctx, "kbs:///"+secretPath); err != nil {
		b.Fatal(err)
	}
	s.ResetStats()
	var d []time.Duration
	for b.Loop() {
		start := time.Now()
		if _, err := c.Resource(ctx, "kbs:///"+secretPath); err != nil {
			b.Fatal(err)
		}
		d = append(d, time.Since(start))
	}
	if st := s.Stats(); st.Auth != 0 || st.Resource != len(d) {
		b.Fatalf("token not reused: %+v after %d fetches", st, len(d))
	}
	reportPercentiles(b, d)
}
