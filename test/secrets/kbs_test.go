package secrets

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/cdh/sealed"
	devkbs "github.com/cova-project/cova/test/kbs"
)

// KBS resource paths the flows use.
const (
	signingKeyPath = "default/signing-key/1"
	envSecretPath  = "default/credential/db"
	fileSecretPath = "default/credential/file"
	plainPath      = "default/key/plain"
	kekPath        = "default/image-kek/1"
)

// Marker secrets (printable so they can be found verbatim too).
var (
	envSecret   = []byte("SEALED-ENV-PLAINTEXT-MARKER-5e0c")
	fileSecret  = []byte("SEALED-FILE-PLAINTEXT-MARKER-77ab")
	plainSecret = []byte("KBS-RESOURCE-MARKER-b21f")
	kek         = []byte("KEK-MARKER-0123456789abcdefghijk") // 32 bytes
)

// signer signs sealed secrets (ES256 JWS behind "sealed.").
type signer struct {
	key *ecdsa.PrivateKey
	jwk []byte
}

func newSigner(t testing.TB) *signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := k.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	j, _ := json.Marshal(map[string]string{
		"kty": "EC", "crv": "P-256",
		"x": base64.RawURLEncoding.EncodeToString(raw[1:33]),
		"y": base64.RawURLEncoding.EncodeToString(raw[33:]),
	})
	return &signer{key: k, jwk: j}
}

// vault seals a reference to KBS resource path.
func (s *signer) vault(t testing.TB, path string) string {
	t.Helper()
	b64 := base64.RawURLEncoding.EncodeToString
	hdr, _ := json.Marshal(map[string]any{"alg": "ES256", "kid": "kbs:///" + signingKeyPath})
	payload, _ := json.Marshal(map[string]any{
		"version": "0.1.0", "type": "vault", "name": "kbs:///" + path, "provider": "kbs",
		"provider_settings": map[string]any{}, "annotations": map[string]any{},
	})
	signed := b64(hdr) + "." + b64(payload)
	d := sha256.Sum256([]byte(signed))
	r, ss, err := ecdsa.Sign(rand.Reader, s.key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	return sealed.Prefix + signed + "." + b64(sig)
}

// startKBS serves every marker resource and the signing key.
func startKBS(t testing.TB, sg *signer) *devkbs.Server {
	t.Helper()
	return devkbs.StartTB(t, devkbs.Options{Resources: map[string][]byte{
		signingKeyPath: sg.jwk,
		envSecretPath:  envSecret,
		fileSecretPath: fileSecret,
		plainPath:      plainSecret,
		kekPath:        kek,
	}})
}

// newKBSClient is the agent's KBS client (cmd/cova-agent wires it the same
// way), logging at debug level into log.
func newKBSClient(t testing.TB, s *devkbs.Server, log *slog.Logger) *kbs.Client {
	t.Helper()
	c, err := kbs.New(kbs.Config{
		URL: s.URL(), ExtraRootCAs: string(s.CACertPEM()), Primary: sample.New(),
		Backoff: kbs.Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond},
		Logger:  log.With("component", "kbs"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// resources adapts the KBS client as cmd/cova-agent's kbsResources does.
type resources struct{ c *kbs.Client }

func (r resources) GetResource(ctx context.Context, uri string) ([]byte, error) {
	return r.c.Resource(ctx, uri)
}
