// Package swtpm starts a software TPM (Debian swtpm) for tests and
// provisions the attestation key Cova's tpm attester expects. Tests that use
// it skip without swtpm, and fail under CI=true where .ci/run installs it.
package swtpm

import (
	"bytes"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cova-project/cova/test/testutil"
)

// Dialer opens a new connection to the running swtpm's command port. Wrap
// it with the tpm attester's StreamTransport (the socket TPM framing).
type Dialer func() (net.Conn, error)

// Start runs `swtpm socket` (data port P, control port P+1, on 127.0.0.1)
// with its state in a temp dir; it is killed when the test ends.
func Start(t testing.TB) Dialer {
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
				deadline = time.Time{} // the port was taken meanwhile: retry
				continue
			default:
			}
			if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
				c.Close()
				t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })
				return func() (net.Conn, error) {
					c, err := net.DialTimeout("tcp", addr, 2*time.Second)
					if err != nil {
						return nil, err
					}
					_ = c.SetDeadline(time.Now().Add(30 * time.Second))
					return c, nil
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

// ProvisionAK persists an RSA-2048 RSASSA-SHA256 restricted signing key at
// handle (the attestation key the tpm attester quotes with).
func ProvisionAK(t testing.TB, tp transport.TPM, handle uint32) {
	t.Helper()
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
