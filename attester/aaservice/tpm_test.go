package aaservice

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
	"os"
	"path/filepath"
	"testing"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	"github.com/cova-project/cova/attester/tpm"
	"github.com/cova-project/cova/protocols/aa"
	"github.com/cova-project/cova/test/swtpm"
)

// startSwtpm starts a software TPM (test/swtpm) and returns a transport
// opener for the tpm attester.
func startSwtpm(t testing.TB) func() (transport.TPMCloser, error) {
	t.Helper()
	dial := swtpm.Start(t)
	return func() (transport.TPMCloser, error) {
		c, err := dial()
		if err != nil {
			return nil, err
		}
		return tpm.StreamTransport(c), nil
	}
}

// provisionAK persists the attestation key at handle.
func provisionAK(t testing.TB, open func() (transport.TPMCloser, error), handle uint32) {
	t.Helper()
	tp, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	swtpm.ProvisionAK(t, tp, handle)
}

// verifyTPMEvidence checks tpm evidence with go-tpm-tools' server-side quote
// verification and returns the quoted SHA-256 PCR values.
func verifyTPMEvidence(t *testing.T, evidence, nonce []byte) map[uint32][]byte {
	t.Helper()
	var ev tpm.Evidence
	if err := json.Unmarshal(evidence, &ev); err != nil {
		t.Fatal(err)
	}
	sig, err1 := base64.StdEncoding.DecodeString(ev.TPMQuote.Signature)
	msg, err2 := base64.StdEncoding.DecodeString(ev.TPMQuote.Message)
	der, err3 := base64.StdEncoding.DecodeString(ev.AKPublic)
	if err1 != nil || err2 != nil || err3 != nil {
		t.Fatalf("base64: %v %v %v", err1, err2, err3)
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	pcrs := map[uint32][]byte{}
	for i, h := range ev.TPMQuote.PCRs {
		b, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		pcrs[uint32(i)] = b
	}
	q := &tpmpb.Quote{Quote: msg, RawSig: sig, Pcrs: &tpmpb.PCRs{Hash: tpmpb.HashAlgo_SHA256, Pcrs: pcrs}}
	if err := quote.Verify(q, k.(*rsa.PublicKey), nonce); err != nil {
		t.Fatalf("go-tpm-tools rejects the quote: %v", err)
	}
	return pcrs
}

// TestTPMOverSocket serves the AA from the tpm attester on swtpm: evidence
// verifies with go-tpm-tools, ExtendRuntimeMeasurement appends to the event
// log and the PCR (read directly and in a fresh quote) replays from the log.
func TestTPMOverSocket(t *testing.T) {
	ctx := context.Background()
	open := startSwtpm(t)
	provisionAK(t, open, attester.DefaultAKHandle)
	a := tpm.New(tpm.Config{Open: open})
	// PCRs 17-22 extend only from locality 4 on a PC-client TPM
	// (TPM_RC_LOCALITY from locality 0), so the AAEL default PCR 17 fails on
	// a plain TPM; aa.toml must name init_pcr = 23 there.
	const pcr = 23
	initial, err := a.Measurement(ctx, pcr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "eventlog")
	elog, err := eventlog.Open(ctx, eventlog.Config{Path: path, WALPath: filepath.Join(dir, ".wal"), DefaultPCR: pcr, Measurer: a})
	if err != nil {
		t.Fatal(err)
	}
	defer elog.Close()
	c := serve(t, Options{Primary: a, EventLog: elog, InitPCR: pcr})

	rd := sha512.Sum384([]byte("nonce from the KBS"))
	r, err := c.GetEvidence(ctx, &aa.GetEvidenceRequest{RuntimeData: rd[:]})
	if err != nil {
		t.Fatal(err)
	}
	verifyTPMEvidence(t, r.GetEvidence(), rd[:32]) // tpm truncates report data to 32 bytes

	tee, err := c.GetTeeType(ctx, &aa.GetTeeTypeRequest{})
	if err != nil || tee.GetTee() != "tpm" {
		t.Fatalf("%v %v", tee, err)
	}

	for _, content := range []string{`{"image":"registry/app:1", "digest":"sha256:0123"}`, "second"} {
		resp, err := c.ExtendRuntimeMeasurement(ctx, &aa.ExtendRuntimeMeasurementRequest{Domain: "cova", Operation: "Test", Content: content})
		if err != nil || resp.GetResult() != aa.RuntimeMeasurementResult_OK {
			t.Fatalf("%v %v", resp, err)
		}
	}
	pcr99 := uint64(99)
	if _, err := c.ExtendRuntimeMeasurement(ctx, &aa.ExtendRuntimeMeasurementRequest{Domain: "d", Operation: "o", RegisterIndex: &pcr99}); err == nil {
		t.Error("PCR 99 accepted")
	}

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := eventlog.Parse(b)
	if err != nil || len(entries) != 2 {
		t.Fatalf("%d entries, %v", len(entries), err)
	}
	if entries[0].Register != pcr {
		t.Errorf("entry register %d, want %d (tpm maps PCRs to themselves)", entries[0].Register, pcr)
	}
	want, err := eventlog.Replay(entries, pcr, eventlog.AlgSHA256, initial)
	if err != nil {
		t.Fatal(err)
	}
	got, err := a.Measurement(ctx, pcr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) || bytes.Equal(got, initial) {
		t.Fatalf("PCR %d = %x, replay %x (initial %x)", pcr, got, want, initial)
	}
	// The same value in a fresh quote, as a verifier sees it.
	rd2 := sha256.Sum256([]byte("second nonce"))
	r, err = c.GetEvidence(ctx, &aa.GetEvidenceRequest{RuntimeData: rd2[:]})
	if err != nil {
		t.Fatal(err)
	}
	if pcrs := verifyTPMEvidence(t, r.GetEvidence(), rd2[:]); !bytes.Equal(pcrs[pcr], want) {
		t.Errorf("quoted PCR %d %x, replay %x", pcr, pcrs[pcr], want)
	}
}

func BenchmarkTPMGetEvidence(b *testing.B) {
	open := startSwtpm(b)
	provisionAK(b, open, attester.DefaultAKHandle)
	s, err := New(Options{Primary: tpm.New(tpm.Config{Open: open})})
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
