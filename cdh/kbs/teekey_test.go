package kbs

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"
)

// encryptTo makes a flattened JWE for k's public key with go-jose.
func encryptTo(t *testing.T, k *teeKey, alg jose.KeyAlgorithm, plain []byte, extra map[jose.HeaderKey]any) []byte {
	t.Helper()
	var pub any
	if k.rsa != nil {
		pub = &k.rsa.PublicKey
	} else {
		pub = &k.ec.PublicKey
	}
	enc, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: alg, Key: pub}, &jose.EncrypterOptions{ExtraHeaders: extra})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := enc.Encrypt(plain)
	if err != nil {
		t.Fatal(err)
	}
	return []byte(obj.FullSerialize())
}

func mutate(t *testing.T, b []byte, f func(r *Response)) []byte {
	t.Helper()
	var r Response
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	f(&r)
	out, _ := json.Marshal(r)
	return out
}

func flip(s string) string {
	b, _ := base64.RawURLEncoding.DecodeString(s)
	b[len(b)/2] ^= 1
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestDecrypt(t *testing.T) {
	plain := []byte("top secret \x00 bytes")
	for _, tc := range []struct {
		alg    KeyAlgorithm
		jalg   jose.KeyAlgorithm
		wrongA jose.KeyAlgorithm
	}{
		{KeyECDHP256, jose.ECDH_ES_A256KW, jose.ECDH_ES_A128KW},
		{KeyECDHP521, jose.ECDH_ES_A256KW, jose.ECDH_ES},
		{KeyRSAOAEP, jose.RSA_OAEP_256, jose.RSA1_5},
	} {
		t.Run(string(tc.alg), func(t *testing.T) {
			k, err := newTEEKey(tc.alg)
			if err != nil {
				t.Fatal(err)
			}
			good := encryptTo(t, k, tc.jalg, plain, nil)
			got, err := k.decrypt(good)
			if err != nil || string(got) != string(plain) {
				t.Fatalf("decrypt = %q, %v", got, err)
			}
			other, _ := newTEEKey(tc.alg)
			for _, bad := range []struct {
				name  string
				body  []byte
				class error
			}{
				{"ciphertext", mutate(t, good, func(r *Response) { r.Ciphertext = flip(r.Ciphertext) }), errdefs.ErrDataLoss},
				{"tag", mutate(t, good, func(r *Response) { r.Tag = flip(r.Tag) }), errdefs.ErrDataLoss},
				{"iv", mutate(t, good, func(r *Response) { r.IV = flip(r.IV) }), errdefs.ErrDataLoss},
				{"encrypted-key", mutate(t, good, func(r *Response) { r.EncryptedKey = flip(r.EncryptedKey) }), errdefs.ErrDataLoss},
				{"other-tee-key", encryptTo(t, other, tc.jalg, plain, nil), errdefs.ErrDataLoss},
				{"weaker-alg", encryptTo(t, k, tc.wrongA, plain, nil), errdefs.ErrDataLoss},
				{"zip", encryptTo(t, k, tc.jalg, plain, map[jose.HeaderKey]any{"zip": "DEF"}), errdefs.ErrDataLoss},
				{"aad-swapped-header", mutate(t, good, func(r *Response) {
					h, _ := base64.RawURLEncoding.DecodeString(r.Protected)
					r.Protected = base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(h), `"enc"`, `"kid":"x","enc"`, 1)))
				}), errdefs.ErrDataLoss},
				{"not-json", []byte("<html>"), errdefs.ErrInvalidArgument},
				{"bad-header", []byte(`{"protected":"!!!"}`), errdefs.ErrInvalidArgument},
			} {
				t.Run(bad.name, func(t *testing.T) {
					out, err := k.decrypt(bad.body)
					if !errors.Is(err, bad.class) {
						t.Fatalf("decrypt = %q, %v; want %v", out, err, bad.class)
					}
				})
			}
		})
	}
}

func TestPEM(t *testing.T) {
	for _, alg := range []KeyAlgorithm{KeyECDHP256, KeyECDHP521, KeyRSAOAEP} {
		t.Run(string(alg), func(t *testing.T) {
			k, err := newTEEKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			p, err := k.pem()
			if err != nil {
				t.Fatal(err)
			}
			blk, rest := pem.Decode(p)
			if blk == nil || len(rest) != 0 {
				t.Fatalf("not one PEM block: %s", p)
			}
			switch alg {
			case KeyRSAOAEP:
				if blk.Type != "RSA PRIVATE KEY" {
					t.Fatalf("type %q, want PKCS#1", blk.Type)
				}
				got, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
				if err != nil || !got.Equal(k.rsa) {
					t.Fatalf("PKCS#1 round trip: %v", err)
				}
			default:
				if blk.Type != "PRIVATE KEY" {
					t.Fatalf("type %q, want PKCS#8", blk.Type)
				}
				got, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
				if err != nil {
					t.Fatal(err)
				}
				if ec, ok := got.(*ecdsa.PrivateKey); !ok || !ec.Equal(k.ec) {
					t.Fatalf("PKCS#8 round trip: %T", got)
				}
			}
		})
	}
}
