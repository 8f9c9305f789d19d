package kbs

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
)

// teePubKey is the tee-pubkey JWK in the fixed shape kbs-types
// deserializes and re-serializes (unknown members are dropped).
type teePubKey struct {
	Kty string `json:"kty"`
	Crv string `json:"crv,omitempty"`
	Alg string `json:"alg"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
}

var b64url = base64.RawURLEncoding

// check validates the key the way the KBS would have to use it.
func (k teePubKey) check() error {
	switch k.Kty {
	case "EC":
		if k.Alg != "ECDH-ES+A256KW" {
			return fmt.Errorf("EC tee-pubkey alg %q", k.Alg)
		}
		_, err := k.ecdh()
		return err
	case "RSA":
		if k.Alg != "RSA-OAEP-256" {
			return fmt.Errorf("RSA tee-pubkey alg %q", k.Alg)
		}
		_, err := k.rsa()
		return err
	}
	return fmt.Errorf("tee-pubkey kty %q", k.Kty)
}

func (k teePubKey) curve() (ecdh.Curve, int, error) {
	switch k.Crv {
	case "P-256":
		return ecdh.P256(), 32, nil
	case "P-521":
		return ecdh.P521(), 66, nil
	}
	return nil, 0, fmt.Errorf("tee-pubkey crv %q", k.Crv)
}

func (k teePubKey) ecdh() (*ecdh.PublicKey, error) {
	c, size, err := k.curve()
	if err != nil {
		return nil, err
	}
	x, err1 := b64url.DecodeString(k.X)
	y, err2 := b64url.DecodeString(k.Y)
	if err1 != nil || err2 != nil || len(x) != size || len(y) != size {
		return nil, fmt.Errorf("tee-pubkey x/y: want %d bytes of base64url each", size)
	}
	pub, err := c.NewPublicKey(append(append([]byte{4}, x...), y...))
	if err != nil {
		return nil, fmt.Errorf("tee-pubkey is not a point on %s: %w", k.Crv, err)
	}
	return pub, nil
}

func (k teePubKey) rsa() (*rsa.PublicKey, error) {
	n, err1 := b64url.DecodeString(k.N)
	e, err2 := b64url.DecodeString(k.E)
	if err1 != nil || err2 != nil || len(e) == 0 || len(e) > 4 || len(n) == 0 || n[0] == 0 {
		return nil, errors.New("tee-pubkey n/e: bad base64url big-endian integers")
	}
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	if pub.N.BitLen() < 2048 || pub.E < 3 || pub.E%2 == 0 {
		return nil, fmt.Errorf("tee-pubkey RSA key: %d bits, e=%d", pub.N.BitLen(), pub.E)
	}
	return pub, nil
}

// jweResponse is the flattened JWE JSON the KBS sends, members in its order.
type jweResponse struct {
	Protected    string `json:"protected"`
	EncryptedKey string `json:"encrypted_key"`
	IV           string `json:"iv"`
	Ciphertext   string `json:"ciphertext"`
	Tag          string `json:"tag"`
}

type epk struct {
	Crv string `json:"crv"`
	Kty string `json:"kty"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// jweHeader reproduces trustee's protected header bytes: alg, enc, then epk
// with crv, kty, x, y.
type jweHeader struct {
	Alg string `json:"alg"`
	Enc string `json:"enc"`
	Epk *epk   `json:"epk,omitempty"`
}

// encryptJWE encrypts plaintext to the TEE key as trustee's KBS does:
// a random A256GCM content key wrapped with ECDH-ES+A256KW (Concat KDF,
// AES key wrap) or RSA-OAEP-256; AAD is the protected header's base64url.
// The key agreement and wrapping are written out here rather than taken
// from go-jose so that the client's go-jose decryption is checked against an
// independent implementation.
func encryptJWE(k teePubKey, plaintext []byte) ([]byte, error) {
	cek := make([]byte, 32)
	if _, err := rand.Read(cek); err != nil {
		return nil, err
	}
	var h jweHeader
	var wrapped []byte
	switch k.Kty {
	case "EC":
		pub, err := k.ecdh()
		if err != nil {
			return nil, err
		}
		c, size, _ := k.curve()
		eph, err := c.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		z, err := eph.ECDH(pub)
		if err != nil {
			return nil, err
		}
		kek := concatKDF(z, "ECDH-ES+A256KW", nil, nil, 256)
		if wrapped, err = aesKeyWrap(kek, cek); err != nil {
			return nil, err
		}
		pt := eph.PublicKey().Bytes()
		h = jweHeader{Alg: "ECDH-ES+A256KW", Enc: "A256GCM", Epk: &epk{Crv: k.Crv, Kty: "EC", X: b64url.EncodeToString(pt[1 : 1+size]), Y: b64url.EncodeToString(pt[1+size:])}}
	case "RSA":
		pub, err := k.rsa()
		if err != nil {
			return nil, err
		}
		if wrapped, err = rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, cek, nil); err != nil {
			return nil, err
		}
		h = jweHeader{Alg: "RSA-OAEP-256", Enc: "A256GCM"}
	default:
		return nil, fmt.Errorf("tee-pubkey kty %q", k.Kty)
	}
	hb, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	protected := b64url.EncodeToString(hb)
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, err
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	iv := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	sealed := gcm.Seal(nil, iv, plaintext, []byte(protected))
	ct, tag := sealed[:len(sealed)-gcm.Overhead()], sealed[len(sealed)-gcm.Overhead():]
	return json.Marshal(jweResponse{
		Protected:    protected,
		EncryptedKey: b64url.EncodeToString(wrapped),
		IV:           b64url.EncodeToString(iv),
		Ciphertext:   b64url.EncodeToString(ct),
		Tag:          b64url.EncodeToString(tag),
	})
}

// concatKDF is the NIST SP 800-56A single-step KDF with SHA-256 as JWA
// (RFC 7518 §4.6.2) uses it: AlgorithmID, PartyUInfo and PartyVInfo are
// length-prefixed, SuppPubInfo is the key length in bits. keyBits ≤ 256.
func concatKDF(z []byte, alg string, apu, apv []byte, keyBits int) []byte {
	h := sha256.New()
	var n [4]byte
	put := func(v uint32) {
		binary.BigEndian.PutUint32(n[:], v)
		h.Write(n[:])
	}
	put(1) // round
	h.Write(z)
	for _, f := range [][]byte{[]byte(alg), apu, apv} {
		put(uint32(len(f)))
		h.Write(f)
	}
	put(uint32(keyBits))
	return h.Sum(nil)[:keyBits/8]
}

// aesKeyWrap is RFC 3394 AES key wrap with the default IV.
func aesKeyWrap(kek, key []byte) ([]byte, error) {
	if len(key)%8 != 0 || len(key) < 16 {
		return nil, errors.New("key wrap: key must be a multiple of 8 bytes, at least 16")
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(key) / 8
	a := uint64(0xa6a6a6a6a6a6a6a6)
	r := make([]byte, len(key))
	copy(r, key)
	var b [16]byte
	for j := range 6 {
		for i := range n {
			binary.BigEndian.PutUint64(b[:8], a)
			copy(b[8:], r[i*8:i*8+8])
			block.Encrypt(b[:], b[:])
			a = binary.BigEndian.Uint64(b[:8]) ^ uint64(n*j+i+1)
			copy(r[i*8:], b[8:])
		}
	}
	out := make([]byte, 8, 8+len(r))
	binary.BigEndian.PutUint64(out, a)
	return append(out, r...), nil
}

// tamperJWE flips one bit of the ciphertext of a JWE response.
func tamperJWE(b []byte) []byte {
	var r jweResponse
	if json.Unmarshal(b, &r) != nil {
		return b
	}
	ct, err := b64url.DecodeString(r.Ciphertext)
	if err != nil || len(ct) == 0 {
		return b
	}
	ct[len(ct)/2] ^= 1
	r.Ciphertext = b64url.EncodeToString(ct)
	out, err := json.Marshal(r)
	if err != nil {
		return b
	}
	return out
}
