package kbs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/cova-project/cova/attester/sample"
)

// fzKey returns a fixed EC P-256 TEE key (scalar d repeated), so seed JWEs
// made at f.Add time decrypt in every fuzz worker.
func fzKey(tb testing.TB, d byte) *teeKey {
	tb.Helper()
	priv, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{d}, 32))
	if err != nil {
		tb.Fatal(err)
	}
	pt, err := priv.PublicKey.ECDH()
	if err != nil {
		tb.Fatal(err)
	}
	raw := pt.Bytes()
	return &teeKey{alg: KeyECDHP256, ec: priv, pub: TEEPubKey{
		Kty: "EC", Crv: "P-256", Alg: AlgECDHESA256KW, X: b64url(raw[1:33]), Y: b64url(raw[33:]),
	}}
}

// fzClasses are the errdefs classes the package's errors may carry.
var fzClasses = []error{
	errdefs.ErrInvalidArgument, errdefs.ErrNotImplemented, errdefs.ErrPermissionDenied,
	errdefs.ErrNotFound, errdefs.ErrUnavailable, errdefs.ErrDataLoss, errdefs.ErrOutOfRange,
	errdefs.ErrUnknown, errdefs.ErrInternal,
}

func fzClassed(err error) bool {
	for _, c := range fzClasses {
		if errors.Is(err, c) {
			return true
		}
	}
	return false
}

func fzJWT(payload string) string {
	e := base64.RawURLEncoding.EncodeToString
	return e([]byte(`{"alg":"ES256"}`)) + "." + e([]byte(payload)) + "." + e([]byte("signature-bytes"))
}

// FuzzParseToken: claims parse or fail with INVALID_ARGUMENT; an accepted
// token has an exp within range, is never printed, and a token expired by
// both the KBS's and the guest's clock is never reused.
func FuzzParseToken(f *testing.F) {
	for _, p := range []string{
		`{"iat":1000,"nbf":1000,"exp":1300.5,"submods":{}}`,
		`{"exp":4102444800}`,
		`{"iat":4102444800,"exp":1}`,
		`{"exp":2147483647000}`,
		`{"exp":1e300}`, `{"exp":-1}`, `{"exp":"1"}`, `{"exp":null}`, `{"iat":1}`, `exp`,
	} {
		f.Add(fzJWT(p))
	}
	f.Add("a.b")
	f.Add("a.!!!.c")
	f.Fuzz(func(t *testing.T, raw string) {
		tok, err := ParseToken(raw)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error without INVALID_ARGUMENT: %v", err)
			}
			if len(raw) >= 16 && strings.Contains(err.Error(), raw) {
				t.Fatalf("error quotes the token: %v", err)
			}
			return
		}
		if tok.Raw != raw || tok.Expiry.IsZero() {
			t.Fatalf("accepted token %v without exp", tok)
		}
		for _, c := range []time.Time{tok.Expiry, tok.IssuedAt, tok.NotBefore} {
			if !c.IsZero() && (c.Unix() < 0 || c.Unix() > 2147483647000) {
				t.Fatalf("claim %v out of range", c)
			}
		}
		if sig := raw[strings.LastIndex(raw, ".")+1:]; len(sig) >= 8 && strings.Contains(tok.String(), sig) {
			t.Fatal("String() prints the token")
		}
		now := time.Now()
		tok.accept(now)
		if tok.Expiry.Before(now) && (tok.IssuedAt.IsZero() || !tok.Expiry.After(tok.IssuedAt)) && tok.reusable(now) {
			t.Fatalf("expired token %v reused", tok)
		}
		if life := tok.lifetime(now); life > 0 && tok.validUntil.Sub(now) > life {
			t.Fatalf("token reused for %v, beyond its lifetime %v", tok.validUntil.Sub(now), life)
		}
		_ = tok.clockSkew()
	})
}

// FuzzDecrypt: a resource response decrypts only with the right TEE key;
// everything else is DATA_LOSS or INVALID_ARGUMENT.
func FuzzDecrypt(f *testing.F) {
	right, wrong := fzKey(f, 1), fzKey(f, 2)
	seal := func(k *teeKey, alg jose.KeyAlgorithm, enc jose.ContentEncryption, extra map[jose.HeaderKey]any) []byte {
		e, err := jose.NewEncrypter(enc, jose.Recipient{Algorithm: alg, Key: &k.ec.PublicKey}, &jose.EncrypterOptions{ExtraHeaders: extra})
		if err != nil {
			f.Fatal(err)
		}
		obj, err := e.Encrypt([]byte("resource \x00 secret"))
		if err != nil {
			f.Fatal(err)
		}
		return []byte(obj.FullSerialize())
	}
	good := seal(right, jose.ECDH_ES_A256KW, jose.A256GCM, nil)
	f.Add(good)
	f.Add(seal(right, jose.ECDH_ES_A256KW, jose.A256GCM, map[jose.HeaderKey]any{"zip": "DEF"}))
	f.Add(seal(right, jose.ECDH_ES, jose.A256GCM, nil))
	f.Add(seal(right, jose.ECDH_ES_A128KW, jose.A128GCM, nil))
	f.Add(seal(wrong, jose.ECDH_ES_A256KW, jose.A256GCM, nil))
	var r Response
	if err := json.Unmarshal(good, &r); err != nil {
		f.Fatal(err)
	}
	r.Tag = b64url([]byte("0123456789abcdef"))
	tampered, _ := json.Marshal(r)
	f.Add(tampered)
	f.Add([]byte(`{"protected":"eyJhbGciOiJSU0EtT0FFUC0yNTYiLCJlbmMiOiJBMjU2R0NNIn0","encrypted_key":"","iv":"","ciphertext":"","tag":""}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		plain, err := right.decrypt(body)
		if err != nil {
			if !errors.Is(err, errdefs.ErrDataLoss) && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error without DATA_LOSS or INVALID_ARGUMENT: %v", err)
			}
			return
		}
		if _, err := wrong.decrypt(body); err == nil {
			t.Fatal("a JWE decrypted with two different TEE keys")
		} else if !errors.Is(err, errdefs.ErrDataLoss) && !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("wrong key: error without a class: %v", err)
		}
		again, err := right.decrypt(body)
		if err != nil || !bytes.Equal(again, plain) {
			t.Fatalf("second decryption differs: %v", err)
		}
	})
}

// fzTransport answers the client from memory: the fuzzed challenge (with
// a status) at /auth, the fuzzed attestation answer at /attest.
type fzTransport struct {
	authStatus int
	challenge  []byte
	attest     []byte
	sent       []byte // the /attest request body
}

func (tr *fzTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Request: req, ProtoMajor: 1, ProtoMinor: 1}
	var body []byte
	switch {
	case strings.HasSuffix(req.URL.Path, "/auth"):
		resp.StatusCode = tr.authStatus
		resp.Header.Set("Set-Cookie", SessionCookie+"=fz-session; Path=/")
		body = tr.challenge
	case strings.HasSuffix(req.URL.Path, "/attest"):
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		tr.sent = b
		body = tr.attest
	default:
		resp.StatusCode = http.StatusNotFound
	}
	if req.Body != nil {
		req.Body.Close()
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	return resp, nil
}

// FuzzChallenge runs one RCAR handshake against fuzzed /auth and /attest
// answers. Failures are *Error values with a class and a sanitized detail;
// a success binds exactly the challenge's nonce and the TEE key into the
// evidence and keeps the token the KBS sent.
func FuzzChallenge(f *testing.F) {
	goodToken, _ := json.Marshal(AttestResponse{Token: fzJWT(`{"iat":1000,"exp":4102444800}`)})
	for _, s := range []struct {
		status            uint8
		challenge, attest string
	}{
		{0, `{"nonce":"bm9uY2U=","extra-params":""}`, string(goodToken)},
		{0, `{"nonce":"abc","extra-params":{"selected-hash-algorithm":"sha512"}}`, string(goodToken)},
		{0, `{"nonce":"abc","extra-params":{"selected-hash-algorithm":"sm3"}}`, string(goodToken)},
		{0, `{"nonce":"abc","extra-params":{"selected-hash-algorithm":7}}`, string(goodToken)},
		{0, `{"nonce":"","extra-params":""}`, string(goodToken)},
		{0, `{"nonce":"abc"}`, `{"token":"a.b.c"}`},
		{0, `{"nonce":"abc"}`, `{"token":7}`},
		{1, `{"type":"https://github.com/confidential-containers/kbs/errors/PolicyDeny","detail":"no\x1b[31m way"}`, ""},
		{2, `not json at all`, ""},
		{3, `{"nonce":"abc"}`, ""},
	} {
		f.Add(s.status, []byte(s.challenge), []byte(s.attest))
	}
	c, err := New(Config{URL: "http://kbs.fuzz.invalid", Primary: sample.New(), RCARAttempts: 1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		f.Fatal(err)
	}
	c.key = fzKey(f, 3)
	statuses := []int{http.StatusOK, http.StatusUnauthorized, http.StatusInternalServerError, http.StatusBadRequest, http.StatusNotFound, http.StatusTeapot}
	f.Fuzz(func(t *testing.T, status uint8, challenge, attest []byte) {
		tr := &fzTransport{authStatus: statuses[int(status)%len(statuses)], challenge: challenge, attest: attest}
		c.hc.Transport = tr
		tok, err := c.rcar(context.Background())
		if err != nil {
			var ke *Error
			if !errors.As(err, &ke) {
				t.Fatalf("error is not a *kbs.Error: %v", err)
			}
			if !fzClassed(err) {
				t.Fatalf("error without an errdefs class: %v", err)
			}
			if ke.Status == 0 && tr.authStatus != http.StatusOK && ke.Step == StepAuth {
				t.Fatalf("HTTP %d reported without its status: %v", tr.authStatus, err)
			}
			for _, s := range []string{ke.Detail, ke.Type} {
				if len(s) > maxDetail+len("…") || strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) && r != ' ' }) {
					t.Fatalf("unsanitized KBS text %q", s)
				}
			}
			return
		}
		if tr.authStatus != http.StatusOK || tr.sent == nil {
			t.Fatalf("handshake succeeded on HTTP %d without an /attest", tr.authStatus)
		}
		var ch Challenge
		if err := json.Unmarshal(challenge, &ch); err != nil {
			t.Fatalf("accepted a challenge that is not JSON: %v", err)
		}
		var att Attestation
		if err := json.Unmarshal(tr.sent, &att); err != nil {
			t.Fatalf("sent attestation is not JSON: %v", err)
		}
		if att.RuntimeData.Nonce != ch.Nonce || ch.Nonce == "" || att.RuntimeData.TEEPubKey != c.key.pub {
			t.Fatalf("runtime data %+v does not bind nonce %q and the TEE key", att.RuntimeData, ch.Nonce)
		}
		h, err := SelectedHash(ch.ExtraParams)
		if err != nil {
			t.Fatalf("accepted a challenge whose hash does not parse: %v", err)
		}
		want, err := RuntimeDigest(h, att.RuntimeData, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sample.Verify(att.TeeEvidence.Primary, want); err != nil {
			t.Fatalf("evidence does not carry the runtime digest: %v", err)
		}
		var ar AttestResponse
		if err := json.Unmarshal(attest, &ar); err != nil || ar.Token != tok.Raw || tok.Expiry.IsZero() {
			t.Fatalf("token %v is not the one the KBS sent (%v)", tok, err)
		}
		if c.session != "fz-session" {
			t.Fatalf("session %q", c.session)
		}
	})
}
