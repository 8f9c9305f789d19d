package ocicrypt

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/cova-project/cova/imagepull/oci"
)

// KeyProvider returns the private options JSON of an encrypted layer (the
// same method as imagepull.KeyProvider). A provider that finds no
// annotation of its kind on the layer returns an error wrapping
// ErrNoAnnotation, so that Multi moves on to the next.
type KeyProvider interface {
	UnwrapKey(ctx context.Context, layer oci.Descriptor) ([]byte, error)
}

// ResourceGetter fetches a confidential resource by URI ("kbs:///r/t/g").
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// ErrNoAnnotation means a layer has no key annotation of the provider's
// kind. Errors that wrap it also wrap errdefs.ErrNotFound.
var ErrNoAnnotation = errors.New("no key annotation of this kind")

// Multi tries each provider in turn: the first to return options wins.
// Providers that find no annotation of their kind (ErrNoAnnotation) are
// skipped; if none applies the result is ErrNotFound, otherwise the first
// real error.
func Multi(providers ...KeyProvider) KeyProvider { return multi(providers) }

type multi []KeyProvider

func (m multi) UnwrapKey(ctx context.Context, layer oci.Descriptor) ([]byte, error) {
	var first error
	for _, p := range m {
		opts, err := p.UnwrapKey(ctx, layer)
		if err == nil {
			return opts, nil
		}
		if first == nil && !errors.Is(err, ErrNoAnnotation) {
			first = err
		}
	}
	if first != nil {
		return nil, first
	}
	return nil, fmt.Errorf("layer %s: no key provider annotation this guest can use: %w", layer.Digest, errdefs.ErrNotFound)
}

// splitAnnotation returns the comma-separated base64 values of an
// annotation, decoded, bounded in number and size.
func splitAnnotation(layer oci.Descriptor, name string) ([][]byte, error) {
	v := layer.Annotations[name]
	if v == "" {
		return nil, fmt.Errorf("layer %s: no %s annotation: %w: %w", layer.Digest, name, ErrNoAnnotation, errdefs.ErrNotFound)
	}
	if len(v) > maxAnnotationBytes {
		return nil, fmt.Errorf("layer %s: annotation %s: too long: %w", layer.Digest, name, errdefs.ErrInvalidArgument)
	}
	parts := strings.Split(v, ",")
	if len(parts) > 64 {
		return nil, fmt.Errorf("layer %s: annotation %s: %d entries is too many: %w", layer.Digest, name, len(parts), errdefs.ErrInvalidArgument)
	}
	out := make([][]byte, 0, len(parts))
	for i, p := range parts {
		b, err := base64.StdEncoding.DecodeString(p)
		if err != nil {
			return nil, fmt.Errorf("layer %s: annotation %s entry %d: not base64: %w", layer.Digest, name, i, errdefs.ErrInvalidArgument)
		}
		out = append(out, b)
	}
	return out, nil
}

// JWE unwraps layer keys wrapped for local private keys (the
// org.opencontainers.image.enc.keys.jwe annotation).
type JWE struct {
	keys []any
}

// JWE algorithms accepted, as containers/ocicrypt writes and reads them.
var (
	jweKeyAlgs = []jose.KeyAlgorithm{jose.RSA_OAEP, jose.RSA_OAEP_256, jose.ECDH_ES_A128KW, jose.ECDH_ES_A192KW, jose.ECDH_ES_A256KW}
	jweEncs    = []jose.ContentEncryption{jose.A128GCM, jose.A192GCM, jose.A256GCM, jose.A128CBC_HS256, jose.A192CBC_HS384, jose.A256CBC_HS512}
)

// NewJWE parses private keys: PEM (PKCS#1, PKCS#8 or SEC 1; RSA or EC) or
// a private JWK. Password-protected keys are ErrNotImplemented.
func NewJWE(keys ...[]byte) (*JWE, error) {
	j := &JWE{}
	for i, k := range keys {
		key, err := parsePrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("JWE private key %d: %w", i, err)
		}
		j.keys = append(j.keys, key)
	}
	if len(j.keys) == 0 {
		return nil, fmt.Errorf("JWE private keys: none given: %w", errdefs.ErrInvalidArgument)
	}
	return j, nil
}

func parsePrivateKey(b []byte) (any, error) {
	if trimmed := strings.TrimSpace(string(b)); strings.HasPrefix(trimmed, "{") {
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON([]byte(trimmed)); err != nil {
			return nil, fmt.Errorf("not a JWK: %w", errdefs.ErrInvalidArgument)
		}
		if jwk.IsPublic() {
			return nil, fmt.Errorf("JWK is a public key: %w", errdefs.ErrInvalidArgument)
		}
		return jwk.Key, nil
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("neither PEM nor JWK: %w", errdefs.ErrInvalidArgument)
	}
	if strings.Contains(block.Type, "ENCRYPTED") || block.Headers["Proc-Type"] != "" {
		return nil, fmt.Errorf("password-protected keys: %w", errdefs.ErrNotImplemented)
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q: not a private key: %w", block.Type, errdefs.ErrInvalidArgument)
	}
	if err != nil {
		return nil, fmt.Errorf("PEM %s: %v: %w", block.Type, err, errdefs.ErrInvalidArgument)
	}
	switch key.(type) {
	case *rsa.PrivateKey, *ecdsa.PrivateKey:
		return key, nil
	}
	return nil, fmt.Errorf("key type %T: JWE needs RSA or EC: %w", key, errdefs.ErrNotImplemented)
}

// UnwrapKey implements KeyProvider.
func (j *JWE) UnwrapKey(ctx context.Context, layer oci.Descriptor) ([]byte, error) {
	docs, err := splitAnnotation(layer, AnnotationJWE)
	if err != nil {
		return nil, err
	}
	for i, doc := range docs {
		var jwe *jose.JSONWebEncryption
		if s := strings.TrimSpace(string(doc)); strings.HasPrefix(s, "{") {
			jwe, err = jose.ParseEncryptedJSON(s, jweKeyAlgs, jweEncs)
		} else {
			jwe, err = jose.ParseEncryptedCompact(s, jweKeyAlgs, jweEncs)
		}
		if err != nil {
			return nil, fmt.Errorf("layer %s: JWE %d: %v: %w", layer.Digest, i, err, errdefs.ErrInvalidArgument)
		}
		for _, k := range j.keys {
			if _, _, plain, err := jwe.DecryptMulti(k); err == nil {
				return plain, nil
			}
		}
	}
	return nil, fmt.Errorf("layer %s: none of the %d local private keys is a JWE recipient: %w", layer.Digest, len(j.keys), errdefs.ErrPermissionDenied)
}

// AttestationAgent unwraps layer keys from CoCo's key provider annotation
// (org.opencontainers.image.enc.keys.provider.attestation-agent): the
// key-encryption key is the resource the packet's kid names, fetched
// through Resources (the KBS, via the CDH).
type AttestationAgent struct {
	Resources ResourceGetter
}

// UnwrapKey implements KeyProvider.
func (a *AttestationAgent) UnwrapKey(ctx context.Context, layer oci.Descriptor) ([]byte, error) {
	packets, err := splitAnnotation(layer, AnnotationAttestationAgent)
	if err != nil {
		return nil, err
	}
	var errs []error
	for i, p := range packets {
		opts, err := UnwrapPacket(ctx, a.Resources, p)
		if err == nil {
			return opts, nil
		}
		errs = append(errs, fmt.Errorf("packet %d: %w", i, err))
	}
	return nil, fmt.Errorf("layer %s: %w", layer.Digest, errors.Join(errs...))
}

// AnnotationPacket is CoCo's key provider packet (v1, and v2 with
// version/provider; only provider "kbs" is supported).
type AnnotationPacket struct {
	Version          string          `json:"version,omitempty"`
	Kid              string          `json:"kid"`
	WrappedData      string          `json:"wrapped_data"`
	Provider         string          `json:"provider,omitempty"`
	IV               string          `json:"iv,omitempty"`
	WrapType         string          `json:"wrap_type,omitempty"`
	ProviderSettings json.RawMessage `json:"provider_settings,omitempty"`
	Annotations      json.RawMessage `json:"annotations,omitempty"`
}

// Wrap types of an AnnotationPacket.
const (
	WrapA256GCM = "A256GCM"
	WrapA256CTR = "A256CTR"
)

// UnwrapPacket decodes an AnnotationPacket (JSON) and returns the private
// options it wraps. The KEK is the 32-byte resource named by kid, which
// must be a "kbs:" URI; A256GCM packets are authenticated, A256CTR ones
// are not (the layer HMAC still is). The CDH's UnWrapKey serves the same.
func UnwrapPacket(ctx context.Context, resources ResourceGetter, packet []byte) ([]byte, error) {
	var p AnnotationPacket
	if err := json.Unmarshal(packet, &p); err != nil {
		return nil, fmt.Errorf("annotation packet: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if p.Version != "" && p.Version != "0.1.0" {
		return nil, fmt.Errorf("annotation packet.version %q: want 0.1.0: %w", clip(p.Version), errdefs.ErrNotImplemented)
	}
	if p.Provider != "" && p.Provider != "kbs" {
		return nil, fmt.Errorf("annotation packet.provider %q: only kbs is supported: %w", clip(p.Provider), errdefs.ErrNotImplemented)
	}
	if !strings.HasPrefix(p.Kid, "kbs:") && !strings.HasPrefix(p.Kid, "kbs+") {
		return nil, fmt.Errorf("annotation packet.kid %q: want a kbs:///repo/type/tag URI: %w", clip(p.Kid), errdefs.ErrInvalidArgument)
	}
	wrapped, err := base64.StdEncoding.DecodeString(p.WrappedData)
	if err != nil || len(wrapped) == 0 || len(wrapped) > maxPrivOptsBytes {
		return nil, fmt.Errorf("annotation packet.wrapped_data: not base64 or bad length: %w", errdefs.ErrInvalidArgument)
	}
	iv, err := base64.StdEncoding.DecodeString(p.IV)
	if err != nil {
		return nil, fmt.Errorf("annotation packet.iv: not base64: %w", errdefs.ErrInvalidArgument)
	}
	var ivLen int
	switch p.WrapType {
	case WrapA256GCM:
		ivLen = 12
	case WrapA256CTR:
		ivLen = aes.BlockSize
	default:
		return nil, fmt.Errorf("annotation packet.wrap_type %q: want %s or %s: %w", clip(p.WrapType), WrapA256GCM, WrapA256CTR, errdefs.ErrNotImplemented)
	}
	if len(iv) != ivLen {
		return nil, fmt.Errorf("annotation packet.iv: %d bytes, %s needs %d: %w", len(iv), p.WrapType, ivLen, errdefs.ErrInvalidArgument)
	}
	if resources == nil {
		return nil, fmt.Errorf("annotation packet: key %s needs a resource getter (KBS), none configured: %w", p.Kid, errdefs.ErrFailedPrecondition)
	}
	kek, err := resources.GetResource(ctx, p.Kid)
	if err != nil {
		return nil, fmt.Errorf("fetching key %s: %w", p.Kid, err)
	}
	if len(kek) != 32 {
		return nil, fmt.Errorf("key %s: %d bytes, want 32: %w", p.Kid, len(kek), errdefs.ErrInvalidArgument)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", p.Kid, err)
	}
	if p.WrapType == WrapA256CTR {
		out := make([]byte, len(wrapped))
		cipher.NewCTR(block, iv).XORKeyStream(out, wrapped)
		return out, nil
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	out, err := gcm.Open(nil, iv, wrapped, nil)
	if err != nil {
		return nil, fmt.Errorf("key %s: unwrapping: authentication failed (wrong key or modified packet): %w", p.Kid, errdefs.ErrPermissionDenied)
	}
	return out, nil
}
