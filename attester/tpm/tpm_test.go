package tpm

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	swtpmtest "github.com/cova-project/cova/test/swtpm"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm/tpm2/transport"
)

// swtpm is a software TPM started for one test (test/swtpm).
type swtpm struct {
	dial swtpmtest.Dialer
}

func startSwtpm(t testing.TB) *swtpm {
	t.Helper()
	return &swtpm{dial: swtpmtest.Start(t)}
}

func (s *swtpm) open() (transport.TPMCloser, error) {
	c, err := s.dial()
	if err != nil {
		return nil, err
	}
	return StreamTransport(c), nil
}

// provisionAK persists the attestation key at handle.
func (s *swtpm) provisionAK(t testing.TB, handle uint32) {
	t.Helper()
	tp, err := s.open()
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	swtpmtest.ProvisionAK(t, tp, handle)
}

type parsed struct {
	ev   Evidence
	sig  []byte
	msg  []byte
	pcrs [][]byte
	ak   *rsa.PublicKey
}

func parse(t *testing.T, b []byte) parsed {
	t.Helper()
	var p parsed
	if err := json.Unmarshal(b, &p.ev); err != nil {
		t.Fatal(err)
	}
	var err error
	if p.sig, err = base64.StdEncoding.DecodeString(p.ev.TPMQuote.Signature); err != nil {
		t.Fatal(err)
	}
	if p.msg, err = base64.StdEncoding.DecodeString(p.ev.TPMQuote.Message); err != nil {
		t.Fatal(err)
	}
	if len(p.ev.TPMQuote.PCRs) != NumPCRs {
		t.Fatalf("%d PCRs, want %d", len(p.ev.TPMQuote.PCRs), NumPCRs)
	}
	for _, h := range p.ev.TPMQuote.PCRs {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 32 {
			t.Fatalf("PCR %q: %v", h, err)
		}
		p.pcrs = append(p.pcrs, b)
	}
	der, err := base64.StdEncoding.DecodeString(p.ev.AKPublic)
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatalf("ak_public is not DER SPKI: %v", err)
	}
	p.ak = k.(*rsa.PublicKey)
	return p
}

// verifyWithGoTpmTools runs go-tpm-tools' server-side quote check.
func (p parsed) verifyWithGoTpmTools(nonce []byte) error {
	m := map[uint32][]byte{}
	for i, v := range p.pcrs {
		m[uint32(i)] = v
	}
	return quote.Verify(&tpmpb.Quote{Quote: p.msg, RawSig: p.sig, Pcrs: &tpmpb.PCRs{Hash: tpmpb.HashAlgo_SHA256, Pcrs: m}}, p.ak, nonce)
}

func TestEvidenceVerifiesWithGoTpmTools(t *testing.T) {
	sw := startSwtpm(t)
	sw.provisionAK(t, attester.DefaultAKHandle)
	a := New(Config{Open: sw.open})
	if a.Tee() != attester.TeeTPM {
		t.Fatal("wrong tee")
	}
	digest := sha512.Sum384([]byte("runtime data"))
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		rd    []byte
		nonce []byte
	}{
		{"sha384-truncated-to-32", digest[:], digest[:32]},
		{"short-padded-to-32", []byte("abc"), attester.FitDigest([]byte("abc"), 32)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := a.Evidence(ctx, tc.rd)
			if err != nil {
				t.Fatal(err)
			}
			p := parse(t, ev)
			if err := p.verifyWithGoTpmTools(tc.nonce); err != nil {
				t.Fatalf("go-tpm-tools rejects our quote: %v", err)
			}
			if err := p.verifyWithGoTpmTools(attester.FitDigest([]byte("other"), 32)); err == nil {
				t.Fatal("quote verified for another nonce")
			}
			p.pcrs[5][0] ^= 1
			if err := p.verifyWithGoTpmTools(tc.nonce); err == nil {
				t.Fatal("quote verified with a changed PCR value")
			}
		})
	}
}

func TestMeasurementAndInitdata(t *testing.T) {
	sw := startSwtpm(t)
	sw.provisionAK(t, attester.DefaultAKHandle)
	a := New(Config{Open: sw.open})
	ctx := context.Background()

	d := sha256.Sum256([]byte("initdata toml"))
	if bound, err := attester.BindInitdata(ctx, a, d[:]); err != nil || !bound {
		t.Fatalf("BindInitdata = %v, %v", bound, err)
	}
	if _, err := attester.BindInitdata(ctx, a, make([]byte, 48)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("sha384 initdata digest accepted: %v", err)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	got, err := a.Measurement(ctx, InitdataPCR)
	if err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("PCR8 = %x, want sha256(0^32||d) = %x (%v)", got, want, err)
	}

	// PCRs 17–22 only extend from locality 4 on a PC-client TPM, so the
	// AAEL default (17) fails on a plain TPM; use the application PCR 23.
	if err := a.Extend(ctx, 17, make([]byte, 32)); err == nil {
		t.Log("note: this TPM lets locality 0 extend PCR 17")
	}
	const pcr = 23
	dir := t.TempDir()
	initial, err := a.Measurement(ctx, pcr)
	if err != nil {
		t.Fatal(err)
	}
	l, err := eventlog.Open(ctx, eventlog.Config{Path: filepath.Join(dir, "eventlog"), WALPath: filepath.Join(dir, ".wal"), Measurer: a})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, c := range []string{"a", "b"} {
		if err := l.Record(ctx, eventlog.Event{Domain: "cova", Operation: "Test", Content: c}, pcr); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(l.Path())
	entries, err := eventlog.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	replayed, err := eventlog.Replay(entries, pcr, eventlog.AlgSHA256, initial)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := a.Evidence(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := parse(t, ev)
	if !bytes.Equal(p.pcrs[pcr], replayed) || bytes.Equal(replayed, initial) || !bytes.Equal(p.pcrs[8], want[:]) {
		t.Fatalf("quoted PCR%d %x, replayed %x", pcr, p.pcrs[pcr], replayed)
	}
	if err := p.verifyWithGoTpmTools(make([]byte, 32)); err != nil {
		t.Fatal(err)
	}
	if err := a.Extend(ctx, 24, make([]byte, 32)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("PCR 24: %v", err)
	}
}

func TestNoAK(t *testing.T) {
	sw := startSwtpm(t)
	if _, err := New(Config{Open: sw.open}).Evidence(context.Background(), nil); err == nil {
		t.Fatal("evidence without an AK")
	}
	if _, err := New(Config{}).Evidence(context.Background(), nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("no device: %v", err)
	}
}

func BenchmarkQuote(b *testing.B) {
	sw := startSwtpm(b)
	sw.provisionAK(b, attester.DefaultAKHandle)
	a := New(Config{Open: sw.open})
	ctx := context.Background()
	for b.Loop() {
		if _, err := a.Evidence(ctx, []byte("nonce")); err != nil {
			b.Fatal(err)
		}
	}
}
