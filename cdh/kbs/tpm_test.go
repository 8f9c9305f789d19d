package kbs

import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/tpm"
	devkbs "github.com/cova-project/cova/test/kbs"
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
