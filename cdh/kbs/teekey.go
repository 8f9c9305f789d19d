package kbs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"
)

// KeyAlgorithm selects the TEE key pair (aa.toml tee_key_algorithm).
type KeyAlgorithm string

// TEE key algorithms, spelled as aa.toml spells them.
const (
	KeyECDHP256 KeyAlgorithm = "ECDH-ES+A256KW-P256"
	KeyECDHP521 KeyAlgorithm = "ECDH-ES+A256KW-P521"
	KeyRSAOAEP  KeyAlgorithm = "RSA-OAEP-256"
)

// JWE algorithm names.
const (
	AlgECDHESA256KW = "ECDH-ES+A256KW"
	AlgRSAOAEP256   = "RSA-OAEP-256"
	EncA256GCM      = "A256GCM"
)

// rsaBits is the size of the RSA TEE key (as guest-components).
const rsaBits = 2048

// ParseKeyAlgorithm parses aa.toml's tee_key_algorithm; "" is the default,
// EC P-256.
func ParseKeyAlgorithm(s string) (KeyAlgorithm, error) {
	switch KeyAlgorithm(s) {
	case "", KeyECDHP256:
		return KeyECDHP256, nil
	case KeyECDHP521, KeyRSAOAEP:
		return KeyAlgorithm(s), nil
	}
	return "", fmt.Errorf("tee_key_algorithm %q: want %s, %s or %s: %w", s, KeyECDHP256, KeyECDHP521, KeyRSAOAEP, errdefs.ErrInvalidArgument)
}

// teeKey is the TEE key pair: exactly one of ec and rsa is set.
type teeKey struct {
	alg KeyAlgorithm
	ec  *ecdsa.PrivateKey
	rsa *rsa.PrivateKey
	pub TEEPubKey
}

func newTEEKey(alg KeyAlgorithm) (*teeKey, error) {
	k := &teeKey{alg: alg}
	switch alg {
	case KeyECDHP256, KeyECDHP521:
		c := elliptic.P256()
		if alg == KeyECDHP521 {
			c = elliptic.P521()
		}
		priv, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generating TEE key: %w", err)
		}
		k.ec = priv
		size := (c.Params().BitSize + 7) / 8
		// Uncompressed point 04 || X || Y, each size bytes big-endian.
		pt, err := priv.PublicKey.ECDH()
		if err != nil {
			return nil, fmt.Errorf("TEE key: %w", err)
		}
		raw := pt.Bytes()
		k.pub = TEEPubKey{
			Kty: "EC",
			Crv: c.Params().Name,
			Alg: AlgECDHESA256KW,
			X:   b64url(raw[1 : 1+size]),
			Y:   b64url(raw[1+size:]),
		}
	case KeyRSAOAEP:
		priv, err := rsa.GenerateKey(rand.Reader, rsaBits)
		if err != nil {
			return nil, fmt.Errorf("generating TEE key: %w", err)
		}
		k.rsa = priv
		k.pub = TEEPubKey{
			Kty: "RSA",
			Alg: AlgRSAOAEP256,
			N:   b64url(priv.N.Bytes()),
			E:   b64url(big.NewInt(int64(priv.E)).Bytes()),
		}
	default:
		return nil, fmt.Errorf("TEE key algorithm %q: %w", alg, errdefs.ErrInvalidArgument)
	}
	return k, nil
}

func b64url(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// pem returns the private key as the AA's GetToken hands it to the CDH:
// RSA as PKCS#1, EC as PKCS#8.
func (k *teeKey) pem() ([]byte, error) {
	if k.rsa != nil {
		return pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k.rsa)}), nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.ec)
	if err != nil {
		return nil, fmt.Errorf("encoding TEE key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// protectedHeader is the part of a JWE protected header the client checks
// before handing the object to go-jose.
type protectedHeader struct {
	Alg string          `json:"alg"`
	Enc string          `json:"enc"`
	Zip *string         `json:"zip"`
	Epk json.RawMessage `json:"epk"`
}

// maxJWE bounds the JWE text decrypt accepts (base64 grows data by 4/3).
func maxJWE(maxPlain int64) int64 { return maxPlain*4/3 + 64<<10 }

// decrypt decrypts a KBS resource response (flattened JWE JSON) with the TEE
// key: alg ECDH-ES+A256KW (EC key) or RSA-OAEP-256 (RSA key), enc A256GCM,
// no compression. Anything else, or any integrity failure, is an error
// wrapping errdefs.ErrDataLoss (a tampered or misdirected answer), except a
// malformed document (errdefs.ErrInvalidArgument).
func (k *teeKey) decrypt(body []byte) ([]byte, error) {
	var r Response
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("resource response is not a JWE JSON object: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	hb, err := base64.RawURLEncoding.DecodeString(r.Protected)
	if err != nil {
		return nil, fmt.Errorf("JWE protected header: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var h protectedHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return nil, fmt.Errorf("JWE protected header: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	wantAlg := AlgECDHESA256KW
	var key any = k.ec
	if k.rsa != nil {
		wantAlg, key = AlgRSAOAEP256, k.rsa
	}
	switch {
	case h.Alg != wantAlg:
		return nil, fmt.Errorf("JWE alg %q, want %q for this TEE key: %w", h.Alg, wantAlg, errdefs.ErrDataLoss)
	case h.Enc != EncA256GCM:
		return nil, fmt.Errorf("JWE enc %q, want %q: %w", h.Enc, EncA256GCM, errdefs.ErrDataLoss)
	case h.Zip != nil:
		return nil, fmt.Errorf("JWE zip %q not accepted: %w", *h.Zip, errdefs.ErrDataLoss)
	}
	obj, err := jose.ParseEncryptedJSON(string(body),
		[]jose.KeyAlgorithm{jose.KeyAlgorithm(wantAlg)}, []jose.ContentEncryption{jose.A256GCM})
	if err != nil {
		return nil, fmt.Errorf("parsing JWE: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	plain, err := obj.Decrypt(key)
	if err != nil {
		return nil, fmt.Errorf("decrypting JWE with the TEE key: %v: %w", err, errdefs.ErrDataLoss)
	}
	return plain, nil
}
