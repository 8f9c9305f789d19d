package kbs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/tpm"
	devkbs "github.com/cova-project/cova/test/kbs"
	"github.com/cova-project/cova/test/testutil"
)

// startSwtpm starts `swtpm socket` (data port P, control P+1) with state in
// a temp dir and returns a transport opener; it is killed when the test
// ends. Without swtpm the test is skipped (failed under CI).
func startSwtpm(t testing.TB) func() (transport.TPMCloser, error) {
	t.Helper()
	bin := testutil.RequireTool(t, "swtpm")
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

// provisionAK persists an RSA-2048 RSASSA-SHA256 restricted signing key at
// handle, as the tpm attester expects.
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

func newTPMAttester(t testing.TB) *tpm.Attester {
	t.Helper()
	open := startSwtpm(t)
	provisionAK(t, open, attester.DefaultAKHandle)
	return tpm.New(tpm.Config{Open: open})
}

func TestTPMAttestationRoundTrip(t *testing.T) {
	a := newTPMAttester(t)
	s := startKBS(t, devkbs.Options{})
	c := newClient(t, s, func(c *Config) { c.Primary = a })
	getSecret(t, c)
	wantStats(t, s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 1, Attested: 1})

	// Initdata bound into PCR 8 is checked by the KBS; an unbound one is
	// refused.
	toml := []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n")
	c = newClient(t, s, func(c *Config) { c.Primary = a; c.InitData = toml; c.RCARAttempts = 1 })
	if _, err := c.Resource(context.Background(), "kbs:///"+secretPath); err == nil {
		t.Fatal("init-data not bound in PCR 8 was accepted")
	}
	d := sha256.Sum256(toml)
	if err := a.BindInitdata(context.Background(), d[:]); err != nil {
		t.Fatal(err)
	}
	getSecret(t, c)
}
