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
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	"github.com/cova-project/cova/attester/tpm"
	"github.com/cova-project/cova/protocols/aa"
)

// startSwtpm starts `swtpm socket` (data port P, control P+1) with state in
// a temp dir and returns a transport opener; the process is killed when the
// test ends.
func startSwtpm(t testing.TB) func() (transport.TPMCloser, error) {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("swtpm not installed (apt-get install swtpm swtpm-tools)")
		}
		t.Skip("swtpm not installed (apt-get install swtpm swtpm-tools)")
	}
	dir := t.TempDir()
	for attempt := range 5 {
		port := freePortPair(t)
		cmd := exec.Command(bin, "socket", "--tpm2",
			"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port+1),
			"--flags", "not-need-init,startup-clear",
			"--tpmstate", "dir="+dir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			select {
			case <-exited:
				deadline = time.Time{} // port taken meanwhile: retry
				continue
			default:
			}
			if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
				c.Close()
				t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
				return func() (transport.TPMCloser, error) {
					c, err := net.DialTimeout("tcp", addr, 2*time.Second)
					if err != nil {
						return nil, err
					}
					_ = c.SetDeadline(time.Now().Add(30 * time.Second))
					return tpm.StreamTransport(c), nil
				}
			}
		}
		_ = cmd.Process.Kill()
		<-exited
		t.Logf("swtpm attempt %d failed: %s", attempt, stderr.String())
	}
	t.Fatal("swtpm did not start")
	return nil
}

func freePortPair(t testing.TB) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l2, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p+1))
		l.Close()
		if err == nil {
			l2.Close()
			return p
		}
	}
	t.Fatal("no free port pair")
	return 0
}

// provisionAK persists an RSA-2048 RSASSA-SHA256 restricted signing key
// (an AK) at handle.
func provisionAK(t testing.TB, open func() (transport.TPMCloser, error), handle uint32) {
	t.Helper()
	tp, err := open()
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	tmpl := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			UserWithAuth: true, Restricted: true, SignEncrypt: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Scheme: tpm2.TPMTRSAScheme{
				Scheme:  tpm2.TPMAlgRSASSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			KeyBits: 2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
	}
	cp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tmpl),
	}.Execute(tp)
	if err != nil {
		t.Fatalf("create AK: %v", err)
	}
	defer func() { _, _ = tpm2.FlushContext{FlushHandle: cp.ObjectHandle}.Execute(tp) }()
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     &tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
		PersistentHandle: tpm2.TPMHandle(handle),
	}).Execute(tp); err != nil {
		t.Fatalf("persist AK: %v", err)
	}
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
