package sigpolicy

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/reference"
)

// Options configure a Verifier.
type Options struct {
	// Resources fetches "kbs:///…" key paths; nil allows only local files.
	Resources imagepull.ResourceGetter
	// Lookaside locates signedBy signatures; nil means none are found.
	Lookaside *Lookaside
	// Logger receives decisions; nil discards.
	Logger *slog.Logger
}

// Verifier enforces a Policy; it implements imagepull.Verifier and is safe
// for concurrent use. Keys are loaded on first use and kept.
type Verifier struct {
	policy *Policy
	opts   Options

	mu   sync.Mutex
	keys map[*Requirement]any // openpgp.EntityList or []crypto.PublicKey
}

// New returns a Verifier for p.
func New(p *Policy, opts Options) *Verifier {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Verifier{policy: p, opts: opts, keys: map[*Requirement]any{}}
}

// Load reads the policy at uri ("kbs:///…", "file:///…" or a path) and,
// if sigstoreURI is set, the registries.d-style lookaside config, and
// returns a Verifier.
func Load(ctx context.Context, policyURI, sigstoreURI string, opts Options) (*Verifier, error) {
	b, err := imagepull.ReadResource(ctx, opts.Resources, policyURI, maxPolicyBytes)
	if err != nil {
		return nil, fmt.Errorf("image policy: %w", err)
	}
	p, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("image policy %s: %w", policyURI, err)
	}
	if sigstoreURI != "" {
		b, err := imagepull.ReadResource(ctx, opts.Resources, sigstoreURI, maxPolicyBytes)
		if err != nil {
			return nil, fmt.Errorf("sigstore config: %w", err)
		}
		if opts.Lookaside, err = ParseLookaside(b); err != nil {
			return nil, err
		}
	}
	return New(p, opts), nil
}

// VerifyManifest implements imagepull.Verifier: every requirement of the
// most specific scope must accept the image. A refusal is
// ErrPermissionDenied; failures to load keys or reach the registry keep
// their own class.
func (v *Verifier) VerifyManifest(ctx context.Context, m imagepull.ManifestInfo) error {
	reqs, scope := v.policy.RequirementsFor(m.Reference)
	for i, r := range reqs {
		var err error
		switch r.Type {
		case TypeInsecureAcceptAnything:
		case TypeReject:
			err = fmt.Errorf("the policy rejects it: %w", errdefs.ErrPermissionDenied)
		case TypeSignedBy:
			err = v.checkSignedBy(ctx, r, m)
		case TypeSigstoreSigned:
			err = v.checkSigstore(ctx, r, m)
		default:
			err = fmt.Errorf("requirement type %q: %w", r.Type, errdefs.ErrInvalidArgument)
		}
		if err != nil {
			v.opts.Logger.Warn("image refused by signature policy", "image", m.Reference.String(), "scope", scope, "requirement", r.Type, "err", err)
			return fmt.Errorf("policy scope %q requirement %d (%s): %w", scope, i, r.Type, err)
		}
	}
	v.opts.Logger.Info("image accepted by signature policy", "image", m.Reference.String(), "manifest", m.Digest.String(), "scope", scope)
	return nil
}

// signedDigests are the manifest digests a signature may name: the index
// the reference resolved to (what a signer of a multi-platform tag signs)
// and the platform manifest.
func signedDigests(m imagepull.ManifestInfo) []oci.Digest {
	if !m.IndexDigest.IsZero() {
		return []oci.Digest{m.IndexDigest, m.Digest}
	}
	return []oci.Digest{m.Digest}
}

// rejections collects why signatures were not accepted.
type rejections []string

func (r *rejections) add(format string, args ...any) {
	if len(*r) < 8 {
		*r = append(*r, fmt.Sprintf(format, args...))
	}
}

func (r rejections) err(none string) error {
	if len(r) == 0 {
		return fmt.Errorf("%s: %w", none, errdefs.ErrPermissionDenied)
	}
	return fmt.Errorf("no signature accepted: %s: %w", strings.Join(r, "; "), errdefs.ErrPermissionDenied)
}

// checkPayload applies the digest and identity rules to a verified payload.
func checkPayload(p payload, d oci.Digest, r *Requirement, ref reference.Reference) error {
	if p.manifestDigest != d {
		return fmt.Errorf("signs manifest %s, not %s", p.manifestDigest, d)
	}
	return matchIdentity(r.SignedIdentity, ref, p.dockerReference)
}

// ---- signedBy (GPG simple signing) ----

func (v *Verifier) checkSignedBy(ctx context.Context, r *Requirement, m imagepull.ManifestInfo) error {
	keyring, err := v.gpgKeys(ctx, r)
	if err != nil {
		return err
	}
	base := v.opts.Lookaside.baseFor(m.Reference)
	if base == "" {
		return fmt.Errorf("no signature store (lookaside) is configured for %s: %w", m.Reference.Name(), errdefs.ErrPermissionDenied)
	}
	var rej rejections
	for _, d := range signedDigests(m) {
		sigs, err := readLookaside(ctx, base, m.Reference, d)
		if err != nil {
			return err
		}
		for i, sig := range sigs {
			body, err := verifyGPG(keyring, sig)
			if err != nil {
				rej.add("%s signature-%d: %v", d, i+1, err)
				continue
			}
			p, err := parsePayload(body, atomicSignatureType)
			if err == nil {
				err = checkPayload(p, d, r, m.Reference)
			}
			if err != nil {
				rej.add("%s signature-%d: %v", d, i+1, err)
				continue
			}
			return nil
		}
	}
	return rej.err("image is not signed (no signatures in the lookaside store)")
}

// verifyGPG checks an OpenPGP signed message against keyring and returns
// its content.
func verifyGPG(keyring openpgp.EntityList, sig []byte) ([]byte, error) {
	md, err := openpgp.ReadMessage(bytes.NewReader(sig), keyring, nil, nil)
	if err != nil {
		return nil, fmt.Errorf("not an OpenPGP signed message: %v", err)
	}
	if !md.IsSigned || md.IsEncrypted {
		return nil, errors.New("not a signed, unencrypted OpenPGP message")
	}
	if md.SignedBy == nil {
		return nil, fmt.Errorf("signed by key %016X, which is not trusted", md.SignedByKeyId)
	}
	body, err := io.ReadAll(io.LimitReader(md.UnverifiedBody, maxSignatureBytes))
	if err != nil {
		return nil, fmt.Errorf("signature invalid: %v", err)
	}
	if md.SignatureError != nil || md.Signature == nil {
		return nil, fmt.Errorf("signature invalid: %v", md.SignatureError)
	}
	return body, nil
}

func (v *Verifier) gpgKeys(ctx context.Context, r *Requirement) (openpgp.EntityList, error) {
	v.mu.Lock()
	k, ok := v.keys[r]
	v.mu.Unlock()
	if ok {
		return k.(openpgp.EntityList), nil
	}
	datas, err := v.keyMaterial(ctx, r)
	if err != nil {
		return nil, err
	}
	var keyring openpgp.EntityList
	for i, d := range datas {
		var el openpgp.EntityList
		if bytes.Contains(d[:min(len(d), 64)], []byte("-----BEGIN PGP")) {
			el, err = openpgp.ReadArmoredKeyRing(bytes.NewReader(d))
		} else {
			el, err = openpgp.ReadKeyRing(bytes.NewReader(d))
		}
		if err != nil {
			return nil, fmt.Errorf("GPG keyring %d: %v: %w", i, err, errdefs.ErrInvalidArgument)
		}
		keyring = append(keyring, el...)
	}
	if len(keyring) == 0 {
		return nil, fmt.Errorf("GPG keyring: no keys: %w", errdefs.ErrInvalidArgument)
	}
	v.mu.Lock()
	v.keys[r] = keyring
	v.mu.Unlock()
	return keyring, nil
}

// keyMaterial returns the raw key data of r: files or resources for
// keyPath(s), decoded keyData(s) (PEM or armored text as is, as image-rs
// writes sigstoreSigned keyData; otherwise base64, as containers/image).
func (v *Verifier) keyMaterial(ctx context.Context, r *Requirement) ([][]byte, error) {
	paths := r.KeyPaths
	if r.KeyPath != "" {
		paths = []string{r.KeyPath}
	}
	datas := r.KeyDatas
	if r.KeyData != "" {
		datas = []string{r.KeyData}
	}
	return v.loadMaterial(ctx, "key", paths, datas)
}

// ---- sigstoreSigned (cosign signatures with public keys) ----

// Cosign's signature storage (github.com/sigstore/cosign specs/SIGNATURE_SPEC.md).
const (
	cosignPayloadMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	cosignSigAnnotation    = "dev.cosignproject.cosign/signature"
	maxCosignLayers        = 64
	maxCosignPayload       = 1 << 20
)

type cosignManifest struct {
	Layers []oci.Descriptor `json:"layers"`
}

func (v *Verifier) checkSigstore(ctx context.Context, r *Requirement, m imagepull.ManifestInfo) error {
	var (
		keys []crypto.PublicKey
		kt   *keylessTrust
		err  error
	)
	if r.Fulcio != nil {
		kt, err = v.keylessTrust(ctx, r)
	} else {
		keys, err = v.publicKeys(ctx, r)
	}
	if err != nil {
		return err
	}
	if m.Artifacts == nil {
		return fmt.Errorf("no registry access to read cosign signatures: %w", errdefs.ErrFailedPrecondition)
	}
	var rej rejections
	for _, d := range signedDigests(m) {
		tag := d.Algorithm() + "-" + d.Hex() + ".sig"
		f, err := m.Artifacts.FetchTaggedManifest(ctx, tag)
		if errdefs.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("fetching signatures %s: %w", tag, err)
		}
		var sm cosignManifest
		if err := json.Unmarshal(f.Body, &sm); err != nil {
			rej.add("%s: not a manifest: %v", tag, err)
			continue
		}
		if len(sm.Layers) > maxCosignLayers {
			return fmt.Errorf("%s: %d signatures is over the limit of %d: %w", tag, len(sm.Layers), maxCosignLayers, errdefs.ErrInvalidArgument)
		}
		for i, l := range sm.Layers {
			if err := v.checkCosignLayer(ctx, m, r, keys, kt, l, d); err != nil {
				if errdefs.IsUnavailable(err) || errors.Is(err, context.Canceled) {
					return err
				}
				rej.add("%s layer %d: %v", tag, i, err)
				continue
			}
			return nil
		}
	}
	return rej.err("image is not signed (no cosign signature tag)")
}

// checkCosignLayer checks one signature: with keys, or (keyless, kt set)
// with the key of its Fulcio certificate once that and its Rekor bundle
// verify.
func (v *Verifier) checkCosignLayer(ctx context.Context, m imagepull.ManifestInfo, r *Requirement, keys []crypto.PublicKey, kt *keylessTrust, l oci.Descriptor, d oci.Digest) error {
	if l.MediaType != cosignPayloadMediaType {
		return fmt.Errorf("media type %q is not a cosign simple-signing payload", clip(l.MediaType))
	}
	sigB64, ok := l.Annotations[cosignSigAnnotation]
	if !ok {
		return fmt.Errorf("no %s annotation", cosignSigAnnotation)
	}
	sig, err := base64.StdEncoding.DecodeString(sigB64)
	if err != nil || len(sig) == 0 || len(sig) > 8192 {
		return errors.New("signature annotation is not base64 of a signature")
	}
	if l.Digest.IsZero() || l.Size <= 0 || l.Size > maxCosignPayload {
		return fmt.Errorf("payload size %d out of range", l.Size)
	}
	body, err := m.Artifacts.FetchBlob(ctx, l, maxCosignPayload)
	if err != nil {
		return fmt.Errorf("fetching payload: %w", err)
	}
	if kt != nil {
		k, err := kt.verifyKeyless(r.Fulcio, l.Annotations, sigB64, body)
		if err != nil {
			return err
		}
		keys = []crypto.PublicKey{k}
	}
	if !verifyWithAny(keys, body, sig) {
		return errors.New("signature does not verify with any trusted key")
	}
	p, err := parsePayload(body, cosignSignatureType)
	if err != nil {
		return err
	}
	return checkPayload(p, d, r, m.Reference)
}

// verifyWithAny checks sig over payload as sigstore's default verifiers
// do: ECDSA (ASN.1) and RSA PKCS#1 v1.5 over SHA-256, Ed25519 over the
// payload itself.
func verifyWithAny(keys []crypto.PublicKey, payload, sig []byte) bool {
	sum := sha256.Sum256(payload)
	for _, k := range keys {
		switch k := k.(type) {
		case *ecdsa.PublicKey:
			if ecdsa.VerifyASN1(k, sum[:], sig) {
				return true
			}
		case *rsa.PublicKey:
			if rsa.VerifyPKCS1v15(k, crypto.SHA256, sum[:], sig) == nil {
				return true
			}
		case ed25519.PublicKey:
			if ed25519.Verify(k, payload, sig) {
				return true
			}
		}
	}
	return false
}

func (v *Verifier) publicKeys(ctx context.Context, r *Requirement) ([]crypto.PublicKey, error) {
	v.mu.Lock()
	k, ok := v.keys[r]
	v.mu.Unlock()
	if ok {
		return k.([]crypto.PublicKey), nil
	}
	datas, err := v.keyMaterial(ctx, r)
	if err != nil {
		return nil, err
	}
	var keys []crypto.PublicKey
	for i, d := range datas {
		ks, err := parsePublicKeys(d, i)
		if err != nil {
			return nil, err
		}
		keys = append(keys, ks...)
	}
	v.mu.Lock()
	v.keys[r] = keys
	v.mu.Unlock()
	return keys, nil
}

// parsePublicKeys returns the PEM PUBLIC KEY blocks of d (key number i).
func parsePublicKeys(d []byte, i int) ([]crypto.PublicKey, error) {
	var keys []crypto.PublicKey
	for rest := d; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "PUBLIC KEY" {
			continue
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key %d: %v: %w", i, err, errdefs.ErrInvalidArgument)
		}
		switch pub.(type) {
		case *ecdsa.PublicKey, *rsa.PublicKey, ed25519.PublicKey:
		default:
			return nil, fmt.Errorf("public key %d: type %T: %w", i, pub, errdefs.ErrNotImplemented)
		}
		keys = append(keys, pub)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("public key %d: no PEM PUBLIC KEY block: %w", i, errdefs.ErrInvalidArgument)
	}
	return keys, nil
}
