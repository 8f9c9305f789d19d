// Package sealed unseals CoCo sealed secrets inside the guest: strings of
// the form sealed.<b64url JWS header>.<b64url payload>.<b64url signature>
// (a JWS compact serialization behind a "sealed." prefix, base64url without
// padding) whose payload JSON describes how to obtain the plaintext:
//
//   - "vault": the plaintext is a secret held by a provider; for provider
//     "kbs" it is the KBS resource the payload's name (kbs:///repo/type/tag)
//     identifies.
//   - "envelope": the plaintext is encrypted_data, encrypted with a data
//     key (A256GCM or A256CTR) that a KMS wraps; the provider unwraps it.
//
// Providers other than the built-in "kbs" one come from a kms.Providers
// registry (package cdh/kms: "aws" in cdh/kms/aws); an unknown provider
// fails with errdefs.ErrNotImplemented naming it.
//
// The signature (ES256 only) is verified by default with the P-256 public
// JWK the header's kid names: a kbs:///repo/type/tag resource fetched
// through the Resources getter (the KBS releases it only to an attested
// guest). Unsigned strings such as the widely published
// "sealed.fakejwsheader.<payload>.fakesignature" are accepted only when
// verification is skipped (New with WithSkipVerification(true), or
// Unsealer.SkipVerification), which must come from measured configuration
// (cdh.toml skip_sealed_secret_verification in initdata), never from the
// host.
//
// Errors wrap errdefs classes and never carry plaintext, keys or the
// sealed payload; nothing secret is logged.
package sealed

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"reflect"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/cdh/kms"
)

// Prefix starts every sealed secret.
const Prefix = "sealed."

// Version is the only payload version accepted.
const Version = "0.1.0"

// Secret types.
const (
	TypeVault    = "vault"
	TypeEnvelope = "envelope"
)

// AlgES256 is the only JWS algorithm accepted.
const AlgES256 = "ES256"

// Wrap types of envelope secrets.
const (
	WrapA256GCM = "A256GCM"
	WrapA256CTR = "A256CTR"
)

// ProviderKBS is the built-in provider backed by the KBS.
const ProviderKBS = "kbs"

// DefaultMaxSize bounds a sealed secret string (Kubernetes secrets are at
// most 1 MiB).
const DefaultMaxSize = 1 << 20

// DefaultKeyDir is where guest-components looks up signing keys whose kid is
// not a resource URI.
const DefaultKeyDir = "/run/confidential-containers/cdh/sealed-secret"

// Resources fetches KBS resources by URI (kbs:///repo/type/tag). The KBS
// client satisfies it through a one-line adapter around
// (*kbs.Client).Resource.
type Resources interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// Decrypter unwraps an envelope secret's data key. keyID, providerSettings
// and annotations come from the payload as written (the last two as JSON
// objects). It is the older seam kept for existing callers; new providers
// implement kms.Provider and go into Unsealer.Providers.
type Decrypter interface {
	Decrypt(ctx context.Context, encryptedKey []byte, keyID string, providerSettings, annotations json.RawMessage) ([]byte, error)
}

// Unsealer unseals sealed secrets. The zero value is not usable: Resources
// is required for signature keys, vault secrets and the kbs provider.
type Unsealer struct {
	// Resources fetches signing keys, vault secrets and KBS-held key
	// encryption keys.
	Resources Resources
	// SkipVerification turns the JWS signature check off. It must be set
	// only from measured configuration (initdata cdh.toml
	// skip_sealed_secret_verification), never from anything the host
	// controls: an unverified sealed secret lets the host choose which
	// secret a container receives.
	SkipVerification bool
	// KeyDir, when set, resolves a kid that is not a resource URI to the
	// file KeyDir/<kid> (a single plain file name). Empty refuses such kids.
	KeyDir string
	// Providers are the KMS providers for envelope and vault secrets,
	// keyed by provider name ("kbs", "aws"…; matched ASCII
	// case-insensitively). "kbs" falls back to kms.KBS{Resources} when
	// absent.
	Providers kms.Providers
	// Decrypters are envelope providers besides the built-in "kbs" one,
	// keyed by provider name; consulted after Providers. Deprecated: use
	// Providers.
	Decrypters map[string]Decrypter
	// MaxSize bounds the sealed string; DefaultMaxSize when 0.
	MaxSize int
	// Logger receives one debug line per unsealed secret (type, provider,
	// kid; never values); discarded when nil.
	Logger *slog.Logger
}

// Option configures an Unsealer built by New.
type Option func(*Unsealer)

// WithSkipVerification turns the JWS signature check off when skip is
// true. Pass only cdh.toml skip_sealed_secret_verification from measured
// initdata; the default is to verify.
func WithSkipVerification(skip bool) Option {
	return func(u *Unsealer) { u.SkipVerification = skip }
}

// WithProviders sets the KMS provider registry.
func WithProviders(p kms.Providers) Option {
	return func(u *Unsealer) { u.Providers = p }
}

// WithKeyDir resolves kids that are plain file names in dir (normally
// DefaultKeyDir).
func WithKeyDir(dir string) Option {
	return func(u *Unsealer) { u.KeyDir = dir }
}

// WithMaxSize bounds the sealed string.
func WithMaxSize(n int) Option {
	return func(u *Unsealer) { u.MaxSize = n }
}

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option {
	return func(u *Unsealer) { u.Logger = l }
}

// New returns an Unsealer that fetches signing keys and KBS-held secrets
// through resources. Signatures are verified unless
// WithSkipVerification(true) is given.
func New(resources Resources, opts ...Option) *Unsealer {
	u := &Unsealer{Resources: resources}
	for _, o := range opts {
		o(u)
	}
	return u
}

// IsSealed reports whether s is meant as a sealed secret (starts with
// "sealed."); it does not validate it.
func IsSealed(s string) bool { return strings.HasPrefix(s, Prefix) }

// header is the JWS protected header.
type header struct {
	Alg  string          `json:"alg"`
	Kid  string          `json:"kid"`
	Crit json.RawMessage `json:"crit"`
}

// payload is the sealed secret's JSON.
type payload struct {
	Version          string          `json:"version"`
	Type             string          `json:"type"`
	Provider         string          `json:"provider"`
	Name             string          `json:"name"`
	KeyID            string          `json:"key_id"`
	EncryptedKey     string          `json:"encrypted_key"`
	EncryptedData    string          `json:"encrypted_data"`
	WrapType         string          `json:"wrap_type"`
	IV               string          `json:"iv"`
	ProviderSettings json.RawMessage `json:"provider_settings"`
	Annotations      json.RawMessage `json:"annotations"`
}

var b64url = base64.RawURLEncoding.Strict()

func invalid(format string, a ...any) error {
	return fmt.Errorf("sealed secret: "+format+": %w", append(a, errdefs.ErrInvalidArgument)...)
}

// Unseal verifies s (unless SkipVerification) and returns its plaintext.
func (u *Unsealer) Unseal(ctx context.Context, s string) ([]byte, error) {
	maxSize := u.MaxSize
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	if len(s) > maxSize {
		return nil, invalid("longer than %d bytes", maxSize)
	}
	if !IsSealed(s) {
		return nil, invalid("missing %q prefix", Prefix)
	}
	parts := strings.Split(s, ".")
	if len(parts) != 4 {
		return nil, invalid("want sealed.<header>.<payload>.<signature>, got %d dot-separated parts", len(parts))
	}
	var kid string
	if !u.SkipVerification {
		var err error
		if kid, err = u.verify(ctx, parts[1], parts[2], parts[3]); err != nil {
			return nil, err
		}
	}
	raw, err := b64url.DecodeString(parts[2])
	if err != nil {
		return nil, invalid("payload is not unpadded base64url")
	}
	p, err := parsePayload(raw)
	if err != nil {
		return nil, err
	}
	var out []byte
	switch p.Type {
	case TypeVault:
		out, err = u.vault(ctx, p)
	case TypeEnvelope:
		out, err = u.envelope(ctx, p)
	}
	if err != nil {
		return nil, err
	}
	if u.Logger != nil {
		u.Logger.DebugContext(ctx, "unsealed secret", "type", p.Type, "provider", p.Provider, "kid", kid, "verified", !u.SkipVerification)
	}
	return out, nil
}

func parsePayload(raw []byte) (*payload, error) {
	var p payload
	if err := decodeExact(raw, &p); err != nil {
		// The JSON error text is not echoed: it may quote payload bytes.
		return nil, invalid("payload is not a JSON object of the sealed secret shape")
	}
	if p.Version != Version {
		return nil, invalid("payload version %q: want %q", clip(p.Version), Version)
	}
	for name, v := range map[string]json.RawMessage{"provider_settings": p.ProviderSettings, "annotations": p.Annotations} {
		if !isObject(v) {
			return nil, invalid("payload %s: must be a JSON object (use {})", name)
		}
	}
	if p.Provider == "" {
		return nil, invalid("payload provider: empty")
	}
	switch p.Type {
	case TypeVault:
		if p.Name == "" {
			return nil, invalid("payload name: empty")
		}
	case TypeEnvelope:
	default:
		return nil, invalid("payload type %q: want %q or %q", clip(p.Type), TypeVault, TypeEnvelope)
	}
	return &p, nil
}

// decodeExact decodes a JSON object into the struct v points to, matching
// member names case-sensitively (encoding/json alone would also bind
// "ALG" or "Type"). Unknown members are ignored, as serde does.
func decodeExact(raw []byte, v any) error {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return err
	}
	if m == nil {
		return errors.New("not an object")
	}
	for k := range m {
		if !knownMember(v, k) {
			delete(m, k)
		}
	}
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// knownMember reports whether k is exactly one of the json tags of v's
// struct type.
func knownMember(v any, k string) bool {
	t := reflect.TypeOf(v).Elem()
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name == k {
			return true
		}
	}
	return false
}

func isObject(v json.RawMessage) bool {
	var m map[string]json.RawMessage
	return v != nil && json.Unmarshal(v, &m) == nil && m != nil
}

// verify checks the JWS and returns the kid.
func (u *Unsealer) verify(ctx context.Context, h64, p64, s64 string) (string, error) {
	hraw, err := b64url.DecodeString(h64)
	if err != nil {
		return "", invalid("JWS header is not unpadded base64url (unsigned secrets need skip_sealed_secret_verification)")
	}
	var h header
	if err := decodeExact(hraw, &h); err != nil {
		return "", invalid("JWS header is not a JSON object with string alg and kid")
	}
	if h.Alg != AlgES256 {
		return "", invalid("JWS header alg %q: only %s is accepted", clip(h.Alg), AlgES256)
	}
	if h.Crit != nil {
		return "", invalid("JWS header crit: no critical extensions are supported")
	}
	if h.Kid == "" {
		return "", invalid("JWS header kid: missing")
	}
	sig, err := b64url.DecodeString(s64)
	if err != nil || len(sig) != 64 {
		return "", invalid("JWS signature: want 64 bytes (ES256 r||s) in unpadded base64url")
	}
	pub, err := u.verificationKey(ctx, h.Kid)
	if err != nil {
		return "", err
	}
	digest := sha256.Sum256([]byte(h64 + "." + p64))
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return "", fmt.Errorf("sealed secret: JWS signature does not verify with key %q: %w", clip(h.Kid), errdefs.ErrPermissionDenied)
	}
	return h.Kid, nil
}

var kidFileRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]*$`)

// verificationKey fetches and parses the public JWK kid names.
func (u *Unsealer) verificationKey(ctx context.Context, kid string) (*ecdsa.PublicKey, error) {
	var raw []byte
	if strings.Contains(kid, "://") {
		uri, err := KeyURI(kid)
		if err != nil {
			return nil, err
		}
		if u.Resources == nil {
			return nil, fmt.Errorf("sealed secret: fetching key %q: no resource getter configured: %w", uri, errdefs.ErrFailedPrecondition)
		}
		if raw, err = u.Resources.GetResource(ctx, uri); err != nil {
			return nil, fmt.Errorf("sealed secret: fetching verification key %q: %w", uri, err)
		}
	} else {
		if u.KeyDir == "" || !kidFileRE.MatchString(kid) || len(kid) > 255 {
			return nil, invalid("JWS header kid %q: want kbs:///repo/type/tag", clip(kid))
		}
		root, err := os.OpenRoot(u.KeyDir)
		if err != nil {
			return nil, fmt.Errorf("sealed secret: opening key directory: %w", errdefs.ErrNotFound)
		}
		defer root.Close()
		if raw, err = root.ReadFile(kid); err != nil {
			return nil, fmt.Errorf("sealed secret: reading verification key %q: %w", kid, errdefs.ErrNotFound)
		}
	}
	pub, err := parseP256JWK(raw)
	if err != nil {
		return nil, fmt.Errorf("sealed secret: verification key %q: %w", clip(kid), err)
	}
	return pub, nil
}

// KeyURI validates a signing key id as a resource URI: exactly
// kbs:///repo/type/tag (resource plugin, no host, no query; segments
// [A-Za-z0-9_-][A-Za-z0-9_.-]*, so no traversal). It returns the URI in
// canonical form.
func KeyURI(kid string) (string, error) {
	u, err := kbs.ParseResourceURI(kid)
	if err != nil {
		return "", fmt.Errorf("sealed secret: JWS header kid: %w", err)
	}
	if !strings.HasPrefix(kid, "kbs:///") || u.Plugin != kbs.ResourcePlugin || u.Host != "" || u.Query != "" || len(u.Segments) != 3 {
		return "", invalid("JWS header kid %q: want kbs:///repo/type/tag", clip(kid))
	}
	return u.String(), nil
}

// jwk is the public P-256 key shape.
type jwk struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
	D   string `json:"d"`
}

func parseP256JWK(raw []byte) (*ecdsa.PublicKey, error) {
	var k jwk
	if err := json.Unmarshal(raw, &k); err != nil {
		return nil, fmt.Errorf("not a JWK: %w", errdefs.ErrInvalidArgument)
	}
	if k.Kty != "EC" || k.Crv != "P-256" {
		return nil, fmt.Errorf("JWK kty %q crv %q: want EC P-256: %w", clip(k.Kty), clip(k.Crv), errdefs.ErrInvalidArgument)
	}
	x, errX := b64url.DecodeString(k.X)
	y, errY := b64url.DecodeString(k.Y)
	if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
		return nil, fmt.Errorf("JWK x/y: want 32-byte unpadded base64url coordinates: %w", errdefs.ErrInvalidArgument)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		return nil, fmt.Errorf("JWK point is not on P-256: %w", errdefs.ErrInvalidArgument)
	}
	return pub, nil
}

func (u *Unsealer) vault(ctx context.Context, p *payload) ([]byte, error) {
	settings, annotations, err := p.objects()
	if err != nil {
		return nil, err
	}
	var g kms.SecretGetter
	if u.isBuiltinKBS(p.Provider) {
		g = kms.KBS{Resources: u.Resources}
	} else if g, err = u.Providers.SecretGetter(ctx, p.Provider, settings); err != nil {
		return nil, fmt.Errorf("sealed secret: vault: %w", err)
	}
	out, err := g.GetSecret(ctx, p.Name, annotations)
	if err != nil {
		return nil, fmt.Errorf("sealed secret: vault provider %q, name %q: %w", clip(p.Provider), clip(p.Name), err)
	}
	return out, nil
}

// isBuiltinKBS reports whether provider is "kbs" and the registry has no
// entry for it, so the built-in kms.KBS over Resources serves it.
func (u *Unsealer) isBuiltinKBS(provider string) bool {
	if !strings.EqualFold(provider, ProviderKBS) {
		return false
	}
	_, err := u.Providers.Lookup(provider)
	return err != nil
}

// objects returns provider_settings and annotations as maps.
func (p *payload) objects() (kms.Settings, kms.Annotations, error) {
	s, err := kms.ParseObject("payload provider_settings", p.ProviderSettings)
	if err != nil {
		return nil, nil, fmt.Errorf("sealed secret: %w", err)
	}
	a, err := kms.ParseObject("payload annotations", p.Annotations)
	if err != nil {
		return nil, nil, fmt.Errorf("sealed secret: %w", err)
	}
	return s, a, nil
}

// dataKey unwraps the envelope's data key with the provider's decrypter:
// Providers first, then the legacy Decrypters, then the built-in kbs one.
func (u *Unsealer) dataKey(ctx context.Context, p *payload, ek []byte) ([]byte, error) {
	settings, annotations, err := p.objects()
	if err != nil {
		return nil, err
	}
	var dec kms.Decrypter
	if _, lerr := u.Providers.Lookup(p.Provider); lerr == nil {
		if dec, err = u.Providers.Decrypter(ctx, p.Provider, settings); err != nil {
			return nil, fmt.Errorf("sealed secret: envelope: %w", err)
		}
	} else if legacy := u.Decrypters[p.Provider]; legacy != nil {
		dec = legacyDecrypter{legacy, p}
	} else if strings.EqualFold(p.Provider, ProviderKBS) {
		dec = kms.KBS{Resources: u.Resources}
	} else {
		return nil, fmt.Errorf("sealed secret: envelope provider %q: %w", clip(p.Provider), errdefs.ErrNotImplemented)
	}
	dek, err := dec.Decrypt(ctx, ek, p.KeyID, annotations)
	if err != nil {
		return nil, fmt.Errorf("sealed secret: unwrapping data key with provider %q, key_id %q: %w", clip(p.Provider), clip(p.KeyID), err)
	}
	return dek, nil
}

// legacyDecrypter adapts a Decrypter to kms.Decrypter for one payload.
type legacyDecrypter struct {
	d Decrypter
	p *payload
}

func (l legacyDecrypter) Decrypt(ctx context.Context, ek []byte, keyID string, _ kms.Annotations) ([]byte, error) {
	return l.d.Decrypt(ctx, ek, keyID, l.p.ProviderSettings, l.p.Annotations)
}

func (u *Unsealer) envelope(ctx context.Context, p *payload) ([]byte, error) {
	b64 := base64.StdEncoding.Strict()
	ek, err := b64.DecodeString(p.EncryptedKey)
	if err != nil || len(ek) == 0 {
		return nil, invalid("payload encrypted_key: want non-empty standard base64")
	}
	data, err := b64.DecodeString(p.EncryptedData)
	if err != nil {
		return nil, invalid("payload encrypted_data: want standard base64")
	}
	iv, err := b64.DecodeString(p.IV)
	if err != nil {
		return nil, invalid("payload iv: want standard base64")
	}
	switch p.WrapType {
	case WrapA256GCM:
		if len(iv) != 12 {
			return nil, invalid("payload iv: %s needs 12 bytes, got %d", WrapA256GCM, len(iv))
		}
		if len(data) < 16 {
			return nil, invalid("payload encrypted_data: shorter than the GCM tag")
		}
	case WrapA256CTR:
		if len(iv) != 16 {
			return nil, invalid("payload iv: %s needs 16 bytes, got %d", WrapA256CTR, len(iv))
		}
	default:
		return nil, invalid("payload wrap_type %q: want %s or %s", clip(p.WrapType), WrapA256GCM, WrapA256CTR)
	}
	dek, err := u.dataKey(ctx, p, ek)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	if len(dek) != 32 {
		return nil, fmt.Errorf("sealed secret: provider %q returned a %d-byte data key, want 32: %w", clip(p.Provider), len(dek), errdefs.ErrFailedPrecondition)
	}
	block, err := aes.NewCipher(dek)
	if err != nil {
		return nil, fmt.Errorf("sealed secret: data key: %w", errdefs.ErrInvalidArgument)
	}
	if p.WrapType == WrapA256CTR {
		out := make([]byte, len(data))
		cipher.NewCTR(block, iv).XORKeyStream(out, data)
		return out, nil
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("sealed secret: %s: %w", WrapA256GCM, errdefs.ErrInternal)
	}
	out, err := gcm.Open(nil, iv, data, nil)
	if err != nil {
		return nil, fmt.Errorf("sealed secret: encrypted_data: %s authentication failed: %w", WrapA256GCM, errdefs.ErrInvalidArgument)
	}
	return out, nil
}

// KBSDecrypter is the "kbs" envelope provider in the older Decrypter shape;
// it is kms.KBS (see there for the Cova key-wrapping format).
type KBSDecrypter struct {
	Resources Resources
}

// Decrypt fetches the KEK from the KBS and unwraps the data key.
func (d KBSDecrypter) Decrypt(ctx context.Context, encryptedKey []byte, keyID string, _, _ json.RawMessage) ([]byte, error) {
	return kms.KBS{Resources: d.Resources}.Decrypt(ctx, encryptedKey, keyID, nil)
}

// clip bounds and sanitizes a payload-supplied string before it enters an
// error message (these are identifiers, never secret values).
func clip(s string) string { return kms.Clip(s) }
