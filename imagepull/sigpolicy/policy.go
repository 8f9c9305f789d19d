// Package sigpolicy checks image signatures against a
// containers-policy.json (the format containers/image and CoCo's image-rs
// read) before any layer is pulled. It implements imagepull.Verifier.
//
// Supported: the "default" requirements and "transports.docker" scopes
// (most specific scope wins: the full reference, then the repository and
// its parent namespaces, the host, "*.domain" wildcards, then ""), and the
// requirement types insecureAcceptAnything, reject, signedBy (GPG "simple
// signing" signatures from a file:// lookaside store, registries.d
// layout) and sigstoreSigned (cosign signatures with public keys, read
// from the "sha256-<hex>.sig" tag of the image's repository), with every
// signedIdentity variant. Keyless sigstore (fulcio with Rekor) is checked
// as containers/image does (certificate chain to the Fulcio CA at the
// Rekor integrated time, OIDC issuer and email, the Rekor SET); pki and
// Rekor with public keys are ErrNotImplemented, so a policy that asks for
// them is refused rather than weakened.
//
// Semantics follow containers/image, with two deliberate differences for
// CoCo compatibility: a sigstoreSigned keyData may be PEM text (image-rs)
// as well as base64 (containers/image), and other transports than docker
// are ignored. Note that cosign signatures name only a repository, so
// sigstoreSigned needs signedIdentity matchRepository or exactRepository
// to accept them, as in containers/image (image-rs checks no identity).
package sigpolicy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/reference"
)

// Requirement types.
const (
	TypeInsecureAcceptAnything = "insecureAcceptAnything"
	TypeReject                 = "reject"
	TypeSignedBy               = "signedBy"
	TypeSigstoreSigned         = "sigstoreSigned"
)

// Identity types (signedIdentity).
const (
	MatchExact             = "matchExact"
	MatchRepoDigestOrExact = "matchRepoDigestOrExact"
	MatchRepository        = "matchRepository"
	ExactReference         = "exactReference"
	ExactRepository        = "exactRepository"
	RemapIdentity          = "remapIdentity"
)

const maxPolicyBytes = 4 << 20

// Policy is a parsed policy.
type Policy struct {
	// Default applies when no docker scope matches.
	Default []*Requirement
	// Docker maps scopes of transports.docker to requirements.
	Docker map[string][]*Requirement
}

// Requirement is one requirement object.
type Requirement struct {
	Type string `json:"type"`
	// signedBy and sigstoreSigned: exactly one key source.
	KeyType  string   `json:"keyType,omitempty"`
	KeyPath  string   `json:"keyPath,omitempty"`
	KeyPaths []string `json:"keyPaths,omitempty"`
	KeyData  string   `json:"keyData,omitempty"`
	KeyDatas []string `json:"keyDatas,omitempty"`
	// SignedIdentity defaults to matchRepoDigestOrExact.
	SignedIdentity *Identity `json:"signedIdentity,omitempty"`

	// Keyless sigstore (sigstoreSigned): Fulcio certificates with a Rekor
	// SET, verified with the Rekor public key(s). PKI is refused.
	Fulcio              *Fulcio         `json:"fulcio,omitempty"`
	PKI                 json.RawMessage `json:"pki,omitempty"`
	RekorPublicKeyPath  string          `json:"rekorPublicKeyPath,omitempty"`
	RekorPublicKeyPaths []string        `json:"rekorPublicKeyPaths,omitempty"`
	RekorPublicKeyData  string          `json:"rekorPublicKeyData,omitempty"`
	RekorPublicKeyDatas []string        `json:"rekorPublicKeyDatas,omitempty"`
}

// Identity is a signedIdentity object.
type Identity struct {
	Type             string `json:"type"`
	DockerReference  string `json:"dockerReference,omitempty"`
	DockerRepository string `json:"dockerRepository,omitempty"`
	Prefix           string `json:"prefix,omitempty"`
	SignedPrefix     string `json:"signedPrefix,omitempty"`
}

type policyJSON struct {
	Default    *[]json.RawMessage                    `json:"default"`
	Transports map[string]map[string]json.RawMessage `json:"transports"`
}

// Parse decodes and validates a policy. Unknown fields, empty requirement
// lists, malformed scopes or identities are ErrInvalidArgument; keyless
// sigstore requirements are ErrNotImplemented.
func Parse(b []byte) (*Policy, error) {
	if len(b) > maxPolicyBytes {
		return nil, fmt.Errorf("policy: %d bytes is over the %d limit: %w", len(b), maxPolicyBytes, errdefs.ErrInvalidArgument)
	}
	var doc policyJSON
	if err := strictUnmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("policy: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if doc.Default == nil {
		return nil, fmt.Errorf("policy.default: missing: %w", errdefs.ErrInvalidArgument)
	}
	p := &Policy{Docker: map[string][]*Requirement{}}
	var err error
	if p.Default, err = parseRequirements("policy.default", *doc.Default); err != nil {
		return nil, err
	}
	for scope, raw := range doc.Transports["docker"] {
		field := fmt.Sprintf("policy.transports.docker[%q]", scope)
		if err := validateScope(scope); err != nil {
			return nil, fmt.Errorf("%s: %w", field, err)
		}
		var list []json.RawMessage
		if err := json.Unmarshal(raw, &list); err != nil {
			return nil, fmt.Errorf("%s: not a list: %w", field, errdefs.ErrInvalidArgument)
		}
		if p.Docker[scope], err = parseRequirements(field, list); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("data after the JSON object")
	}
	return nil
}

func parseRequirements(field string, list []json.RawMessage) ([]*Requirement, error) {
	if len(list) == 0 {
		return nil, fmt.Errorf("%s: empty requirement list (use insecureAcceptAnything to accept): %w", field, errdefs.ErrInvalidArgument)
	}
	out := make([]*Requirement, 0, len(list))
	for i, raw := range list {
		f := fmt.Sprintf("%s[%d]", field, i)
		var r Requirement
		if err := strictUnmarshal(raw, &r); err != nil {
			return nil, fmt.Errorf("%s: %v: %w", f, err, errdefs.ErrInvalidArgument)
		}
		if err := r.validate(f); err != nil {
			return nil, err
		}
		out = append(out, &r)
	}
	return out, nil
}

func (r *Requirement) validate(f string) error {
	keySources := 0
	for _, set := range []bool{r.KeyPath != "", r.KeyPaths != nil, r.KeyData != "", r.KeyDatas != nil} {
		if set {
			keySources++
		}
	}
	keyless := r.Fulcio != nil || r.PKI != nil || r.RekorPublicKeyPath != "" || r.RekorPublicKeyPaths != nil ||
		r.RekorPublicKeyData != "" || r.RekorPublicKeyDatas != nil
	switch r.Type {
	case TypeInsecureAcceptAnything, TypeReject:
		if keySources > 0 || keyless || r.KeyType != "" || r.SignedIdentity != nil {
			return fmt.Errorf("%s: %s takes no other fields: %w", f, r.Type, errdefs.ErrInvalidArgument)
		}
		return nil
	case TypeSignedBy:
		if r.KeyType != "GPGKeys" {
			return fmt.Errorf("%s.keyType %q: only GPGKeys is supported: %w", f, r.KeyType, errdefs.ErrInvalidArgument)
		}
		if r.KeyDatas != nil || keyless {
			return fmt.Errorf("%s: signedBy takes keyPath, keyPaths or keyData: %w", f, errdefs.ErrInvalidArgument)
		}
	case TypeSigstoreSigned:
		if r.KeyType != "" {
			return fmt.Errorf("%s.keyType: not used by sigstoreSigned: %w", f, errdefs.ErrInvalidArgument)
		}
		if r.PKI != nil {
			return fmt.Errorf("%s.pki: X.509 PKI signatures are not supported; use fulcio or keys: %w", f, errdefs.ErrNotImplemented)
		}
		if r.Fulcio != nil {
			if keySources > 0 {
				return fmt.Errorf("%s: fulcio and keyPath/keyPaths/keyData/keyDatas are exclusive: %w", f, errdefs.ErrInvalidArgument)
			}
			if err := r.Fulcio.validate(f + ".fulcio"); err != nil {
				return err
			}
			if r.rekorSources() != 1 {
				return fmt.Errorf("%s: fulcio needs exactly one of rekorPublicKeyPath, rekorPublicKeyPaths, rekorPublicKeyData, rekorPublicKeyDatas: %w", f, errdefs.ErrInvalidArgument)
			}
			if (r.RekorPublicKeyPaths != nil && len(r.RekorPublicKeyPaths) == 0) || (r.RekorPublicKeyDatas != nil && len(r.RekorPublicKeyDatas) == 0) {
				return fmt.Errorf("%s: empty Rekor key list: %w", f, errdefs.ErrInvalidArgument)
			}
			if r.SignedIdentity != nil {
				return r.SignedIdentity.validate(f + ".signedIdentity")
			}
			return nil
		}
		if keyless {
			return fmt.Errorf("%s: Rekor with public keys is not supported (Rekor is checked for fulcio signatures): %w", f, errdefs.ErrNotImplemented)
		}
	default:
		return fmt.Errorf("%s.type %q: unknown: %w", f, r.Type, errdefs.ErrInvalidArgument)
	}
	if keySources != 1 {
		return fmt.Errorf("%s: exactly one of keyPath, keyPaths, keyData%s is required: %w", f,
			map[bool]string{true: ", keyDatas", false: ""}[r.Type == TypeSigstoreSigned], errdefs.ErrInvalidArgument)
	}
	if (r.KeyPaths != nil && len(r.KeyPaths) == 0) || (r.KeyDatas != nil && len(r.KeyDatas) == 0) {
		return fmt.Errorf("%s: empty key list: %w", f, errdefs.ErrInvalidArgument)
	}
	if r.SignedIdentity != nil {
		if err := r.SignedIdentity.validate(f + ".signedIdentity"); err != nil {
			return err
		}
	}
	return nil
}

func (id *Identity) validate(f string) error {
	none := id.DockerReference == "" && id.DockerRepository == "" && id.Prefix == "" && id.SignedPrefix == ""
	switch id.Type {
	case MatchExact, MatchRepoDigestOrExact, MatchRepository:
		if !none {
			return fmt.Errorf("%s: %s takes no other fields: %w", f, id.Type, errdefs.ErrInvalidArgument)
		}
	case ExactReference:
		r, err := parseRef(id.DockerReference)
		if err != nil || r.nameOnly || id.DockerRepository != "" || id.Prefix != "" || id.SignedPrefix != "" {
			return fmt.Errorf("%s.dockerReference %q: want a reference with a tag or digest: %w", f, id.DockerReference, errdefs.ErrInvalidArgument)
		}
	case ExactRepository:
		r, err := parseRef(id.DockerRepository)
		if err != nil || !r.nameOnly || id.DockerReference != "" || id.Prefix != "" || id.SignedPrefix != "" {
			return fmt.Errorf("%s.dockerRepository %q: want a repository without tag or digest: %w", f, id.DockerRepository, errdefs.ErrInvalidArgument)
		}
	case RemapIdentity:
		if id.DockerReference != "" || id.DockerRepository != "" {
			return fmt.Errorf("%s: remapIdentity takes prefix and signedPrefix: %w", f, errdefs.ErrInvalidArgument)
		}
		for name, v := range map[string]string{"prefix": id.Prefix, "signedPrefix": id.SignedPrefix} {
			if err := validateNamespace(v); err != nil {
				return fmt.Errorf("%s.%s %q: %w", f, name, v, err)
			}
		}
	default:
		return fmt.Errorf("%s.type %q: unknown: %w", f, id.Type, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validateScope accepts "", "*.domain", a fully expanded host, namespace
// or repository ("docker.io/library/busybox", not "busybox"), or such a
// repository with a tag or digest.
func validateScope(scope string) error {
	switch {
	case scope == "":
		return nil
	case strings.HasPrefix(scope, "*."):
		return validateWildcard(scope[2:])
	case strings.Contains(scope, "@") || (strings.Contains(scope, "/") && strings.LastIndexByte(scope, ':') > strings.LastIndexByte(scope, '/')):
		r, err := parseRef(scope)
		if err != nil || r.canonical() != scope || r.nameOnly {
			return fmt.Errorf("scope must be a fully expanded reference (e.g. docker.io/library/busybox:latest): %w", errdefs.ErrInvalidArgument)
		}
		return nil
	default:
		return validateNamespace(scope)
	}
}

func validateWildcard(d string) error {
	if d == "" || strings.ContainsAny(d, "/:*@") {
		return fmt.Errorf("wildcard scope must be *.domain: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := reference.Parse(d + "/x"); err != nil {
		return fmt.Errorf("wildcard scope *.%s: %w", d, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validateNamespace accepts a fully expanded host[:port], namespace or
// repository without tag or digest.
func validateNamespace(ns string) error {
	if ns == "" || strings.HasSuffix(ns, "/") || strings.ContainsAny(ns, "@") {
		return fmt.Errorf("want host[:port][/namespace…]: %w", errdefs.ErrInvalidArgument)
	}
	if strings.LastIndexByte(ns, ':') > strings.LastIndexByte(ns, '/') && strings.Contains(ns, "/") {
		return fmt.Errorf("a namespace has no tag: %w", errdefs.ErrInvalidArgument)
	}
	r, err := reference.Parse(ns + "/x")
	if err != nil || r.Name() != ns+"/x" {
		return fmt.Errorf("want a fully expanded name (e.g. docker.io/library, not library): %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// scopes lists the docker scopes to try for ref, most specific first.
func scopes(ref reference.Reference) []string {
	r := imageRef(ref)
	out := []string{r.canonical()}
	name := r.name
	for {
		out = append(out, name)
		i := strings.LastIndexByte(name, '/')
		if i < 0 {
			break
		}
		name = name[:i]
	}
	if i := strings.IndexByte(name, ':'); i >= 0 {
		name = name[:i]
	}
	for {
		i := strings.IndexByte(name, '.')
		if i < 0 {
			break
		}
		name = name[i+1:]
		out = append(out, "*."+name)
	}
	return append(out, "")
}

// RequirementsFor returns the requirements that apply to ref and the
// scope they came from ("default" for the default list).
func (p *Policy) RequirementsFor(ref reference.Reference) ([]*Requirement, string) {
	for _, s := range scopes(ref) {
		if reqs, ok := p.Docker[s]; ok {
			return reqs, s
		}
	}
	return p.Default, "default"
}

// sigRef is a parsed docker reference as used for identity checks.
type sigRef struct {
	name     string // domain/path, normalised
	tag      string
	digest   oci.Digest
	nameOnly bool
}

func (r sigRef) canonical() string {
	s := r.name
	if r.tag != "" {
		s += ":" + r.tag
	}
	if !r.digest.IsZero() {
		s += "@" + r.digest.String()
	}
	return s
}

// parseRef normalises a docker reference ("busybox" →
// "docker.io/library/busybox") and records whether it names only a
// repository.
func parseRef(s string) (sigRef, error) {
	if s == "" {
		return sigRef{}, fmt.Errorf("empty reference: %w", errdefs.ErrInvalidArgument)
	}
	rest, _, hasDigest := strings.Cut(s, "@")
	hasTag := strings.LastIndexByte(rest, ':') > strings.LastIndexByte(rest, '/')
	r, err := reference.Parse(s)
	if err != nil {
		return sigRef{}, err
	}
	out := sigRef{name: r.Name(), digest: r.Digest, nameOnly: !hasTag && !hasDigest}
	if hasTag {
		out.tag = r.Tag
	}
	return out, nil
}

// imageRef is the identity of the image being pulled: with a digest the
// digest wins (it is what is pulled) and the tag is dropped.
func imageRef(ref reference.Reference) sigRef {
	if !ref.Digest.IsZero() {
		return sigRef{name: ref.Name(), digest: ref.Digest}
	}
	return sigRef{name: ref.Name(), tag: ref.Tag}
}
