package kbs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josecipher "github.com/go-jose/go-jose/v4/cipher"

	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/cdh/canonjson"
)

func TestConcatKDF(t *testing.T) {
	// RFC 7518 Appendix C.
	z := []byte{158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49, 110, 163, 218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196}
	got := concatKDF(z, "A128GCM", []byte("Alice"), []byte("Bob"), 128)
	if want := "VqqN6vgjbSBcIijNcacQGg"; b64url.EncodeToString(got) != want {
		t.Fatalf("RFC 7518 C: %s, want %s", b64url.EncodeToString(got), want)
	}
	// Cross-check the ECDH-ES+A256KW form with go-jose's implementation.
	for range 5 {
		z := make([]byte, 66)
		_, _ = rand.Read(z)
		alg := []byte("ECDH-ES+A256KW")
		lp := func(b []byte) []byte { return append([]byte{0, 0, 0, byte(len(b))}, b...) }
		r := josecipher.NewConcatKDF(crypto.SHA256, z, lp(alg), lp(nil), lp(nil), []byte{0, 0, 1, 0}, nil)
		want := make([]byte, 32)
		if _, err := io.ReadFull(r, want); err != nil {
			t.Fatal(err)
		}
		if got := concatKDF(z, string(alg), nil, nil, 256); !bytes.Equal(got, want) {
			t.Fatalf("concatKDF %x, go-jose %x", got, want)
		}
	}
}

func TestAESKeyWrap(t *testing.T) {
	// RFC 3394 §4.6: 256-bit key data with a 256-bit KEK.
	kek, _ := hex.DecodeString("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
	key, _ := hex.DecodeString("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
	want := "28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21"
	got, err := aesKeyWrap(kek, key)
	if err != nil || hex.EncodeToString(got) != want {
		t.Fatalf("wrap = %x, %v; want %s", got, err, want)
	}
	block, _ := aes.NewCipher(kek)
	back, err := josecipher.KeyUnwrap(block, got)
	if err != nil || !bytes.Equal(back, key) {
		t.Fatalf("go-jose unwrap = %x, %v", back, err)
	}
	if _, err := aesKeyWrap(kek, key[:12]); err == nil {
		t.Fatal("wrapped a 12-byte key")
	}
}

// pubOf returns the tee-pubkey JWK of a private key and the key go-jose
// decrypts with.
func pubOf(t *testing.T, kind string) (teePubKey, any) {
	t.Helper()
	switch kind {
	case "P-256", "P-521":
		c, size := elliptic.P256(), 32
		if kind == "P-521" {
			c, size = elliptic.P521(), 66
		}
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pt, _ := k.PublicKey.ECDH()
		b := pt.Bytes()
		return teePubKey{Kty: "EC", Crv: kind, Alg: "ECDH-ES+A256KW", X: b64url.EncodeToString(b[1 : 1+size]), Y: b64url.EncodeToString(b[1+size:])}, k
	default:
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		return teePubKey{Kty: "RSA", Alg: "RSA-OAEP-256", N: b64url.EncodeToString(k.N.Bytes()), E: b64url.EncodeToString(big.NewInt(int64(k.E)).Bytes())}, k
	}
}

func TestJWEDecryptsWithGoJose(t *testing.T) {
	for _, kind := range []string{"P-256", "P-521", "RSA"} {
		t.Run(kind, func(t *testing.T) {
			pub, priv := pubOf(t, kind)
			plain := []byte("resource bytes \x00\xff")
			b, err := encryptJWE(pub, plain)
			if err != nil {
				t.Fatal(err)
			}
			var r jweResponse
			if err := json.Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			hb, _ := b64url.DecodeString(r.Protected)
			wantPrefix := `{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"` + kind + `","kty":"EC","x":"`
			if kind == "RSA" {
				wantPrefix = `{"alg":"RSA-OAEP-256","enc":"A256GCM"}`
			}
			if !strings.HasPrefix(string(hb), wantPrefix) {
				t.Fatalf("protected header %s, want trustee's layout %s…", hb, wantPrefix)
			}
			obj, err := jose.ParseEncryptedJSON(string(b), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.RSA_OAEP_256}, []jose.ContentEncryption{jose.A256GCM})
			if err != nil {
				t.Fatal(err)
			}
			got, err := obj.Decrypt(priv)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("go-jose decrypt = %q, %v", got, err)
			}
			tampered := tamperJWE(b)
			obj, err = jose.ParseEncryptedJSON(string(tampered), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW, jose.RSA_OAEP_256}, []jose.ContentEncryption{jose.A256GCM})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := obj.Decrypt(priv); err == nil {
				t.Fatal("tampered JWE decrypted")
			}
		})
	}
}

func TestTEEPubKeyCheck(t *testing.T) {
	good, _ := pubOf(t, "P-256")
	offCurve := good
	offCurve.Y = good.X
	rsaPub, _ := pubOf(t, "RSA")
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		k    teePubKey
		ok   bool
	}{
		{"ec", good, true},
		{"rsa", rsaPub, true},
		{"off-curve", offCurve, false},
		{"wrong-alg", teePubKey{Kty: "EC", Crv: "P-256", Alg: "ECDH-ES", X: good.X, Y: good.Y}, false},
		{"unknown-curve", teePubKey{Kty: "EC", Crv: "P-384", Alg: "ECDH-ES+A256KW", X: good.X, Y: good.Y}, false},
		{"rsa1_5", teePubKey{Kty: "RSA", Alg: "RSA1_5", N: rsaPub.N, E: rsaPub.E}, false},
		{"rsa-1024", teePubKey{Kty: "RSA", Alg: "RSA-OAEP-256", N: b64url.EncodeToString(small.N.Bytes()), E: "AQAB"}, false},
		{"oct", teePubKey{Kty: "oct", Alg: "A256KW"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.k.check(); (err == nil) != tc.ok {
				t.Fatalf("check = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestJWT(t *testing.T) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	tok, err := signJWT(key, map[string]any{"iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "x": "y"})
	if err != nil {
		t.Fatal(err)
	}
	if c, signer, err := verifyJWT(tok, []*ecdsa.PublicKey{&other.PublicKey, &key.PublicKey}, now); err != nil || c["x"] != "y" || signer != &key.PublicKey {
		t.Fatalf("verify = %v, %v", c, err)
	}
	parts := strings.Split(tok, ".")
	none := b64url.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + "."
	for _, tc := range []struct {
		name    string
		tok     string
		trusted *ecdsa.PublicKey
		at      time.Time
	}{
		{"untrusted-key", tok, &other.PublicKey, now},
		{"expired", tok, &key.PublicKey, now.Add(time.Minute + expLeeway)},
		{"alg-none", none, &key.PublicKey, now},
		{"payload-swapped", parts[0] + "." + b64url.EncodeToString([]byte(`{"exp":9999999999}`)) + "." + parts[2], &key.PublicKey, now},
		{"garbage", "a.b", &key.PublicKey, now},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := verifyJWT(tc.tok, []*ecdsa.PublicKey{tc.trusted}, tc.at); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

type rawClient struct {
	t    *testing.T
	s    *Server
	hc   *http.Client
	sess *http.Cookie
}

func newRawClient(t *testing.T, s *Server) *rawClient {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CACertPEM())
	return &rawClient{t: t, s: s, hc: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
}

func (c *rawClient) do(method, path string, body any, bearer string) (int, kbsError, []byte) {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.s.URL()+path, rd)
	if c.sess != nil {
		req.AddCookie(c.sess)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	for _, ck := range resp.Cookies() {
		if ck.Name == "kbs-session-id" {
			c.sess = ck
		}
	}
	b, _ := io.ReadAll(resp.Body)
	var e kbsError
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e, b
}

// attestSample runs RCAR by hand with sample evidence over rd (nil: the
// correct report data).
func (c *rawClient) attestSample(key teePubKey, corrupt bool) (int, kbsError, []byte) {
	c.t.Helper()
	st, _, b := c.do("POST", "/kbs/v0/auth", map[string]any{"version": "0.4.0", "tee": "sample", "extra-params": map[string]any{}}, "")
	if st != 200 {
		c.t.Fatalf("auth: %d %s", st, b)
	}
	var ch struct {
		Nonce       string `json:"nonce"`
		ExtraParams string `json:"extra-params"`
	}
	if err := json.Unmarshal(b, &ch); err != nil || ch.ExtraParams != "" {
		c.t.Fatalf("challenge %s: %v", b, err)
	}
	if n, err := base64.StdEncoding.DecodeString(ch.Nonce); err != nil || len(n) != 32 {
		c.t.Fatalf("nonce %q is not b64 of 32 bytes", ch.Nonce)
	}
	rd, _ := canonjson.Marshal(map[string]any{"additional-evidence": "", "nonce": ch.Nonce, "tee-pubkey": key})
	digest := hashOf(crypto.SHA384, rd)
	if corrupt {
		digest[0] ^= 1
	}
	ev, _ := sample.New().Evidence(context.Background(), digest)
	return c.do("POST", "/kbs/v0/attest", map[string]any{
		"init-data":    nil,
		"runtime-data": map[string]any{"nonce": ch.Nonce, "tee-pubkey": key},
		"tee-evidence": map[string]any{"primary_evidence": json.RawMessage(ev), "additional_evidence": ""},
	}, "")
}

func TestProtocol(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "default", "key"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "default", "key", "k1"), []byte("from-dir"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "outside"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := StartTB(t, Options{ResourceDir: dir})
	key, priv := pubOf(t, "P-256")

	c := newRawClient(t, s)
	if st, e, _ := c.do("POST", "/kbs/v0/auth", map[string]any{"version": "0.2.0", "tee": "sample", "extra-params": ""}, ""); st != 401 || !strings.Contains(e.Detail, "Version Mismatch") {
		t.Fatalf("old version: %d %+v", st, e)
	}
	if st, _, _ := c.do("POST", "/kbs/v0/auth", map[string]any{"version": "0.4.0", "tee": "snp", "extra-params": ""}, ""); st != 401 {
		t.Fatalf("tee without verifier: %d", st)
	}
	if st, e, _ := newRawClient(t, s).do("POST", "/kbs/v0/attest", map[string]any{}, ""); st != 401 || !strings.Contains(e.Detail, "session") {
		t.Fatalf("attest without session: %d %+v", st, e)
	}
	if st, e, _ := c.do("GET", "/kbs/v0/nebula-ca/x", nil, ""); st != 404 || !strings.HasSuffix(e.Type, "/PluginNotFound") {
		t.Fatalf("unknown plugin: %d %+v", st, e)
	}
	if st, _, _ := c.do("GET", "/kbs/v0/resource/default/key", nil, ""); st != 404 {
		t.Fatalf("two segments: %d", st)
	}
	if st, e, _ := c.do("GET", "/kbs/v0/resource/default/key/k1", nil, ""); st != 401 || !strings.HasSuffix(e.Type, "/TokenNotFound") {
		t.Fatalf("resource without token: %d %+v", st, e)
	}

	if st, e, _ := newRawClient(t, s).attestSample(key, true); st != 401 || !strings.Contains(e.Detail, "report_data") {
		t.Fatalf("bad report data: %d %+v", st, e)
	}
	st, _, b := c.attestSample(key, false)
	if st != 200 {
		t.Fatalf("attest: %d %s", st, b)
	}
	var ar struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(b, &ar); err != nil {
		t.Fatal(err)
	}
	claims, _, err := verifyJWT(ar.Token, []*ecdsa.PublicKey{s.TokenPublicKey()}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if k, err := tokenTEEKey(claims); err != nil || k != key {
		t.Fatalf("token tee-pubkey %+v, %v", k, err)
	}

	decrypt := func(b []byte) string {
		obj, err := jose.ParseEncryptedJSON(string(b), []jose.KeyAlgorithm{jose.ECDH_ES_A256KW}, []jose.ContentEncryption{jose.A256GCM})
		if err != nil {
			t.Fatalf("%v: %s", err, b)
		}
		p, err := obj.Decrypt(priv)
		if err != nil {
			t.Fatal(err)
		}
		return string(p)
	}
	// By session cookie, then by bearer token alone.
	if st, _, b := c.do("GET", "/kbs/v0/resource/default/key/k1", nil, ""); st != 200 || decrypt(b) != "from-dir" {
		t.Fatalf("cookie: %d %s", st, b)
	}
	bearer := newRawClient(t, s)
	s.SetResource("a/b/c", []byte("in-memory"))
	if st, _, b := bearer.do("GET", "/kbs/v0/resource/a/b/c", nil, ar.Token); st != 200 || decrypt(b) != "in-memory" {
		t.Fatalf("bearer: %d %s", st, b)
	}
	for _, p := range []string{"default/key/missing", "default/key/..", "default/../outside"} {
		if st, _, _ := bearer.do("GET", "/kbs/v0/resource/"+p, nil, ar.Token); st == 200 {
			t.Fatalf("%s served", p)
		}
	}
	s.RevokeTokens()
	if st, e, _ := bearer.do("GET", "/kbs/v0/resource/a/b/c", nil, ar.Token); st != 401 || !strings.Contains(e.Detail, "revoked") {
		t.Fatalf("revoked token: %d %+v", st, e)
	}
	if got := s.Stats(); got.Auth != 4 || got.Attest != 3 || got.Attested != 1 {
		t.Fatalf("stats %+v", got)
	}
}

func TestTokenOfOtherIssuer(t *testing.T) {
	issuer := StartTB(t, Options{})
	plain := StartTB(t, Options{Resources: map[string][]byte{"r/t/g": []byte("x")}})
	passport := StartTB(t, Options{Resources: map[string][]byte{"r/t/g": []byte("x")}, TrustedTokenKeys: []*ecdsa.PublicKey{issuer.TokenPublicKey()}})
	key, _ := pubOf(t, "P-256")
	st, _, b := newRawClient(t, issuer).attestSample(key, false)
	if st != 200 {
		t.Fatal(st)
	}
	var ar struct{ Token string }
	_ = json.Unmarshal(b, &ar)
	if st, _, _ := newRawClient(t, plain).do("GET", "/kbs/v0/resource/r/t/g", nil, ar.Token); st != 401 {
		t.Fatalf("untrusted issuer: %d", st)
	}
	if st, _, b := newRawClient(t, passport).do("GET", "/kbs/v0/resource/r/t/g", nil, ar.Token); st != 200 {
		t.Fatalf("trusted issuer: %d %s", st, b)
	}
}
