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
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/canonjson"
	"github.com/cova-project/cova/imagepull"
)

// Keyless (Fulcio + Rekor) cosign signatures, as containers/image verifies
// them: the signature layer carries the Fulcio-issued signing certificate,
// its chain and a Rekor bundle (a signed entry timestamp, SET); the SET
// must verify with a trusted Rekor key and describe this very signature,
// certificate and payload; its integrated time must lie within the
// validity of the certificate chain up to the configured Fulcio CA; the
// certificate must name the configured OIDC issuer and subject email; the
// signature must verify with the certificate's key. Certificate
// transparency (SCT) is not checked, as in containers/image.

// Cosign's annotations on a keyless signature layer.
const (
	cosignCertAnnotation   = "dev.sigstore.cosign/certificate"
	cosignChainAnnotation  = "dev.sigstore.cosign/chain"
	cosignBundleAnnotation = "dev.sigstore.cosign/bundle"
	maxCertAnnotation      = 64 << 10
	maxBundleAnnotation    = 256 << 10
	maxChainCerts          = 10
	// rekorHashedRekordKind and rekorHashedRekordVersion are the only
	// Rekor entry type accepted (what cosign writes).
	rekorHashedRekordKind    = "hashedrekord"
	rekorHashedRekordVersion = "0.0.1"
)

// Fulcio's OIDC issuer certificate extensions: v1 holds the raw string,
// v2 a DER UTF8String.
var (
	oidFulcioIssuerV1 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}
	oidFulcioIssuerV2 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}
)

// Fulcio is the "fulcio" object of a sigstoreSigned requirement.
type Fulcio struct {
	// CAPath ("kbs:///…", "file:///…" or an absolute path) or CAData
	// (base64 of PEM, or PEM text): the trusted Fulcio root(s).
	CAPath string `json:"caPath,omitempty"`
	CAData string `json:"caData,omitempty"`
	// OIDCIssuer and SubjectEmail must match the signing certificate.
	OIDCIssuer   string `json:"oidcIssuer"`
	SubjectEmail string `json:"subjectEmail"`
}

func (f *Fulcio) validate(field string) error {
	if (f.CAPath == "") == (f.CAData == "") {
		return fmt.Errorf("%s: exactly one of caPath and caData is required: %w", field, errdefs.ErrInvalidArgument)
	}
	if f.OIDCIssuer == "" {
		return fmt.Errorf("%s.oidcIssuer: required: %w", field, errdefs.ErrInvalidArgument)
	}
	if f.SubjectEmail == "" {
		return fmt.Errorf("%s.subjectEmail: required: %w", field, errdefs.ErrInvalidArgument)
	}
	return nil
}

// rekorSources counts the Rekor key fields set in r.
func (r *Requirement) rekorSources() int {
	n := 0
	for _, set := range []bool{r.RekorPublicKeyPath != "", r.RekorPublicKeyPaths != nil, r.RekorPublicKeyData != "", r.RekorPublicKeyDatas != nil} {
		if set {
			n++
		}
	}
	return n
}

// keylessTrust is what a keyless requirement trusts, loaded once.
type keylessTrust struct {
	roots *x509.CertPool
	rekor []crypto.PublicKey
}

func (v *Verifier) keylessTrust(ctx context.Context, r *Requirement) (*keylessTrust, error) {
	v.mu.Lock()
	k, ok := v.keys[r]
	v.mu.Unlock()
	if ok {
		return k.(*keylessTrust), nil
	}
	var caPaths, caDatas []string
	if r.Fulcio.CAPath != "" {
		caPaths = []string{r.Fulcio.CAPath}
	} else {
		caDatas = []string{r.Fulcio.CAData}
	}
	cas, err := v.loadMaterial(ctx, "fulcio CA", caPaths, caDatas)
	if err != nil {
		return nil, err
	}
	kt := &keylessTrust{roots: x509.NewCertPool()}
	n := 0
	for rest := cas[0]; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("fulcio CA certificate %d: %v: %w", n, err, errdefs.ErrInvalidArgument)
		}
		kt.roots.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("fulcio CA: no PEM CERTIFICATE: %w", errdefs.ErrInvalidArgument)
	}
	rekorPaths := r.RekorPublicKeyPaths
	if r.RekorPublicKeyPath != "" {
		rekorPaths = []string{r.RekorPublicKeyPath}
	}
	rekorDatas := r.RekorPublicKeyDatas
	if r.RekorPublicKeyData != "" {
		rekorDatas = []string{r.RekorPublicKeyData}
	}
	mats, err := v.loadMaterial(ctx, "rekor public key", rekorPaths, rekorDatas)
	if err != nil {
		return nil, err
	}
	for i, m := range mats {
		keys, err := parsePublicKeys(m, i)
		if err != nil {
			return nil, fmt.Errorf("rekor %w", err)
		}
		for _, k := range keys {
			switch k.(type) {
			case *ecdsa.PublicKey, ed25519.PublicKey:
				kt.rekor = append(kt.rekor, k)
			default:
				return nil, fmt.Errorf("rekor public key %d: %T: want ECDSA or Ed25519: %w", i, k, errdefs.ErrNotImplemented)
			}
		}
	}
	v.mu.Lock()
	v.keys[r] = kt
	v.mu.Unlock()
	return kt, nil
}

// verifyKeyless checks a keyless signature layer's certificate and Rekor
// bundle for payload and base64 signature sigB64, and returns the key the
// signature must verify with.
func (kt *keylessTrust) verifyKeyless(f *Fulcio, ann map[string]string, sigB64 string, payload []byte) (crypto.PublicKey, error) {
	certPEM, ok := ann[cosignCertAnnotation]
	if !ok || len(certPEM) > maxCertAnnotation {
		return nil, fmt.Errorf("no usable %s annotation (keyless signature expected)", cosignCertAnnotation)
	}
	bundle, ok := ann[cosignBundleAnnotation]
	if !ok || len(bundle) > maxBundleAnnotation {
		return nil, fmt.Errorf("no usable %s annotation (Rekor bundle required)", cosignBundleAnnotation)
	}
	chain := ann[cosignChainAnnotation]
	if len(chain) > maxCertAnnotation*maxChainCerts {
		return nil, fmt.Errorf("%s annotation too long", cosignChainAnnotation)
	}
	integrated, err := verifyRekorSET(kt.rekor, []byte(bundle), []byte(certPEM), sigB64, payload)
	if err != nil {
		return nil, fmt.Errorf("rekor bundle: %w", err)
	}
	return verifyFulcioCert(kt.roots, []byte(certPEM), []byte(chain), integrated, f)
}

// rekorSET is cosign's bundle annotation.
type rekorSET struct {
	SignedEntryTimestamp []byte          `json:"SignedEntryTimestamp"`
	Payload              json.RawMessage `json:"Payload"`
}

// rekorPayload is the SET's signed payload.
type rekorPayload struct {
	Body           []byte `json:"body"`
	IntegratedTime int64  `json:"integratedTime"`
	LogIndex       int64  `json:"logIndex"`
	LogID          string `json:"logID"`
}

// hashedRekord is a Rekor "hashedrekord" v0.0.1 entry.
type hashedRekord struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Spec       struct {
		Data struct {
			Hash struct {
				Algorithm string `json:"algorithm"`
				Value     string `json:"value"`
			} `json:"hash"`
		} `json:"data"`
		Signature struct {
			Content   []byte `json:"content"`
			PublicKey struct {
				Content []byte `json:"content"`
			} `json:"publicKey"`
		} `json:"signature"`
	} `json:"spec"`
}

// verifyRekorSET checks that the SET is signed by one of keys over the
// RFC 8785 form of its payload, and that the logged entry is a
// hashedrekord of exactly this certificate (or key) PEM, signature and
// payload hash. It returns the entry's integrated time.
func verifyRekorSET(keys []crypto.PublicKey, setJSON, certPEM []byte, sigB64 string, payload []byte) (time.Time, error) {
	var set rekorSET
	if err := strictUnmarshal(setJSON, &set); err != nil {
		return time.Time{}, fmt.Errorf("not a cosign bundle: %v", err)
	}
	if len(set.SignedEntryTimestamp) == 0 || len(set.Payload) == 0 {
		return time.Time{}, errors.New("bundle without SignedEntryTimestamp or Payload")
	}
	canon, err := canonjson.Canonicalize(set.Payload)
	if err != nil {
		return time.Time{}, fmt.Errorf("canonicalising the SET payload: %v", err)
	}
	sum := sha256.Sum256(canon)
	verified := false
	for _, k := range keys {
		switch k := k.(type) {
		case *ecdsa.PublicKey:
			verified = ecdsa.VerifyASN1(k, sum[:], set.SignedEntryTimestamp)
		case ed25519.PublicKey:
			verified = ed25519.Verify(k, canon, set.SignedEntryTimestamp)
		}
		if verified {
			break
		}
	}
	if !verified {
		return time.Time{}, errors.New("signed entry timestamp does not verify with any trusted rekor key")
	}
	// Only the verified, canonical bytes are interpreted from here on.
	var p rekorPayload
	if err := strictUnmarshal(canon, &p); err != nil {
		return time.Time{}, fmt.Errorf("SET payload: %v", err)
	}
	if p.IntegratedTime <= 0 {
		return time.Time{}, fmt.Errorf("SET integrated time %d is not valid", p.IntegratedTime)
	}
	var e hashedRekord
	if err := json.Unmarshal(p.Body, &e); err != nil {
		return time.Time{}, fmt.Errorf("rekor entry: %v", err)
	}
	if e.Kind != rekorHashedRekordKind || e.APIVersion != rekorHashedRekordVersion {
		return time.Time{}, fmt.Errorf("rekor entry %q version %q: only %s %s is supported", clip(e.Kind), clip(e.APIVersion), rekorHashedRekordKind, rekorHashedRekordVersion)
	}
	logged, rest := pem.Decode(e.Spec.Signature.PublicKey.Content)
	if logged == nil || len(bytes.TrimSpace(rest)) != 0 {
		return time.Time{}, errors.New("rekor entry public key is not one PEM block")
	}
	mine, rest := pem.Decode(certPEM)
	if mine == nil || len(bytes.TrimSpace(rest)) != 0 {
		return time.Time{}, errors.New("certificate annotation is not one PEM block")
	}
	if !bytes.Equal(logged.Bytes, mine.Bytes) {
		return time.Time{}, errors.New("rekor entry names another certificate")
	}
	sig, err := base64.StdEncoding.DecodeString(sigB64)
	if err != nil || !bytes.Equal(e.Spec.Signature.Content, sig) {
		return time.Time{}, errors.New("rekor entry names another signature")
	}
	if e.Spec.Data.Hash.Algorithm != "sha256" {
		return time.Time{}, fmt.Errorf("rekor entry hash algorithm %q: want sha256", clip(e.Spec.Data.Hash.Algorithm))
	}
	want := sha256.Sum256(payload)
	if got, err := hex.DecodeString(e.Spec.Data.Hash.Value); err != nil || !bytes.Equal(got, want[:]) {
		return time.Time{}, errors.New("rekor entry names another payload")
	}
	return time.Unix(p.IntegratedTime, 0), nil
}

// verifyFulcioCert checks the signing certificate at time at: a chain
// (through the chain annotation's intermediates) to roots with the code
// signing usage, the OIDC issuer extension and the subject email. It
// returns the certificate's public key.
func verifyFulcioCert(roots *x509.CertPool, certPEM, chainPEM []byte, at time.Time, f *Fulcio) (crypto.PublicKey, error) {
	b, rest := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" || len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("certificate annotation is not one PEM CERTIFICATE")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing certificate: %v", err)
	}
	inter := x509.NewCertPool()
	n := 0
	for rest := chainPEM; ; n++ {
		var cb *pem.Block
		if cb, rest = pem.Decode(rest); cb == nil {
			break
		}
		if n >= maxChainCerts {
			return nil, fmt.Errorf("certificate chain longer than %d", maxChainCerts)
		}
		c, err := x509.ParseCertificate(cb.Bytes)
		if err != nil {
			return nil, fmt.Errorf("chain certificate %d: %v", n, err)
		}
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}); err != nil {
		return nil, fmt.Errorf("signing certificate at the rekor integrated time %s: %v", at.UTC().Format(time.RFC3339), err)
	}
	var v1, v2 string
	var has1, has2 bool
	for _, ext := range cert.Extensions {
		switch {
		case ext.Id.Equal(oidFulcioIssuerV1):
			if has1 {
				return nil, errors.New("certificate has two OIDC issuer (v1) extensions")
			}
			v1, has1 = string(ext.Value), true
		case ext.Id.Equal(oidFulcioIssuerV2):
			if has2 {
				return nil, errors.New("certificate has two OIDC issuer (v2) extensions")
			}
			rest, err := asn1.Unmarshal(ext.Value, &v2)
			if err != nil || len(rest) != 0 {
				return nil, errors.New("certificate OIDC issuer (v2) extension is not an ASN.1 string")
			}
			has2 = true
		}
	}
	issuer := v2
	switch {
	case has1 && has2 && v1 != v2:
		return nil, fmt.Errorf("certificate OIDC issuer extensions disagree (%q, %q)", clip(v1), clip(v2))
	case has1 && !has2:
		issuer = v1
	case !has1 && !has2:
		return nil, errors.New("certificate has no OIDC issuer extension")
	}
	if issuer != f.OIDCIssuer {
		return nil, fmt.Errorf("certificate OIDC issuer %q, policy requires %q", clip(issuer), clip(f.OIDCIssuer))
	}
	if !slices.Contains(cert.EmailAddresses, f.SubjectEmail) {
		return nil, fmt.Errorf("certificate subject emails %q do not include %q", clipList(cert.EmailAddresses), clip(f.SubjectEmail))
	}
	switch cert.PublicKey.(type) {
	case *ecdsa.PublicKey, *rsa.PublicKey, ed25519.PublicKey:
		return cert.PublicKey, nil
	}
	return nil, fmt.Errorf("certificate key type %T is not supported", cert.PublicKey)
}

func clipList(ss []string) string {
	return clip(strings.Join(ss[:min(len(ss), 4)], ","))
}

// loadMaterial reads key or certificate material from resource paths and
// from inline data (PEM text as is, otherwise base64).
func (v *Verifier) loadMaterial(ctx context.Context, what string, paths, datas []string) ([][]byte, error) {
	var out [][]byte
	for _, p := range paths {
		b, err := imagepull.ReadResource(ctx, v.opts.Resources, p, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("loading %s: %w", what, err)
		}
		out = append(out, b)
	}
	for i, d := range datas {
		if strings.HasPrefix(strings.TrimSpace(d), "-----BEGIN ") {
			out = append(out, []byte(d))
			continue
		}
		b, err := base64.StdEncoding.DecodeString(d)
		if err != nil {
			return nil, fmt.Errorf("%s data %d: neither base64 nor PEM: %w", what, i, errdefs.ErrInvalidArgument)
		}
		out = append(out, b)
	}
	return out, nil
}
