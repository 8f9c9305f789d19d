package sealedtest

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"testing"
)

// Envelope returns an unsigned envelope sealed secret, for an unsealer
// with signature verification off: plaintext encrypted under a fresh
// 256-bit data key with wrapType ("A256GCM" or "A256CTR"), and the data
// key as wrap (the KMS's side of the test) encrypts it.
func Envelope(tb testing.TB, provider, keyID, wrapType string, plaintext []byte, settings, annotations map[string]any, wrap func(dek []byte) []byte) string {
	tb.Helper()
	dek := make([]byte, 32)
	rand.Read(dek)
	block, err := aes.NewCipher(dek)
	if err != nil {
		tb.Fatal(err)
	}
	var iv, data []byte
	if wrapType == "A256CTR" {
		iv = make([]byte, 16)
		rand.Read(iv)
		data = make([]byte, len(plaintext))
		cipher.NewCTR(block, iv).XORKeyStream(data, plaintext)
	} else {
		iv = make([]byte, 12)
		rand.Read(iv)
		g, err := cipher.NewGCM(block)
		if err != nil {
			tb.Fatal(err)
		}
		data = g.Seal(nil, iv, plaintext, nil)
	}
	std := base64.StdEncoding.EncodeToString
	p, err := json.Marshal(map[string]any{
		"version": "0.1.0", "type": "envelope", "provider": provider, "key_id": keyID,
		"encrypted_key": std(wrap(dek)), "encrypted_data": std(data), "wrap_type": wrapType, "iv": std(iv),
		"provider_settings": settings, "annotations": annotations,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return "sealed.fakejwsheader." + base64.RawURLEncoding.EncodeToString(p) + ".fakesignature"
}
