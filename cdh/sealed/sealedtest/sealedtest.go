// Package sealedtest makes sealed secrets for tests: an ES256 signing key,
// its public JWK (what a KBS serves at the signature's kid), and
// sealed.<header>.<payload>.<signature> strings of the vault type.
package sealedtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
)

// Signer signs sealed secrets with one P-256 key.
type Signer struct {
	key *ecdsa.PrivateKey
	// JWK is the public key as the unsealer fetches it from the kid.
	JWK []byte
}

// NewSigner makes a fresh key.
func NewSigner() (*Signer, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	raw, err := k.PublicKey.Bytes() // 0x04 || X || Y
	if err != nil {
		return nil, err
	}
	j, err := json.Marshal(map[string]string{
		"kty": "EC", "crv": "P-256",
		"x": base64.RawURLEncoding.EncodeToString(raw[1:33]),
		"y": base64.RawURLEncoding.EncodeToString(raw[33:]),
	})
	if err != nil {
		return nil, err
	}
	return &Signer{key: k, JWK: j}, nil
}

// Vault returns a signed vault-type sealed secret naming the KBS resource
// name (kbs:///repo/type/tag), signed with the key found at kid.
func (s *Signer) Vault(kid, name string) (string, error) {
	hdr, err := json.Marshal(map[string]string{"alg": "ES256", "kid": kid})
	if err != nil {
		return "", err
	}
	pl, err := json.Marshal(map[string]any{
		"version": "0.1.0", "type": "vault", "name": name, "provider": "kbs",
		"provider_settings": map[string]any{}, "annotations": map[string]any{},
	})
	if err != nil {
		return "", err
	}
	h := base64.RawURLEncoding.EncodeToString(hdr) + "." + base64.RawURLEncoding.EncodeToString(pl)
	d := sha256.Sum256([]byte(h))
	r, ss, err := ecdsa.Sign(rand.Reader, s.key, d[:])
	if err != nil {
		return "", fmt.Errorf("sign: %w", err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	return "sealed." + h + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}
