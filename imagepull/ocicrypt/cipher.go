// Package ocicrypt reads image layers encrypted in the ocicrypt format
// (media types ending in "+encrypted"): the layer cipher
// (AES-256-CTR with an HMAC-SHA256 over the ciphertext, as
// containers/ocicrypt writes it) and the ways to recover its key from the
// layer's annotations: JWE recipients with local private keys (what
// `skopeo copy --encryption-key jwe:pub.pem` writes) and the CoCo
// attestation-agent key provider packet, whose key-encryption key is a
// confidential resource ("kbs:///…").
//
// The cipher is implemented here rather than imported: the
// containers/ocicrypt blockcipher package drags in cgo (miekg/pkcs11) when
// built with cgo, and it only checks the HMAC after handing out all the
// plaintext, like this one. Callers must therefore treat everything read
// before io.EOF as unauthenticated: the puller unpacks into a staging
// directory and commits only after the reader returned io.EOF.
package ocicrypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash"
	"io"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/internal/textclip"
)

// Annotations and values of the ocicrypt format.
const (
	// AnnotationPubOpts holds base64 of the public cipher options (cipher
	// name and HMAC).
	AnnotationPubOpts = "org.opencontainers.image.enc.pubopts"
	// AnnotationJWE holds comma-separated base64 JWE documents, each
	// wrapping the private options for its recipients.
	AnnotationJWE = "org.opencontainers.image.enc.keys.jwe"
	// AnnotationKeyProviderPrefix starts the annotations of key provider
	// plugins; the rest of the name is the provider.
	AnnotationKeyProviderPrefix = "org.opencontainers.image.enc.keys.provider."
	// AnnotationAttestationAgent is CoCo's key provider annotation.
	AnnotationAttestationAgent = AnnotationKeyProviderPrefix + "attestation-agent"

	// CipherAES256CTR is the only layer cipher ocicrypt defines.
	CipherAES256CTR = "AES_256_CTR_HMAC_SHA256"

	maxAnnotationBytes = 1 << 20
	maxPrivOptsBytes   = 64 << 10
)

// PrivateOptions is what a key provider unwraps: the layer key and nonce.
// It is secret.
type PrivateOptions struct {
	SymKey        []byte            `json:"symkey"`
	Digest        string            `json:"digest,omitempty"`
	CipherOptions map[string][]byte `json:"cipheroptions"`
}

// PublicOptions is the content of the pubopts annotation.
type PublicOptions struct {
	Cipher        string            `json:"cipher"`
	HMAC          []byte            `json:"hmac"`
	CipherOptions map[string][]byte `json:"cipheroptions"`
}

// Layer is the decryption state of one layer: key, nonce and the HMAC the
// ciphertext must have.
type Layer struct {
	key, nonce, mac []byte
}

// Prepare checks an encrypted layer's public options and the private
// options its key provider returned. Bad annotations are
// ErrInvalidArgument; unknown ciphers ErrNotImplemented.
func Prepare(desc oci.Descriptor, privOpts []byte) (*Layer, error) {
	pub, err := ParsePublicOptions(desc)
	if err != nil {
		return nil, err
	}
	if len(privOpts) > maxPrivOptsBytes {
		return nil, fmt.Errorf("layer %s: private options: %d bytes is too long: %w", desc.Digest, len(privOpts), errdefs.ErrInvalidArgument)
	}
	var priv PrivateOptions
	if err := json.Unmarshal(privOpts, &priv); err != nil {
		// The error text could quote key material: leave it out.
		return nil, fmt.Errorf("layer %s: private options: not valid JSON: %w", desc.Digest, errdefs.ErrInvalidArgument)
	}
	if len(priv.SymKey) != 32 {
		return nil, fmt.Errorf("layer %s: private options.symkey: %d bytes, want 32: %w", desc.Digest, len(priv.SymKey), errdefs.ErrInvalidArgument)
	}
	// The nonce comes from the private (authenticated) options only: a
	// nonce in the public options would be the host's choice.
	nonce := priv.CipherOptions["nonce"]
	if len(nonce) != aes.BlockSize {
		return nil, fmt.Errorf("layer %s: private options.cipheroptions.nonce: %d bytes, want %d: %w", desc.Digest, len(nonce), aes.BlockSize, errdefs.ErrInvalidArgument)
	}
	return &Layer{key: priv.SymKey, nonce: nonce, mac: pub.HMAC}, nil
}

// ParsePublicOptions decodes and checks desc's pubopts annotation.
func ParsePublicOptions(desc oci.Descriptor) (PublicOptions, error) {
	var pub PublicOptions
	b64 := desc.Annotations[AnnotationPubOpts]
	if b64 == "" {
		return pub, fmt.Errorf("layer %s: annotation %s: missing: %w", desc.Digest, AnnotationPubOpts, errdefs.ErrInvalidArgument)
	}
	if len(b64) > maxAnnotationBytes {
		return pub, fmt.Errorf("layer %s: annotation %s: too long: %w", desc.Digest, AnnotationPubOpts, errdefs.ErrInvalidArgument)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return pub, fmt.Errorf("layer %s: annotation %s: not base64: %w", desc.Digest, AnnotationPubOpts, errdefs.ErrInvalidArgument)
	}
	if err := json.Unmarshal(raw, &pub); err != nil {
		return pub, fmt.Errorf("layer %s: annotation %s: %v: %w", desc.Digest, AnnotationPubOpts, err, errdefs.ErrInvalidArgument)
	}
	if pub.Cipher != CipherAES256CTR {
		return pub, fmt.Errorf("layer %s: cipher %q: only %s is supported: %w", desc.Digest, clip(pub.Cipher), CipherAES256CTR, errdefs.ErrNotImplemented)
	}
	if len(pub.HMAC) != sha256.Size {
		return pub, fmt.Errorf("layer %s: annotation %s: hmac is %d bytes, want %d: %w", desc.Digest, AnnotationPubOpts, len(pub.HMAC), sha256.Size, errdefs.ErrInvalidArgument)
	}
	return pub, nil
}

// NewReader decrypts r (the layer ciphertext). It returns io.EOF only
// after r ended and the HMAC over everything read matched; a mismatch is
// ErrFailedPrecondition in place of io.EOF. Bytes returned before that are
// not authenticated.
func (l *Layer) NewReader(r io.Reader) io.Reader {
	block, _ := aes.NewCipher(l.key) // 32 bytes: checked by Prepare
	return &reader{r: r, stream: cipher.NewCTR(block, l.nonce), mac: hmac.New(sha256.New, l.key), want: l.mac}
}

type reader struct {
	r      io.Reader
	stream cipher.Stream
	mac    hash.Hash
	want   []byte
	err    error
}

func (d *reader) Read(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	n, err := d.r.Read(p)
	if n > 0 {
		d.mac.Write(p[:n])
		d.stream.XORKeyStream(p[:n], p[:n])
	}
	switch {
	case err == io.EOF:
		if !hmac.Equal(d.mac.Sum(nil), d.want) {
			d.err = fmt.Errorf("encrypted layer: HMAC mismatch (ciphertext modified or wrong key): %w", errdefs.ErrFailedPrecondition)
			return n, d.err
		}
		d.err = io.EOF
	case err != nil:
		d.err = err
	}
	return n, err
}

// clip shortens untrusted strings before they go into error messages.
func clip(s string) string { return textclip.Clip(s, 80) }
