package sigpolicy

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/registry"
)

// ---- cosign-format signatures, made the way cosign makes them ----

// cosignPayload is cosign's simple-signing payload: the repository (no
// tag) and the manifest digest.
func cosignPayload(repo string, d oci.Digest) []byte {
	return fmt.Appendf(nil, `{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, repo, d.String())
}

// cosignSign signs payload as cosign does with a key pair: SHA-256, then
// ECDSA ASN.1 / RSA PKCS#1 v1.5 / Ed25519 (over the payload), base64.
func cosignSign(t testing.TB, key crypto.Signer, payload []byte) string {
	t.Helper()
	var (
		sig []byte
		err error
	)
	if _, ok := key.(ed25519.PrivateKey); ok {
		sig, err = key.Sign(rand.Reader, payload, crypto.Hash(0))
	} else {
		sum := sha256.Sum256(payload)
		sig, err = key.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

func pubPEM(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

type cosignLayer struct {
	payload []byte
	sig     string
	media   string            // default cosign's payload type
	ann     map[string]string // more annotations (keyless: certificate, chain, bundle)
}

// cosignManifestFor builds the ".sig" manifest (and its blobs) holding the
// layers: config, then one layer per signature with the signature
// annotation, as cosign pushes it.
func cosignManifestFor(layers ...cosignLayer) (manifest []byte, blobs map[oci.Digest][]byte) {
	blobs = map[oci.Digest][]byte{}
	var descs []oci.Descriptor
	var diffIDs []string
	for _, l := range layers {
		d := oci.FromBytes(l.payload)
		blobs[d] = l.payload
		mt := l.media
		if mt == "" {
			mt = cosignPayloadMediaType
		}
		ann := map[string]string{cosignSigAnnotation: l.sig}
		for k, v := range l.ann {
			ann[k] = v
		}
		descs = append(descs, oci.Descriptor{MediaType: mt, Digest: d, Size: int64(len(l.payload)), Annotations: ann})
		diffIDs = append(diffIDs, d.String())
	}
	cfg, _ := json.Marshal(map[string]any{"architecture": "", "os": "", "config": map[string]any{},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}})
	cd := oci.FromBytes(cfg)
	blobs[cd] = cfg
	m, _ := json.Marshal(oci.Manifest{SchemaVersion: 2, MediaType: oci.MediaTypeOCIManifest,
		Config: oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: cd, Size: int64(len(cfg))}, Layers: descs})
	return m, blobs
}

func sigTag(d oci.Digest) string { return "sha256-" + d.Hex() + ".sig" }

// fakeRepo serves tags and blobs from memory and records requests.
type fakeRepo struct {
	mu       sync.Mutex
	tags     map[string][]byte
	blobs    map[oci.Digest][]byte
	fail     error
	requests []string
}

func newFakeRepo() *fakeRepo {
	return &fakeRepo{tags: map[string][]byte{}, blobs: map[oci.Digest][]byte{}}
}

func (f *fakeRepo) add(tag string, layers ...cosignLayer) {
	m, blobs := cosignManifestFor(layers...)
	f.tags[tag] = m
	for d, b := range blobs {
		f.blobs[d] = b
	}
}

func (f *fakeRepo) FetchTaggedManifest(ctx context.Context, tag string) (registry.Fetched, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, "manifest "+tag)
	if f.fail != nil {
		return registry.Fetched{}, f.fail
	}
	b, ok := f.tags[tag]
	if !ok {
		return registry.Fetched{}, fmt.Errorf("manifest %s: %w", tag, errdefs.ErrNotFound)
	}
	return registry.Fetched{Digest: oci.FromBytes(b), ContentType: oci.MediaTypeOCIManifest, Body: b}, nil
}

func (f *fakeRepo) FetchBlob(ctx context.Context, desc oci.Descriptor, maxSize int64) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests = append(f.requests, "blob "+desc.Digest.String())
	b, ok := f.blobs[desc.Digest]
	if !ok {
		return nil, fmt.Errorf("blob: %w", errdefs.ErrNotFound)
	}
	if desc.Size > maxSize || oci.FromBytes(b) != desc.Digest || int64(len(b)) != desc.Size {
		return nil, fmt.Errorf("blob %s: digest or size mismatch: %w", desc.Digest, errdefs.ErrFailedPrecondition)
	}
	return b, nil
}

type resources map[string][]byte

func (r resources) GetResource(ctx context.Context, uri string) ([]byte, error) {
	if b, ok := r[uri]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("%s: %w", uri, errdefs.ErrNotFound)
}

func mustPolicy(t testing.TB, s string) *Policy {
	t.Helper()
	p, err := Parse([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSigstoreSigned(t *testing.T) {
	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	keyFile := filepath.Join(t.TempDir(), "cosign.pub")
	os.WriteFile(keyFile, pubPEM(t, key), 0o600)

	const repo = "reg.example.com/team/app"
	ref := mustRef(t, repo+":v1")
	man := oci.FromBytes([]byte("the platform manifest"))
	idx := oci.FromBytes([]byte("the index"))
	info := imagepull.ManifestInfo{Reference: ref, Digest: man}
	good := cosignPayload(repo, man)

	withKey := func(keyField, identity string) string {
		if identity != "" {
			identity = `,"signedIdentity":` + identity
		}
		return `{"default":[{"type":"reject"}],"transports":{"docker":{"reg.example.com/team":[{"type":"sigstoreSigned",` + keyField + identity + `}]}}}`
	}
	matchRepo := `{"type":"matchRepository"}`
	keyData := `"keyData":"` + base64.StdEncoding.EncodeToString(pubPEM(t, key)) + `"`
	pemText, _ := json.Marshal(string(pubPEM(t, key)))

	tests := []struct {
		name    string
		policy  string
		setup   func(f *fakeRepo)
		info    imagepull.ManifestInfo
		res     imagepull.ResourceGetter
		wantErr error // nil: accepted
		errText string
	}{
		{name: "signed, keyData base64", policy: withKey(keyData, matchRepo),
			setup: func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good)}) }},
		{name: "signed, keyData PEM text (image-rs)", policy: withKey(`"keyData":`+string(pemText), matchRepo),
			setup: func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good)}) }},
		{name: "signed, keyPath file", policy: withKey(`"keyPath":"`+keyFile+`"`, matchRepo),
			setup: func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good)}) }},
		{name: "signed, keyPath file://", policy: withKey(`"keyPath":"file://`+keyFile+`"`, matchRepo),
			setup: func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good)}) }},
		{name: "signed, keyPath kbs", policy: withKey(`"keyPath":"kbs:///default/cosign-public-key/test"`, matchRepo),
			res:   resources{"kbs:///default/cosign-public-key/test": pubPEM(t, key)},
			setup: func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good)}) }},
		{name: "kbs key without a resource getter", policy: withKey(`"keyPath":"kbs:///default/cosign-public-key/test"`, matchRepo),
			setup:   func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good)}) },
			wantErr: errdefs.ErrFailedPrecondition},
		{name: "keyDatas, second key signs", policy: withKey(`"keyDatas":["`+base64.StdEncoding.EncodeToString(pubPEM(t, other))+`",`+string(pemText)+`]`, matchRepo),
			setup: func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good)}) }},
		{name: "RSA key", policy: withKey(`"keyData":"`+base64.StdEncoding.EncodeToString(pubPEM(t, rsaKey))+`"`, matchRepo),
			setup: func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, rsaKey, good)}) }},
		{name: "Ed25519 key", policy: withKey(`"keyData":"`+base64.StdEncoding.EncodeToString(pubPEM(t, edKey))+`"`, matchRepo),
			setup: func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, edKey, good)}) }},
		{name: "exactRepository", policy: withKey(keyData, `{"type":"exactRepository","dockerRepository":"`+repo+`"}`),
			setup: func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good)}) }},
		{name: "index signed", policy: withKey(keyData, matchRepo), info: imagepull.ManifestInfo{Reference: ref, Digest: man, IndexDigest: idx},
			setup: func(f *fakeRepo) {
				p := cosignPayload(repo, idx)
				f.add(sigTag(idx), cosignLayer{payload: p, sig: cosignSign(t, key, p)})
			}},
		{name: "bad signature first, good second", policy: withKey(keyData, matchRepo),
			setup: func(f *fakeRepo) {
				f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, other, good)}, cosignLayer{payload: good, sig: cosignSign(t, key, good)})
			}},
		{name: "unsigned", policy: withKey(keyData, matchRepo), wantErr: errdefs.ErrPermissionDenied, errText: "not signed"},
		{name: "signed by another key", policy: withKey(keyData, matchRepo),
			setup:   func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, other, good)}) },
			wantErr: errdefs.ErrPermissionDenied, errText: "does not verify"},
		{name: "tampered payload", policy: withKey(keyData, matchRepo),
			setup: func(f *fakeRepo) {
				sig := cosignSign(t, key, good)
				evil := cosignPayload(repo, oci.FromBytes([]byte("another manifest")))
				f.add(sigTag(man), cosignLayer{payload: evil, sig: sig})
			}, wantErr: errdefs.ErrPermissionDenied, errText: "does not verify"},
		{name: "signature of another digest", policy: withKey(keyData, matchRepo),
			setup: func(f *fakeRepo) {
				p := cosignPayload(repo, oci.FromBytes([]byte("another manifest")))
				f.add(sigTag(man), cosignLayer{payload: p, sig: cosignSign(t, key, p)})
			}, wantErr: errdefs.ErrPermissionDenied, errText: "signs manifest"},
		{name: "index signature for the platform manifest's digest is not enough", policy: withKey(keyData, matchRepo),
			info: imagepull.ManifestInfo{Reference: ref, Digest: man, IndexDigest: idx},
			setup: func(f *fakeRepo) {
				p := cosignPayload(repo, man)
				f.add(sigTag(idx), cosignLayer{payload: p, sig: cosignSign(t, key, p)})
			}, wantErr: errdefs.ErrPermissionDenied, errText: "signs manifest"},
		{name: "other identity", policy: withKey(keyData, matchRepo),
			setup: func(f *fakeRepo) {
				p := cosignPayload("reg.example.com/team/other", man)
				f.add(sigTag(man), cosignLayer{payload: p, sig: cosignSign(t, key, p)})
			}, wantErr: errdefs.ErrPermissionDenied, errText: "does not match"},
		{name: "default identity refuses repository-only cosign identity", policy: withKey(keyData, ""),
			setup:   func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good)}) },
			wantErr: errdefs.ErrPermissionDenied, errText: "matchRepository"},
		{name: "atomic payload type", policy: withKey(keyData, matchRepo),
			setup: func(f *fakeRepo) {
				p := bytes.Replace(good, []byte("cosign container image signature"), []byte("atomic container signature"), 1)
				f.add(sigTag(man), cosignLayer{payload: p, sig: cosignSign(t, key, p)})
			}, wantErr: errdefs.ErrPermissionDenied, errText: "critical.type"},
		{name: "wrong layer media type", policy: withKey(keyData, matchRepo),
			setup: func(f *fakeRepo) {
				f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good), media: "application/octet-stream"})
			}, wantErr: errdefs.ErrPermissionDenied, errText: "media type"},
		{name: "registry unavailable keeps its class", policy: withKey(keyData, matchRepo),
			setup:   func(f *fakeRepo) { f.fail = fmt.Errorf("reset: %w", errdefs.ErrUnavailable) },
			wantErr: errdefs.ErrUnavailable},
		{name: "insecureAcceptAnything", policy: `{"default":[{"type":"insecureAcceptAnything"}]}`},
		{name: "reject", policy: `{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{"reg.example.com":[{"type":"reject"}]}}}`,
			wantErr: errdefs.ErrPermissionDenied, errText: "rejects"},
		{name: "all requirements must hold", policy: `{"default":[{"type":"sigstoreSigned",` + keyData + `,"signedIdentity":` + matchRepo + `},{"type":"reject"}]}`,
			setup:   func(f *fakeRepo) { f.add(sigTag(man), cosignLayer{payload: good, sig: cosignSign(t, key, good)}) },
			wantErr: errdefs.ErrPermissionDenied},
		{name: "other scope is unaffected", policy: `{"default":[{"type":"reject"}],"transports":{"docker":{"reg.example.com/team/app":[{"type":"insecureAcceptAnything"}],"reg.example.com/team":[{"type":"reject"}]}}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRepo()
			if tc.setup != nil {
				tc.setup(f)
			}
			in := info
			if !tc.info.Digest.IsZero() {
				in = tc.info
			}
			in.Artifacts = f
			v := New(mustPolicy(t, tc.policy), Options{Resources: tc.res})
			err := v.VerifyManifest(ctx, in)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(fmt.Sprint(err), tc.errText) {
				t.Fatalf("got %v, want %v containing %q", err, tc.wantErr, tc.errText)
			}
		})
	}
}

// ---- GPG simple signing ----

func atomicPayload(ref string, d oci.Digest) []byte {
	return fmt.Appendf(nil, `{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"atomic container signature"},"optional":{"creator":"cova test","timestamp":1700000000}}`, ref, d.String())
}

func gpgSign(t testing.TB, e *openpgp.Entity, payload []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := openpgp.Sign(&b, e, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(payload)
	w.Close()
	return b.Bytes()
}

func gpgPublic(t testing.TB, armored bool, es ...*openpgp.Entity) []byte {
	t.Helper()
	var b bytes.Buffer
	var w interface {
		Write([]byte) (int, error)
		Close() error
	} = nopCloser{&b}
	if armored {
		aw, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
		if err != nil {
			t.Fatal(err)
		}
		w = aw
	}
	for _, e := range es {
		if err := e.Serialize(w); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	return b.Bytes()
}

type nopCloser struct{ *bytes.Buffer }

func (nopCloser) Close() error { return nil }

func writeSigs(t testing.TB, base, repoPath string, d oci.Digest, sigs ...[]byte) {
	t.Helper()
	dir := filepath.Join(base, repoPath+"@sha256="+d.Hex())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range sigs {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("signature-%d", i+1)), s, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSignedBy(t *testing.T) {
	ctx := context.Background()
	rsaSigner, err := openpgp.NewEntity("Signer", "", "signer@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	edSigner, err := openpgp.NewEntity("Ed", "", "ed@example.com", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	if err != nil {
		t.Fatal(err)
	}
	stranger, _ := openpgp.NewEntity("Stranger", "", "x@example.com", &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA})
	keyring := filepath.Join(t.TempDir(), "pubring.gpg")
	os.WriteFile(keyring, gpgPublic(t, false, rsaSigner, edSigner), 0o600)

	const name = "reg.example.com/team/app"
	ref := mustRef(t, name+":v1")
	man := oci.FromBytes([]byte("manifest"))
	good := atomicPayload(name+":v1", man)
	policy := func(keyField, identity string) string {
		if identity != "" {
			identity = `,"signedIdentity":` + identity
		}
		return `{"default":[{"type":"signedBy","keyType":"GPGKeys",` + keyField + identity + `}]}`
	}
	keyPath := `"keyPath":"` + keyring + `"`
	tests := []struct {
		name    string
		policy  string
		sigs    [][]byte
		look    func(base string) *Lookaside
		info    *imagepull.ManifestInfo
		wantErr error
		errText string
	}{
		{name: "RSA signature, keyPath", policy: policy(keyPath, ""), sigs: [][]byte{gpgSign(t, rsaSigner, good)}},
		{name: "EdDSA signature, keyData armored", policy: policy(`"keyData":"`+base64.StdEncoding.EncodeToString(gpgPublic(t, true, edSigner))+`"`, ""),
			sigs: [][]byte{gpgSign(t, edSigner, good)}},
		{name: "second signature valid", policy: policy(keyPath, ""), sigs: [][]byte{gpgSign(t, stranger, good), gpgSign(t, edSigner, good)}},
		{name: "pulled by digest, signed with a tag", policy: policy(keyPath, ""), sigs: [][]byte{gpgSign(t, rsaSigner, good)},
			info: &imagepull.ManifestInfo{Reference: mustRef(t, name+"@"+man.String()), Digest: man}},
		{name: "matchRepository other tag", policy: policy(keyPath, `{"type":"matchRepository"}`), sigs: [][]byte{gpgSign(t, rsaSigner, atomicPayload(name+":v2", man))}},
		{name: "unsigned", policy: policy(keyPath, ""), wantErr: errdefs.ErrPermissionDenied, errText: "not signed"},
		{name: "unknown signer", policy: policy(keyPath, ""), sigs: [][]byte{gpgSign(t, stranger, good)}, wantErr: errdefs.ErrPermissionDenied, errText: "not trusted"},
		{name: "tampered signature file", policy: policy(keyPath, ""), sigs: [][]byte{func() []byte {
			s := gpgSign(t, rsaSigner, good)
			i := bytes.Index(s, []byte("cova test"))
			s[i] ^= 1
			return s
		}()}, wantErr: errdefs.ErrPermissionDenied, errText: "invalid"},
		{name: "other digest", policy: policy(keyPath, ""), sigs: [][]byte{gpgSign(t, rsaSigner, atomicPayload(name+":v1", oci.FromBytes([]byte("x"))))},
			wantErr: errdefs.ErrPermissionDenied, errText: "signs manifest"},
		{name: "other identity", policy: policy(keyPath, ""), sigs: [][]byte{gpgSign(t, rsaSigner, atomicPayload(name+":v2", man))},
			wantErr: errdefs.ErrPermissionDenied, errText: "does not match"},
		{name: "cosign payload type", policy: policy(keyPath, ""), sigs: [][]byte{gpgSign(t, rsaSigner, cosignPayload(name, man))},
			wantErr: errdefs.ErrPermissionDenied, errText: "critical.type"},
		{name: "no lookaside configured", policy: policy(keyPath, ""), sigs: [][]byte{gpgSign(t, rsaSigner, good)},
			look: func(string) *Lookaside { return nil }, wantErr: errdefs.ErrPermissionDenied, errText: "lookaside"},
		{name: "http lookaside", policy: policy(keyPath, ""), sigs: [][]byte{gpgSign(t, rsaSigner, good)},
			look: func(string) *Lookaside { return &Lookaside{Default: "https://sigs.example.com"} }, wantErr: errdefs.ErrNotImplemented},
		{name: "missing keyring", policy: policy(`"keyPath":"/nonexistent/keyring"`, ""), sigs: [][]byte{gpgSign(t, rsaSigner, good)}, wantErr: errdefs.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			writeSigs(t, base, "team/app", man, tc.sigs...)
			look := &Lookaside{Default: "file://" + base}
			if tc.look != nil {
				look = tc.look(base)
			}
			v := New(mustPolicy(t, tc.policy), Options{Lookaside: look})
			info := imagepull.ManifestInfo{Reference: ref, Digest: man}
			if tc.info != nil {
				info = *tc.info
			}
			err := v.VerifyManifest(ctx, info)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || !strings.Contains(fmt.Sprint(err), tc.errText) {
				t.Fatalf("got %v, want %v containing %q", err, tc.wantErr, tc.errText)
			}
		})
	}
}

// TestSignedByGPGTool checks signatures made by GnuPG itself.
func TestSignedByGPGTool(t *testing.T) {
	requireTool(t, "gpg")
	home := t.TempDir()
	gpg := func(stdin []byte, args ...string) []byte {
		t.Helper()
		cmd := exec.Command("gpg", append([]string{"--homedir", home, "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
		cmd.Stdin = bytes.NewReader(stdin)
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("gpg %v: %v\n%s", args, err, stderr.String())
		}
		return out.Bytes()
	}
	gpg(nil, "--quick-gen-key", "Cova Test <cova@example.com>", "rsa2048", "sign", "never")
	pub := gpg(nil, "--export", "cova@example.com")
	const name = "reg.example.com/team/app"
	man := oci.FromBytes([]byte("manifest"))
	sig := gpg(atomicPayload(name+":v1", man), "--sign")
	base := t.TempDir()
	writeSigs(t, base, "team/app", man, sig)
	v := New(mustPolicy(t, `{"default":[{"type":"signedBy","keyType":"GPGKeys","keyData":"`+base64.StdEncoding.EncodeToString(pub)+`"}]}`),
		Options{Lookaside: &Lookaside{Default: "file://" + base}})
	if err := v.VerifyManifest(context.Background(), imagepull.ManifestInfo{Reference: mustRef(t, name+":v1"), Digest: man}); err != nil {
		t.Fatal(err)
	}
	err := v.VerifyManifest(context.Background(), imagepull.ManifestInfo{Reference: mustRef(t, name+":v2"), Digest: man})
	if !errdefs.IsPermissionDenied(err) {
		t.Fatalf("other tag: %v", err)
	}
}

func requireTool(t testing.TB, tool string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required (imagepull/testdata/deps.sh installs it)", tool)
		}
		t.Skipf("%s not installed", tool)
	}
}
