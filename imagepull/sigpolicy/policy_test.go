package sigpolicy

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/reference"
)

func mustRef(t *testing.T, s string) reference.Reference {
	t.Helper()
	r, err := reference.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestParse(t *testing.T) {
	const key = `"keyPath":"/k"`
	tests := []struct {
		name    string
		policy  string
		wantErr error
	}{
		{"accept all", `{"default":[{"type":"insecureAcceptAnything"}]}`, nil},
		{"transports empty", `{"default":[{"type":"reject"}],"transports":{}}`, nil},
		{"other transports ignored", `{"default":[{"type":"reject"}],"transports":{"atomic":{"x":[{"type":"reject"}]}}}`, nil},
		{"signedBy", `{"default":[{"type":"reject"}],"transports":{"docker":{"quay.io/org":[{"type":"signedBy","keyType":"GPGKeys",` + key + `}]}}}`, nil},
		{"sigstore keyData PEM", `{"default":[{"type":"sigstoreSigned","keyData":"-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n","signedIdentity":{"type":"matchRepository"}}]}`, nil},
		{"all identities", `{"default":[{"type":"reject"}],"transports":{"docker":{
			"a.io/a":[{"type":"sigstoreSigned",` + key + `,"signedIdentity":{"type":"matchExact"}}],
			"a.io/b":[{"type":"sigstoreSigned",` + key + `,"signedIdentity":{"type":"exactReference","dockerReference":"a.io/x:1"}}],
			"a.io/c":[{"type":"sigstoreSigned",` + key + `,"signedIdentity":{"type":"exactRepository","dockerRepository":"a.io/x"}}],
			"a.io/d":[{"type":"sigstoreSigned",` + key + `,"signedIdentity":{"type":"remapIdentity","prefix":"a.io","signedPrefix":"b.io/ns"}}],
			"*.example.com":[{"type":"insecureAcceptAnything"}],
			"localhost:5000/x:tag":[{"type":"insecureAcceptAnything"}],
			"":[{"type":"reject"}]}}}`, nil},
		{"no default", `{"transports":{}}`, errdefs.ErrInvalidArgument},
		{"unknown field", `{"default":[{"type":"reject"}],"extra":1}`, errdefs.ErrInvalidArgument},
		{"unknown requirement field", `{"default":[{"type":"reject","keyPath":"/k"}]}`, errdefs.ErrInvalidArgument},
		{"unknown type", `{"default":[{"type":"signedByAnyone"}]}`, errdefs.ErrInvalidArgument},
		{"empty list", `{"default":[]}`, errdefs.ErrInvalidArgument},
		{"empty scope list", `{"default":[{"type":"reject"}],"transports":{"docker":{"a.io":[]}}}`, errdefs.ErrInvalidArgument},
		{"signedBy without keyType", `{"default":[{"type":"signedBy",` + key + `}]}`, errdefs.ErrInvalidArgument},
		{"two key sources", `{"default":[{"type":"sigstoreSigned",` + key + `,"keyData":"AA=="}]}`, errdefs.ErrInvalidArgument},
		{"no key", `{"default":[{"type":"sigstoreSigned"}]}`, errdefs.ErrInvalidArgument},
		{"fulcio", `{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"/x","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"/r"}]}`, nil},
		{"fulcio caData, rekor datas", `{"default":[{"type":"sigstoreSigned","fulcio":{"caData":"AA==","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyDatas":["AA=="],"signedIdentity":{"type":"matchRepository"}}]}`, nil},
		{"fulcio without rekor", `{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"/x","oidcIssuer":"i","subjectEmail":"e"}}]}`, errdefs.ErrInvalidArgument},
		{"fulcio with two rekor sources", `{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"/x","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"/r","rekorPublicKeyData":"AA=="}]}`, errdefs.ErrInvalidArgument},
		{"fulcio with empty rekor list", `{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"/x","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPaths":[]}]}`, errdefs.ErrInvalidArgument},
		{"fulcio with a key", `{"default":[{"type":"sigstoreSigned",` + key + `,"fulcio":{"caPath":"/x","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"/r"}]}`, errdefs.ErrInvalidArgument},
		{"fulcio two CA sources", `{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"/x","caData":"AA==","oidcIssuer":"i","subjectEmail":"e"},"rekorPublicKeyPath":"/r"}]}`, errdefs.ErrInvalidArgument},
		{"fulcio no issuer", `{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"/x","subjectEmail":"e"},"rekorPublicKeyPath":"/r"}]}`, errdefs.ErrInvalidArgument},
		{"fulcio no email", `{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"/x","oidcIssuer":"i"},"rekorPublicKeyPath":"/r"}]}`, errdefs.ErrInvalidArgument},
		{"fulcio unknown field", `{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"/x","oidcIssuer":"i","subjectEmail":"e","subjectURI":"u"},"rekorPublicKeyPath":"/r"}]}`, errdefs.ErrInvalidArgument},
		{"pki", `{"default":[{"type":"sigstoreSigned","pki":{"caRootsPath":"/x"}}]}`, errdefs.ErrNotImplemented},
		{"fulcio in signedBy", `{"default":[{"type":"signedBy","keyType":"GPGKeys",` + key + `,"fulcio":{"caPath":"/x","oidcIssuer":"i","subjectEmail":"e"}}]}`, errdefs.ErrInvalidArgument},
		{"rekor with key", `{"default":[{"type":"sigstoreSigned",` + key + `,"rekorPublicKeyPath":"/r"}]}`, errdefs.ErrNotImplemented},
		{"unexpanded scope", `{"default":[{"type":"reject"}],"transports":{"docker":{"busybox":[{"type":"reject"}]}}}`, errdefs.ErrInvalidArgument},
		{"scope with scheme", `{"default":[{"type":"reject"}],"transports":{"docker":{"https://a.io":[{"type":"reject"}]}}}`, errdefs.ErrInvalidArgument},
		{"bad wildcard", `{"default":[{"type":"reject"}],"transports":{"docker":{"*.a.io/x":[{"type":"reject"}]}}}`, errdefs.ErrInvalidArgument},
		{"exactReference without tag", `{"default":[{"type":"sigstoreSigned",` + key + `,"signedIdentity":{"type":"exactReference","dockerReference":"a.io/x"}}]}`, errdefs.ErrInvalidArgument},
		{"exactRepository with tag", `{"default":[{"type":"sigstoreSigned",` + key + `,"signedIdentity":{"type":"exactRepository","dockerRepository":"a.io/x:1"}}]}`, errdefs.ErrInvalidArgument},
		{"remap bad prefix", `{"default":[{"type":"sigstoreSigned",` + key + `,"signedIdentity":{"type":"remapIdentity","prefix":"a.io/x:1","signedPrefix":"b.io"}}]}`, errdefs.ErrInvalidArgument},
		{"unknown identity", `{"default":[{"type":"sigstoreSigned",` + key + `,"signedIdentity":{"type":"matchAnything"}}]}`, errdefs.ErrInvalidArgument},
		{"trailing data", `{"default":[{"type":"reject"}]} {}`, errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.policy))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestScopes(t *testing.T) {
	p, err := Parse([]byte(`{"default":[{"type":"reject"}],"transports":{"docker":{
		"quay.io/org/app:v1":[{"type":"insecureAcceptAnything"}],
		"quay.io/org/app":[{"type":"insecureAcceptAnything"}],
		"quay.io/org":[{"type":"insecureAcceptAnything"}],
		"quay.io":[{"type":"insecureAcceptAnything"}],
		"*.example.com":[{"type":"insecureAcceptAnything"}],
		"*.com":[{"type":"insecureAcceptAnything"}],
		"docker.io/library":[{"type":"insecureAcceptAnything"}],
		"localhost:5000":[{"type":"insecureAcceptAnything"}],
		"":[{"type":"insecureAcceptAnything"}]
	}}}`))
	if err != nil {
		t.Fatal(err)
	}
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct{ ref, scope string }{
		{"quay.io/org/app:v1", "quay.io/org/app:v1"},
		{"quay.io/org/app:v2", "quay.io/org/app"},
		{"quay.io/org/app@" + d, "quay.io/org/app"},
		{"quay.io/org/other", "quay.io/org"},
		{"quay.io/orgx/app", "quay.io"},
		{"reg.example.com/a/b", "*.example.com"},
		{"a.b.example.com:8443/x", "*.example.com"},
		{"other.com/x", "*.com"},
		{"busybox", "docker.io/library"},
		{"alpine:3", "docker.io/library"},
		{"user/app", ""},
		{"localhost:5000/x/y", "localhost:5000"},
		{"10.0.0.1:5000/x", ""},
	}
	for _, tc := range tests {
		t.Run(tc.ref, func(t *testing.T) {
			if _, got := p.RequirementsFor(mustRef(t, tc.ref)); got != tc.scope {
				t.Fatalf("scope %q, want %q", got, tc.scope)
			}
		})
	}
	p2, _ := Parse([]byte(`{"default":[{"type":"reject"}]}`))
	if _, got := p2.RequirementsFor(mustRef(t, "quay.io/x")); got != "default" {
		t.Fatalf("scope %q, want default", got)
	}
}

func TestIdentity(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	id := func(typ string) *Identity { return &Identity{Type: typ} }
	tests := []struct {
		name   string
		id     *Identity
		image  string
		signed string
		ok     bool
	}{
		{"default exact tag", nil, "quay.io/a/b:v1", "quay.io/a/b:v1", true},
		{"default other tag", nil, "quay.io/a/b:v1", "quay.io/a/b:v2", false},
		{"default repo only (cosign)", nil, "quay.io/a/b:v1", "quay.io/a/b", false},
		{"default digest any tag", nil, "quay.io/a/b@" + d, "quay.io/a/b:v9", true},
		{"default digest other repo", nil, "quay.io/a/b@" + d, "quay.io/a/c:v9", false},
		{"default digest repo only", nil, "quay.io/a/b@" + d, "quay.io/a/b", false},
		{"default normalised", nil, "busybox:1", "docker.io/library/busybox:1", true},
		{"default normalised signed", nil, "docker.io/library/busybox:1", "busybox:1", true},
		{"matchExact", id(MatchExact), "quay.io/a/b:v1", "quay.io/a/b:v1", true},
		{"matchExact digest vs tag", id(MatchExact), "quay.io/a/b@" + d, "quay.io/a/b:v1", false},
		{"matchExact digest", id(MatchExact), "quay.io/a/b@" + d, "quay.io/a/b@" + d, true},
		{"matchRepository repo only", id(MatchRepository), "quay.io/a/b:v1", "quay.io/a/b", true},
		{"matchRepository other tag", id(MatchRepository), "quay.io/a/b:v1", "quay.io/a/b:v2", true},
		{"matchRepository other repo", id(MatchRepository), "quay.io/a/b:v1", "quay.io/a/bb", false},
		{"exactReference", &Identity{Type: ExactReference, DockerReference: "pub.io/x:1"}, "mirror.io/a:v1", "pub.io/x:1", true},
		{"exactReference other", &Identity{Type: ExactReference, DockerReference: "pub.io/x:1"}, "mirror.io/a:v1", "pub.io/x:2", false},
		{"exactRepository", &Identity{Type: ExactRepository, DockerRepository: "pub.io/x"}, "mirror.io/a:v1", "pub.io/x", true},
		{"exactRepository tagged signature", &Identity{Type: ExactRepository, DockerRepository: "pub.io/x"}, "mirror.io/a:v1", "pub.io/x:7", true},
		{"exactRepository other", &Identity{Type: ExactRepository, DockerRepository: "pub.io/x"}, "mirror.io/a:v1", "pub.io/y", false},
		{"remap", &Identity{Type: RemapIdentity, Prefix: "mirror.io/ns", SignedPrefix: "pub.io/org"}, "mirror.io/ns/app:v1", "pub.io/org/app:v1", true},
		{"remap wrong tag", &Identity{Type: RemapIdentity, Prefix: "mirror.io/ns", SignedPrefix: "pub.io/org"}, "mirror.io/ns/app:v1", "pub.io/org/app:v2", false},
		{"remap prefix at boundary only", &Identity{Type: RemapIdentity, Prefix: "mirror.io/ns", SignedPrefix: "pub.io/org"}, "mirror.io/nsx/app:v1", "pub.io/orgx/app:v1", false},
		{"remap not matching keeps identity", &Identity{Type: RemapIdentity, Prefix: "mirror.io/ns", SignedPrefix: "pub.io/org"}, "other.io/app:v1", "other.io/app:v1", true},
		{"garbage signed", nil, "quay.io/a/b:v1", "Not A Ref", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := matchIdentity(tc.id, mustRef(t, tc.image), tc.signed)
			if (err == nil) != tc.ok {
				t.Fatalf("match = %v, want ok=%v", err, tc.ok)
			}
		})
	}
	err := matchIdentity(nil, mustRef(t, "quay.io/a/b:v1"), "quay.io/a/b")
	if err == nil || !strings.Contains(err.Error(), "matchRepository") {
		t.Fatalf("no hint for cosign identities: %v", err)
	}
}

func TestParsePayload(t *testing.T) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	good := `{"critical":{"identity":{"docker-reference":"quay.io/a"},"image":{"docker-manifest-digest":"` + d + `"},"type":"cosign container image signature"},"optional":null}`
	tests := []struct {
		name, body string
		ok         bool
	}{
		{"good", good, true},
		{"optional object", strings.Replace(good, `"optional":null`, `"optional":{"creator":"x"}`, 1), true},
		{"other type", strings.Replace(good, "cosign container image signature", "atomic container signature", 1), false},
		{"duplicate digest", strings.Replace(good, `"image":{`, `"image":{"docker-manifest-digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111",`, 1), false},
		{"case variant key", strings.Replace(good, "docker-manifest-digest", "Docker-manifest-digest", 1), false},
		{"extra critical field", strings.Replace(good, `"type":`, `"extra":1,"type":`, 1), false},
		{"missing optional", strings.Replace(good, `,"optional":null`, ``, 1), false},
		{"bad digest", strings.Replace(good, d, "sha256:abc", 1), false},
		{"trailing", good + "{}", false},
		{"not JSON", "nope", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := parsePayload([]byte(tc.body), cosignSignatureType)
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && (p.manifestDigest.String() != d || p.dockerReference != "quay.io/a") {
				t.Fatalf("payload %+v", p)
			}
		})
	}
}

func TestParseLookaside(t *testing.T) {
	l, err := ParseLookaside([]byte("default-docker:\n  sigstore: file:///var/lib/sigs\n"),
		[]byte("docker:\n  quay.io/org:\n    lookaside: file:///org-sigs\n  registry.io:\n    sigstore-staging: file:///x\n    use-sigstore-attachments: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	for ref, want := range map[string]string{
		"quay.io/org/app:v1": "file:///org-sigs",
		"quay.io/other:v1":   "file:///var/lib/sigs",
		"registry.io/a:1":    "",
	} {
		if got := l.baseFor(mustRef(t, ref)); got != want {
			t.Errorf("%s: %q, want %q", ref, got, want)
		}
	}
	for name, doc := range map[string][]string{
		"unknown key":     {"default-docker:\n  lookasidez: x\n"},
		"default twice":   {"default-docker:\n  lookaside: a\n", "default-docker:\n  lookaside: b\n"},
		"bad scope":       {"docker:\n  busybox:\n    lookaside: x\n"},
		"not YAML object": {"[1,2"},
	} {
		t.Run(name, func(t *testing.T) {
			var docs [][]byte
			for _, d := range doc {
				docs = append(docs, []byte(d))
			}
			if _, err := ParseLookaside(docs...); !errdefs.IsInvalidArgument(err) {
				t.Fatalf("got %v", err)
			}
		})
	}
}
