package sealed

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/cdh/kbs"
	devkbs "github.com/cova-project/cova/test/kbs"
)

// marker is the plaintext no error may ever contain.
const marker = "PLAINTEXT-MARKER-7f3a9c"

const (
	keyKid    = "kbs:///default/signing-key/1"
	vaultName = "kbs:///default/credential/db"
	kekName   = "kbs:///default/kek/1"
)

// kbsGetter adapts the KBS client to Resources.
type kbsGetter struct{ c *kbs.Client }

func (g kbsGetter) GetResource(ctx context.Context, uri string) ([]byte, error) {
	return g.c.Resource(ctx, uri)
}

// mapGetter serves resources from memory and counts fetches.
type mapGetter struct {
	m     map[string][]byte
	calls []string
}

func (g *mapGetter) GetResource(_ context.Context, uri string) ([]byte, error) {
	g.calls = append(g.calls, uri)
	v, ok := g.m[uri]
	if !ok {
		return nil, fmt.Errorf("resource %q: %w", uri, errdefs.ErrNotFound)
	}
	return append([]byte(nil), v...), nil
}

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
	raw, err := k.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	j, err := json.Marshal(map[string]string{
		"kty": "EC", "crv": "P-256",
		"x": base64.RawURLEncoding.EncodeToString(raw[1:33]),
		"y": base64.RawURLEncoding.EncodeToString(raw[33:]),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &signer{key: k, jwk: j}
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// seal builds sealed.<header>.<payload>.<sig> signed by s.
func (s *signer) seal(t testing.TB, hdr map[string]any, payload []byte) string {
	t.Helper()
	return s.sealEncoded(t, b64u(mustJSON(t, hdr)), b64u(payload))
}

// sealEncoded signs already encoded header and payload.
func (s *signer) sealEncoded(t testing.TB, h64, p64 string) string {
	t.Helper()
	h := h64 + "." + p64
	d := sha256.Sum256([]byte(h))
	r, ss, err := ecdsa.Sign(rand.Reader, s.key, d[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	return Prefix + h + "." + b64u(sig)
}

func vaultPayload(t testing.TB, name string) []byte {
	return mustJSON(t, map[string]any{
		"version": "0.1.0", "type": "vault", "name": name, "provider": "kbs",
		"provider_settings": map[string]any{}, "annotations": map[string]any{},
	})
}

var goodHeader = map[string]any{"alg": "ES256", "kid": keyKid}

// envelope encrypts plaintext under a fresh DEK wrapped by kek.
func envelopePayload(t testing.TB, kek, plaintext []byte, wrap string) []byte {
	t.Helper()
	dek := make([]byte, 32)
	rand.Read(dek)
	kb, _ := aes.NewCipher(kek)
	kg, _ := cipher.NewGCM(kb)
	nonce := make([]byte, 12)
	rand.Read(nonce)
	ek := append(append([]byte(nil), nonce...), kg.Seal(nil, nonce, dek, nil)...)
	db, _ := aes.NewCipher(dek)
	var iv, data []byte
	if wrap == WrapA256CTR {
		iv = make([]byte, 16)
		rand.Read(iv)
		data = make([]byte, len(plaintext))
		cipher.NewCTR(db, iv).XORKeyStream(data, plaintext)
	} else {
		iv = make([]byte, 12)
		rand.Read(iv)
		dg, _ := cipher.NewGCM(db)
		data = dg.Seal(nil, iv, plaintext, nil)
	}
	std := base64.StdEncoding.EncodeToString
	return mustJSON(t, map[string]any{
		"version": "0.1.0", "type": "envelope", "provider": "kbs", "key_id": kekName,
		"encrypted_key": std(ek), "encrypted_data": std(data), "wrap_type": wrap, "iv": std(iv),
		"provider_settings": map[string]any{}, "annotations": map[string]any{},
	})
}

// TestVaultEndToEnd unseals a signed vault secret through the dev KBS with
// sample attestation and the real KBS client.
func TestVaultEndToEnd(t *testing.T) {
	sg := newSigner(t)
	s := devkbs.StartTB(t, devkbs.Options{Resources: map[string][]byte{
		"default/signing-key/1": sg.jwk,
		"default/credential/db": []byte(marker),
	}})
	c, err := kbs.New(kbs.Config{
		URL: s.URL(), ExtraRootCAs: string(s.CACertPEM()), Primary: sample.New(),
		Backoff: kbs.Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	u := &Unsealer{Resources: kbsGetter{c}}
	sec := sg.seal(t, goodHeader, vaultPayload(t, vaultName))
	if !IsSealed(sec) {
		t.Fatal("IsSealed = false for a sealed secret")
	}
	got, err := u.Unseal(context.Background(), sec)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != marker {
		t.Fatalf("plaintext = %q", got)
	}

	// A tampered payload naming another resource is refused before any fetch
	// of that resource.
	parts := strings.Split(sec, ".")
	parts[2] = b64u(vaultPayload(t, "kbs:///default/credential/other"))
	_, err = u.Unseal(context.Background(), strings.Join(parts, "."))
	if !errdefs.IsPermissionDenied(err) {
		t.Fatalf("tampered payload through KBS: err = %v, want permission denied", err)
	}
}

func TestEnvelope(t *testing.T) {
	sg := newSigner(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	for _, wrap := range []string{WrapA256GCM, WrapA256CTR} {
		t.Run(wrap, func(t *testing.T) {
			g := &mapGetter{m: map[string][]byte{keyKid: sg.jwk, kekName: kek}}
			u := &Unsealer{Resources: g}
			got, err := u.Unseal(context.Background(), sg.seal(t, goodHeader, envelopePayload(t, kek, []byte(marker), wrap)))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != marker {
				t.Fatalf("plaintext = %q", got)
			}
			if want := []string{keyKid, kekName}; fmt.Sprint(g.calls) != fmt.Sprint(want) {
				t.Fatalf("fetched %v, want %v", g.calls, want)
			}
		})
	}
}

func TestEnvelopeProviders(t *testing.T) {
	kek := make([]byte, 32)
	rand.Read(kek)
	var p map[string]any
	if err := json.Unmarshal(envelopePayload(t, kek, []byte(marker), WrapA256GCM), &p); err != nil {
		t.Fatal(err)
	}
	p["provider"] = "aws"
	u := &Unsealer{Resources: &mapGetter{m: map[string][]byte{kekName: kek}}, SkipVerification: true}
	_, err := u.Unseal(context.Background(), "sealed.fakejwsheader."+b64u(mustJSON(t, p))+".fakesignature")
	if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), `"aws"`) {
		t.Fatalf("aws without decrypter: err = %v, want not implemented naming aws", err)
	}
	// A registered decrypter is used.
	u.Decrypters = map[string]Decrypter{"aws": KBSDecrypter{Resources: u.Resources}}
	got, err := u.Unseal(context.Background(), "sealed.fakejwsheader."+b64u(mustJSON(t, p))+".fakesignature")
	if err != nil || string(got) != marker {
		t.Fatalf("registered decrypter: %q, %v", got, err)
	}
}

func TestRefused(t *testing.T) {
	sg := newSigner(t)
	other := newSigner(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	vp := vaultPayload(t, vaultName)
	good := sg.seal(t, goodHeader, vp)
	gp := strings.Split(good, ".")

	tamperedPayload := append([]string(nil), gp...)
	tamperedPayload[2] = b64u(vaultPayload(t, "kbs:///default/credential/x"))
	tamperedSig := append([]string(nil), gp...)
	sig, _ := base64.RawURLEncoding.DecodeString(gp[3])
	sig[10] ^= 1
	tamperedSig[3] = b64u(sig)
	padded := paddable(vp)

	badGCM := envelopePayload(t, kek, []byte(marker), WrapA256GCM)
	var bg map[string]any
	json.Unmarshal(badGCM, &bg)
	ed, _ := base64.StdEncoding.DecodeString(bg["encrypted_data"].(string))
	ed[0] ^= 1
	bg["encrypted_data"] = base64.StdEncoding.EncodeToString(ed)

	unsigned := "sealed.fakejwsheader." + b64u(vp) + ".fakesignature"

	for _, tc := range []struct {
		name  string
		sec   string
		class func(error) bool
	}{
		{"wrong alg HS256", sg.seal(t, map[string]any{"alg": "HS256", "kid": keyKid}, vp), errdefs.IsInvalidArgument},
		{"alg none", sg.seal(t, map[string]any{"alg": "none", "kid": keyKid}, vp), errdefs.IsInvalidArgument},
		{"alg ES384", sg.seal(t, map[string]any{"alg": "ES384", "kid": keyKid}, vp), errdefs.IsInvalidArgument},
		{"no kid", sg.seal(t, map[string]any{"alg": "ES256"}, vp), errdefs.IsInvalidArgument},
		{"traversal kid", sg.seal(t, map[string]any{"alg": "ES256", "kid": "kbs:///default/../signing-key/1"}, vp), errdefs.IsInvalidArgument},
		{"traversal file kid", sg.seal(t, map[string]any{"alg": "ES256", "kid": "../../etc/passwd"}, vp), errdefs.IsInvalidArgument},
		{"empty segment kid", sg.seal(t, map[string]any{"alg": "ES256", "kid": "kbs:///default//1"}, vp), errdefs.IsInvalidArgument},
		{"wrong scheme kid", sg.seal(t, map[string]any{"alg": "ES256", "kid": "https://evil/default/signing-key/1"}, vp), errdefs.IsInvalidArgument},
		{"file scheme kid", sg.seal(t, map[string]any{"alg": "ES256", "kid": "file:///etc/key"}, vp), errdefs.IsInvalidArgument},
		{"host kid", sg.seal(t, map[string]any{"alg": "ES256", "kid": "kbs://evil/default/signing-key/1"}, vp), errdefs.IsInvalidArgument},
		{"plugin kid", sg.seal(t, map[string]any{"alg": "ES256", "kid": "kbs+plugin:///default/signing-key/1"}, vp), errdefs.IsInvalidArgument},
		{"crit header", sg.seal(t, map[string]any{"alg": "ES256", "kid": keyKid, "crit": []string{"x"}}, vp), errdefs.IsInvalidArgument},
		{"tampered payload", strings.Join(tamperedPayload, "."), errdefs.IsPermissionDenied},
		{"tampered signature", strings.Join(tamperedSig, "."), errdefs.IsPermissionDenied},
		{"signed by another key", other.seal(t, goodHeader, vp), errdefs.IsPermissionDenied},
		{"padded payload, signed", sg.sealEncoded(t, b64u(mustJSON(t, goodHeader)), base64.URLEncoding.EncodeToString(padded)), errdefs.IsInvalidArgument},
		{"legacy unsigned", unsigned, errdefs.IsInvalidArgument},
		{"no prefix", strings.TrimPrefix(good, "sealed"), errdefs.IsInvalidArgument},
		{"five parts", good + ".x", errdefs.IsInvalidArgument},
		{"bad version", sg.seal(t, goodHeader, []byte(`{"version":"0.2.0","type":"vault","name":"`+vaultName+`","provider":"kbs","provider_settings":{},"annotations":{}}`)), errdefs.IsInvalidArgument},
		{"missing annotations", sg.seal(t, goodHeader, []byte(`{"version":"0.1.0","type":"vault","name":"`+vaultName+`","provider":"kbs","provider_settings":{}}`)), errdefs.IsInvalidArgument},
		{"bad type", sg.seal(t, goodHeader, []byte(`{"version":"0.1.0","type":"x","name":"`+vaultName+`","provider":"kbs","provider_settings":{},"annotations":{}}`)), errdefs.IsInvalidArgument},
		{"traversal vault name", sg.seal(t, goodHeader, vaultPayload(t, "kbs:///default/../x")), errdefs.IsInvalidArgument},
		{"vault other provider", sg.seal(t, goodHeader, []byte(`{"version":"0.1.0","type":"vault","name":"x","provider":"aliyun","provider_settings":{},"annotations":{}}`)), errdefs.IsNotImplemented},
		{"tampered envelope data", sg.seal(t, goodHeader, mustJSON(t, bg)), errdefs.IsInvalidArgument},
		{"missing vault resource", sg.seal(t, goodHeader, vaultPayload(t, "kbs:///default/credential/none")), errdefs.IsNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &mapGetter{m: map[string][]byte{keyKid: sg.jwk, vaultName: []byte(marker), kekName: kek}}
			u := &Unsealer{Resources: g}
			got, err := u.Unseal(context.Background(), tc.sec)
			if err == nil {
				t.Fatalf("accepted, plaintext %q", got)
			}
			if tc.class != nil && !tc.class(err) {
				t.Fatalf("err = %v: wrong class", err)
			}
			if strings.Contains(err.Error(), marker) || strings.Contains(err.Error(), string(sg.jwk)) {
				t.Fatalf("error leaks secret material: %v", err)
			}
			for _, c := range g.calls {
				if c == vaultName && tc.name != "missing vault resource" {
					t.Fatalf("vault resource fetched for a refused secret")
				}
			}
		})
	}
}

func TestSkipVerification(t *testing.T) {
	vp := vaultPayload(t, vaultName)
	g := &mapGetter{m: map[string][]byte{vaultName: []byte(marker)}}
	u := &Unsealer{Resources: g, SkipVerification: true}
	for _, tc := range []struct{ name, sec string }{
		{"fake header", "sealed.fakejwsheader." + b64u(vp) + ".fakesignature"},
		{"signed", newSigner(t).seal(t, goodHeader, vp)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := u.Unseal(context.Background(), tc.sec)
			if err != nil || string(got) != marker {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	// Skipping the signature does not relax the payload encoding.
	_, err := u.Unseal(context.Background(), "sealed.x."+base64.URLEncoding.EncodeToString(paddable(vp))+".y")
	if !errdefs.IsInvalidArgument(err) {
		t.Fatalf("padded payload with skip: err = %v", err)
	}
}

// paddable appends spaces to the JSON until its base64 needs padding.
func paddable(vp []byte) []byte {
	out := append([]byte(nil), vp...)
	for len(out)%3 == 0 {
		out = append(out, ' ')
	}
	return out
}

func TestFileKid(t *testing.T) {
	sg := newSigner(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mykey"), sg.jwk, 0o600); err != nil {
		t.Fatal(err)
	}
	g := &mapGetter{m: map[string][]byte{vaultName: []byte(marker)}}
	hdr := map[string]any{"alg": "ES256", "kid": "mykey"}
	sec := sg.seal(t, hdr, vaultPayload(t, vaultName))
	if _, err := (&Unsealer{Resources: g}).Unseal(context.Background(), sec); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("file kid without KeyDir: err = %v", err)
	}
	got, err := (&Unsealer{Resources: g, KeyDir: dir}).Unseal(context.Background(), sec)
	if err != nil || string(got) != marker {
		t.Fatalf("file kid: %q, %v", got, err)
	}
}

func TestIsSealed(t *testing.T) {
	for s, want := range map[string]bool{"sealed.a.b.c": true, "sealed.": true, "sealed": false, "": false, "Sealed.a": false} {
		if IsSealed(s) != want {
			t.Errorf("IsSealed(%q) = %v", s, !want)
		}
	}
}

func TestSizeLimit(t *testing.T) {
	u := &Unsealer{Resources: &mapGetter{}, MaxSize: 64}
	_, err := u.Unseal(context.Background(), Prefix+strings.Repeat("a", 100))
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "64") {
		t.Fatalf("err = %v", err)
	}
}

func FuzzUnseal(f *testing.F) {
	sg := newSigner(f)
	kek := bytes.Repeat([]byte{7}, 32)
	f.Add(sg.seal(f, goodHeader, vaultPayload(f, vaultName)))
	f.Add(sg.seal(f, goodHeader, envelopePayload(f, kek, []byte(marker), WrapA256GCM)))
	f.Add(sg.seal(f, goodHeader, envelopePayload(f, kek, []byte(marker), WrapA256CTR)))
	f.Add("sealed.fakejwsheader." + b64u(vaultPayload(f, vaultName)) + ".fakesignature")
	f.Add("sealed....")
	f.Fuzz(func(t *testing.T, s string) {
		for _, skip := range []bool{false, true} {
			g := &mapGetter{m: map[string][]byte{keyKid: sg.jwk, vaultName: []byte(marker), kekName: kek}}
			u := &Unsealer{Resources: g, SkipVerification: skip}
			_, err := u.Unseal(context.Background(), s)
			if err != nil && strings.Contains(err.Error(), marker) && !strings.Contains(s, marker) {
				t.Fatalf("error leaks plaintext: %v", err)
			}
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) && !errdefs.IsPermissionDenied(err) &&
				!errdefs.IsNotFound(err) && !errdefs.IsNotImplemented(err) && !errdefs.IsFailedPrecondition(err) {
				t.Fatalf("unclassified error: %v", err)
			}
		}
	})
}

func TestMemberNamesCaseSensitive(t *testing.T) {
	sg := newSigner(t)
	vp := vaultPayload(t, vaultName)
	g := &mapGetter{m: map[string][]byte{keyKid: sg.jwk, vaultName: []byte(marker)}}
	u := &Unsealer{Resources: g}
	for _, tc := range []struct {
		name string
		hdr  map[string]any
		p    []byte
	}{
		{"header ALG", map[string]any{"ALG": "ES256", "kid": keyKid}, vp},
		{"header Kid", map[string]any{"alg": "ES256", "Kid": keyKid}, vp},
		{"payload Type", goodHeader, bytes.Replace(vp, []byte(`"type"`), []byte(`"Type"`), 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := u.Unseal(context.Background(), sg.seal(t, tc.hdr, tc.p)); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err = %v, want invalid argument", err)
			}
		})
	}
}
