// Package ocicrypttest encrypts layers in the ocicrypt format for tests:
// the layer cipher, JWE recipients and CoCo key provider packets, so that
// tests can build encrypted images without skopeo or coco-keyprovider.
package ocicrypttest

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/ocicrypt"
)

// Encrypted is an encrypted layer blob with what its descriptor needs.
type Encrypted struct {
	Blob []byte
	// PrivOpts is the private options JSON (key and nonce) to wrap.
	PrivOpts []byte
	// PubOpts is the value of the pubopts annotation.
	PubOpts string
}

// Encrypt encrypts plain (a layer blob, compressed or not) with a fresh
// key and nonce, as containers/ocicrypt does.
func Encrypt(plain []byte) (Encrypted, error) {
	key := make([]byte, 32)
	nonce := make([]byte, aes.BlockSize)
	if _, err := rand.Read(key); err != nil {
		return Encrypted{}, err
	}
	if _, err := rand.Read(nonce); err != nil {
		return Encrypted{}, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return Encrypted{}, err
	}
	ct := make([]byte, len(plain))
	cipher.NewCTR(block, nonce).XORKeyStream(ct, plain)
	mac := hmac.New(sha256.New, key)
	mac.Write(ct)
	priv, _ := json.Marshal(ocicrypt.PrivateOptions{
		SymKey: key, Digest: oci.FromBytes(plain).String(), CipherOptions: map[string][]byte{"nonce": nonce},
	})
	pub, _ := json.Marshal(ocicrypt.PublicOptions{Cipher: ocicrypt.CipherAES256CTR, HMAC: mac.Sum(nil), CipherOptions: map[string][]byte{}})
	return Encrypted{Blob: ct, PrivOpts: priv, PubOpts: base64.StdEncoding.EncodeToString(pub)}, nil
}

// WrapJWE returns the value of the JWE annotation wrapping privOpts for
// the public keys (RSA keys get RSA-OAEP, EC keys ECDH-ES+A256KW, as
// ocicrypt chooses), content encrypted with A256GCM.
func WrapJWE(privOpts []byte, pubKeys ...any) (string, error) {
	var rcpts []jose.Recipient
	for _, k := range pubKeys {
		alg := jose.RSA_OAEP
		if _, ok := k.(*ecdsa.PublicKey); ok {
			alg = jose.ECDH_ES_A256KW
		}
		rcpts = append(rcpts, jose.Recipient{Algorithm: alg, Key: k})
	}
	enc, err := jose.NewMultiEncrypter(jose.A256GCM, rcpts, nil)
	if err != nil {
		return "", err
	}
	obj, err := enc.Encrypt(privOpts)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString([]byte(obj.FullSerialize())), nil
}

// Packet builds a CoCo AnnotationPacket wrapping privOpts with kek (32
// bytes) and returns the annotation value (base64 of its JSON). v2 adds
// the version and provider fields.
func Packet(privOpts, kek []byte, kid, wrapType string, v2 bool) (string, error) {
	block, err := aes.NewCipher(kek)
	if err != nil {
		return "", err
	}
	var iv, wrapped []byte
	switch wrapType {
	case ocicrypt.WrapA256GCM:
		iv = make([]byte, 12)
		rand.Read(iv)
		gcm, err := cipher.NewGCM(block)
		if err != nil {
			return "", err
		}
		wrapped = gcm.Seal(nil, iv, privOpts, nil)
	case ocicrypt.WrapA256CTR:
		iv = make([]byte, aes.BlockSize)
		rand.Read(iv)
		wrapped = make([]byte, len(privOpts))
		cipher.NewCTR(block, iv).XORKeyStream(wrapped, privOpts)
	default:
		return "", fmt.Errorf("wrap type %q", wrapType)
	}
	p := ocicrypt.AnnotationPacket{
		Kid: kid, WrappedData: base64.StdEncoding.EncodeToString(wrapped),
		IV: base64.StdEncoding.EncodeToString(iv), WrapType: wrapType,
	}
	if v2 {
		p.Version, p.Provider = "0.1.0", "kbs"
		p.ProviderSettings, p.Annotations = json.RawMessage("{}"), json.RawMessage("{}")
	}
	b, _ := json.Marshal(p)
	return base64.StdEncoding.EncodeToString(b), nil
}
