package sigpolicy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/canonjson"
	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/test/regtest"
)

// ---- a test Fulcio and Rekor ----

const (
	testIssuer = "https://oauth2.example.com/auth"
	testEmail  = "dev@example.com"
)

var serial int64 = 100

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// testCA is a root and an intermediate CA, as Fulcio has.
type testCA struct {
	root, inter       *x509.Certificate
	rootKey, interKey *ecdsa.PrivateKey
	rootPEM, interPEM []byte
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	now := time.Now()
	ca := &testCA{}
	ca.rootKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca.interKey, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial++
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name + " root"},
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &ca.rootKey.PublicKey, ca.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	ca.root, _ = x509.ParseCertificate(der)
	ca.rootPEM = certPEM(der)
	serial++
	interTmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name + " intermediate"},
		NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}
	der, err = x509.CreateCertificate(rand.Reader, interTmpl, ca.root, &ca.interKey.PublicKey, ca.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	ca.inter, _ = x509.ParseCertificate(der)
	ca.interPEM = certPEM(der)
	return ca
}

// leafSpec describes a Fulcio signing certificate.
type leafSpec struct {
	issuerV1, issuerV2 string // "" leaves the extension out
	email              string
	notBefore          time.Time
	validity           time.Duration
	noCodeSigning      bool
}

func defaultLeaf(integrated time.Time) leafSpec {
	return leafSpec{issuerV1: testIssuer, issuerV2: testIssuer, email: testEmail,
		notBefore: integrated.Add(-5 * time.Minute), validity: 10 * time.Minute}
}

// leaf issues a signing certificate from the intermediate; it returns its
// key and PEM.
func (ca *testCA) leaf(t *testing.T, s leafSpec) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: s.notBefore, NotAfter: s.notBefore.Add(s.validity),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}}
	if s.noCodeSigning {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	if s.email != "" {
		tmpl.EmailAddresses = []string{s.email}
	}
	if s.issuerV1 != "" {
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: oidFulcioIssuerV1, Value: []byte(s.issuerV1)})
	}
	if s.issuerV2 != "" {
		v, _ := asn1.MarshalWithParams(s.issuerV2, "utf8")
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: oidFulcioIssuerV2, Value: v})
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.inter, &key.PublicKey, ca.interKey)
	if err != nil {
		t.Fatal(err)
	}
	return key, certPEM(der)
}

// rekorEntry is what the test log records; tests may alter it before it
// is signed.
type rekorEntry struct {
	certPEM    []byte
	sig        []byte
	payloadSum [32]byte
	kind       string
	integrated int64
}

// rekorBundle logs e and returns cosign's bundle annotation: the
// SignedEntryTimestamp over the RFC 8785 form of the payload, signed by
// key. The payload is written in non-canonical member order.
func rekorBundle(t *testing.T, key *ecdsa.PrivateKey, e rekorEntry) string {
	t.Helper()
	if e.kind == "" {
		e.kind = "hashedrekord"
	}
	body, _ := json.Marshal(map[string]any{"apiVersion": "0.0.1", "kind": e.kind, "spec": map[string]any{
		"data":      map[string]any{"hash": map[string]any{"algorithm": "sha256", "value": hex.EncodeToString(e.payloadSum[:])}},
		"signature": map[string]any{"content": e.sig, "publicKey": map[string]any{"content": e.certPEM}},
	}})
	der, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	logID := sha256.Sum256(der)
	payload := struct {
		LogIndex       int64  `json:"logIndex"`
		Body           []byte `json:"body"`
		LogID          string `json:"logID"`
		IntegratedTime int64  `json:"integratedTime"`
	}{12345, body, hex.EncodeToString(logID[:]), e.integrated}
	canon, err := canonjson.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(canon)
	set, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(payload)
	b, _ := json.Marshal(map[string]any{"SignedEntryTimestamp": set, "Payload": json.RawMessage(raw)})
	return string(b)
}

// keylessSig is one keyless signature as cosign pushes it.
type keylessSig struct {
	ca         *testCA
	leaf       leafSpec
	integrated time.Time
	payload    []byte
	signWith   *ecdsa.PrivateKey // nil: the leaf key
	rekorKey   *ecdsa.PrivateKey
	alter      func(e *rekorEntry)       // change the logged entry
	annotate   func(a map[string]string) // change the annotations
}

func (k keylessSig) layer(t *testing.T) cosignLayer {
	t.Helper()
	leafKey, leafPEM := k.ca.leaf(t, k.leaf)
	signer := leafKey
	if k.signWith != nil {
		signer = k.signWith
	}
	sigB64 := cosignSign(t, signer, k.payload)
	sig, _ := base64.StdEncoding.DecodeString(sigB64)
	e := rekorEntry{certPEM: leafPEM, sig: sig, payloadSum: sha256.Sum256(k.payload), integrated: k.integrated.Unix()}
	if k.alter != nil {
		k.alter(&e)
	}
	ann := map[string]string{
		cosignCertAnnotation:   string(leafPEM),
		cosignChainAnnotation:  string(k.ca.interPEM) + string(k.ca.rootPEM),
		cosignBundleAnnotation: rekorBundle(t, k.rekorKey, e),
	}
	if k.annotate != nil {
		k.annotate(ann)
	}
	return cosignLayer{payload: k.payload, sig: sigB64, ann: ann}
}

func keylessPolicy(scope, fulcio, rekor string) string {
	return `{"default":[{"type":"reject"}],"transports":{"docker":{"` + scope + `":[{"type":"sigstoreSigned",` +
		`"fulcio":{` + fulcio + `},` + rekor + `,"signedIdentity":{"type":"matchRepository"}}]}}}`
}

func fulcioFields(caField, issuer, email string) string {
	return caField + `,"oidcIssuer":"` + issuer + `","subjectEmail":"` + email + `"`
}

// TestSigstoreKeyless checks keyless (Fulcio + Rekor) cosign signatures:
// what is accepted and each way one is refused.
func TestSigstoreKeyless(t *testing.T) {
	ctx := context.Background()
	ca := newTestCA(t, "fulcio")
	otherCA := newTestCA(t, "evil")
	rekorKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherRekor, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	stranger, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	const repo = "reg.example.com/team/app"
	man := oci.FromBytes([]byte("the platform manifest"))
	info := imagepull.ManifestInfo{Reference: mustRef(t, repo+":v1"), Digest: man}
	good := cosignPayload(repo, man)
	integrated := time.Now().Add(-30 * time.Minute).Truncate(time.Second)

	caData := `"caData":"` + base64.StdEncoding.EncodeToString(ca.rootPEM) + `"`
	rekorData := `"rekorPublicKeyData":"` + base64.StdEncoding.EncodeToString(pubPEM(t, rekorKey)) + `"`
	policy := keylessPolicy("reg.example.com/team", fulcioFields(caData, testIssuer, testEmail), rekorData)
	caFile := filepath.Join(t.TempDir(), "fulcio.pem")
	os.WriteFile(caFile, ca.rootPEM, 0o644)

	base := keylessSig{ca: ca, leaf: defaultLeaf(integrated), integrated: integrated, payload: good, rekorKey: rekorKey}
	with := func(f func(k *keylessSig)) keylessSig {
		k := base
		f(&k)
		return k
	}
	tests := []struct {
		name    string
		policy  string
		res     imagepull.ResourceGetter
		sigs    []keylessSig
		wantErr bool
		errText string
	}{
		{name: "accepted", sigs: []keylessSig{base}},
		{name: "accepted with only the v2 issuer extension", sigs: []keylessSig{with(func(k *keylessSig) { k.leaf.issuerV1 = "" })}},
		{name: "accepted with only the v1 issuer extension", sigs: []keylessSig{with(func(k *keylessSig) { k.leaf.issuerV2 = "" })}},
		{name: "certificate expired now but valid at the integrated time", sigs: []keylessSig{with(func(k *keylessSig) {
			k.integrated = time.Now().Add(-5 * time.Hour).Truncate(time.Second)
			k.leaf = defaultLeaf(k.integrated)
		})}},
		{name: "CA and Rekor key from kbs and file", sigs: []keylessSig{base},
			policy: keylessPolicy("reg.example.com/team", fulcioFields(`"caPath":"file://`+caFile+`"`, testIssuer, testEmail), `"rekorPublicKeyPath":"kbs:///default/rekor/key"`),
			res:    resources{"kbs:///default/rekor/key": pubPEM(t, rekorKey)}},
		{name: "second signature good", sigs: []keylessSig{with(func(k *keylessSig) { k.rekorKey = otherRekor }), base}},
		{name: "wrong issuer", wantErr: true, errText: "OIDC issuer", sigs: []keylessSig{with(func(k *keylessSig) {
			k.leaf.issuerV1, k.leaf.issuerV2 = "https://evil.example.com", "https://evil.example.com"
		})}},
		{name: "issuer extensions disagree", wantErr: true, errText: "disagree", sigs: []keylessSig{with(func(k *keylessSig) { k.leaf.issuerV1 = "https://evil.example.com" })}},
		{name: "no issuer extension", wantErr: true, errText: "no OIDC issuer", sigs: []keylessSig{with(func(k *keylessSig) { k.leaf.issuerV1, k.leaf.issuerV2 = "", "" })}},
		{name: "wrong email", wantErr: true, errText: "subject emails", sigs: []keylessSig{with(func(k *keylessSig) { k.leaf.email = "mallory@example.com" })}},
		{name: "expired at the integrated time", wantErr: true, errText: "integrated time", sigs: []keylessSig{with(func(k *keylessSig) {
			k.leaf.notBefore = integrated.Add(-20 * time.Minute)
		})}},
		{name: "not yet valid at the integrated time", wantErr: true, errText: "integrated time", sigs: []keylessSig{with(func(k *keylessSig) {
			k.leaf.notBefore = integrated.Add(time.Minute)
		})}},
		{name: "certificate not from the CA", wantErr: true, errText: "unknown authority", sigs: []keylessSig{with(func(k *keylessSig) { k.ca = otherCA })}},
		{name: "chain of another CA in the annotation", wantErr: true, errText: "unknown authority", sigs: []keylessSig{with(func(k *keylessSig) {
			k.ca = otherCA
			k.annotate = func(a map[string]string) { a[cosignChainAnnotation] = string(ca.interPEM) + string(ca.rootPEM) }
		})}},
		{name: "no code signing usage", wantErr: true, errText: "usage", sigs: []keylessSig{with(func(k *keylessSig) { k.leaf.noCodeSigning = true })}},
		{name: "signature not made with the certificate's key", wantErr: true, errText: "does not verify", sigs: []keylessSig{with(func(k *keylessSig) { k.signWith = stranger })}},
		{name: "SET by another Rekor key", wantErr: true, errText: "signed entry timestamp", sigs: []keylessSig{with(func(k *keylessSig) { k.rekorKey = otherRekor })}},
		{name: "SET payload altered after signing", wantErr: true, errText: "signed entry timestamp", sigs: []keylessSig{with(func(k *keylessSig) {
			k.annotate = func(a map[string]string) {
				a[cosignBundleAnnotation] = strings.Replace(a[cosignBundleAnnotation], `"logIndex":12345`, `"logIndex":12346`, 1)
			}
		})}},
		{name: "SET signature corrupted", wantErr: true, errText: "signed entry timestamp", sigs: []keylessSig{with(func(k *keylessSig) {
			k.annotate = func(a map[string]string) {
				var b map[string]json.RawMessage
				json.Unmarshal([]byte(a[cosignBundleAnnotation]), &b)
				var set []byte
				json.Unmarshal(b["SignedEntryTimestamp"], &set)
				set[len(set)-3] ^= 1
				b["SignedEntryTimestamp"], _ = json.Marshal(set)
				nb, _ := json.Marshal(b)
				a[cosignBundleAnnotation] = string(nb)
			}
		})}},
		{name: "entry logs another payload", wantErr: true, errText: "another payload", sigs: []keylessSig{with(func(k *keylessSig) {
			k.alter = func(e *rekorEntry) { e.payloadSum = sha256.Sum256([]byte("else")) }
		})}},
		{name: "entry logs another signature", wantErr: true, errText: "another signature", sigs: []keylessSig{with(func(k *keylessSig) {
			k.alter = func(e *rekorEntry) { e.sig = []byte("other signature") }
		})}},
		{name: "entry logs another certificate", wantErr: true, errText: "another certificate", sigs: []keylessSig{with(func(k *keylessSig) {
			k.alter = func(e *rekorEntry) { _, e.certPEM = ca.leaf(t, defaultLeaf(integrated)) }
		})}},
		{name: "entry of another kind", wantErr: true, errText: "only hashedrekord", sigs: []keylessSig{with(func(k *keylessSig) {
			k.alter = func(e *rekorEntry) { e.kind = "rekord" }
		})}},
		{name: "no bundle", wantErr: true, errText: "Rekor bundle required", sigs: []keylessSig{with(func(k *keylessSig) {
			k.annotate = func(a map[string]string) { delete(a, cosignBundleAnnotation) }
		})}},
		{name: "no certificate (key-signed)", wantErr: true, errText: "keyless signature expected", sigs: []keylessSig{with(func(k *keylessSig) {
			k.annotate = func(a map[string]string) { delete(a, cosignCertAnnotation) }
		})}},
		{name: "integrated time zero", wantErr: true, errText: "integrated time", sigs: []keylessSig{with(func(k *keylessSig) {
			k.alter = func(e *rekorEntry) { e.integrated = 0 }
		})}},
		{name: "signed payload for another image", wantErr: true, errText: "signs manifest", sigs: []keylessSig{with(func(k *keylessSig) {
			k.payload = cosignPayload(repo, oci.FromBytes([]byte("another manifest")))
		})}},
		{name: "unsigned", wantErr: true, errText: "not signed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRepo()
			var layers []cosignLayer
			for _, k := range tc.sigs {
				layers = append(layers, k.layer(t))
			}
			if len(layers) > 0 {
				f.add(sigTag(man), layers...)
			}
			pol := policy
			if tc.policy != "" {
				pol = tc.policy
			}
			in := info
			in.Artifacts = f
			err := New(mustPolicy(t, pol), Options{Resources: tc.res}).VerifyManifest(ctx, in)
			if !tc.wantErr {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrPermissionDenied) || !strings.Contains(fmt.Sprint(err), tc.errText) {
				t.Fatalf("got %v, want ErrPermissionDenied containing %q", err, tc.errText)
			}
		})
	}

	// Trust material that cannot be used is an error of its own class.
	for _, tc := range []struct {
		name, policy string
		want         error
	}{
		{"CA data without a certificate", keylessPolicy("reg.example.com/team", fulcioFields(`"caData":"`+base64.StdEncoding.EncodeToString(pubPEM(t, rekorKey))+`"`, testIssuer, testEmail), rekorData), errdefs.ErrInvalidArgument},
		{"missing CA file", keylessPolicy("reg.example.com/team", fulcioFields(`"caPath":"/nonexistent/ca.pem"`, testIssuer, testEmail), rekorData), errdefs.ErrNotFound},
		{"Rekor key not a key", keylessPolicy("reg.example.com/team", fulcioFields(caData, testIssuer, testEmail), `"rekorPublicKeyData":"`+base64.StdEncoding.EncodeToString(ca.rootPEM)+`"`), errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRepo()
			f.add(sigTag(man), base.layer(t))
			in := info
			in.Artifacts = f
			if err := New(mustPolicy(t, tc.policy), Options{}).VerifyManifest(ctx, in); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

// TestPullKeylessSigned pushes images with keyless signatures to the real
// registry and pulls them under a policy requiring Fulcio + Rekor.
func TestPullKeylessSigned(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	ctx := context.Background()
	ca := newTestCA(t, "fulcio")
	rekorKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	integrated := time.Now().Add(-time.Hour).Truncate(time.Second)
	push := func(repo string, leaf leafSpec) oci.Digest {
		d, err := regtest.PushImage(ctx, reg.Host, repo, "v1", []regtest.Layer{gzTar(t, "hello", repo)})
		if err != nil {
			t.Fatal(err)
		}
		k := keylessSig{ca: ca, leaf: leaf, integrated: integrated, payload: cosignPayload(reg.Host+"/"+repo, d), rekorKey: rekorKey}
		pushCosign(t, reg.Host, repo, d, k.layer(t))
		return d
	}
	push("team/good", defaultLeaf(integrated))
	bad := defaultLeaf(integrated)
	bad.email = "mallory@example.com"
	push("team/wrongemail", bad)

	pol := mustPolicy(t, keylessPolicy(reg.Host+"/team",
		fulcioFields(`"caData":"`+base64.StdEncoding.EncodeToString(ca.rootPEM)+`"`, testIssuer, testEmail),
		`"rekorPublicKeyData":"`+base64.StdEncoding.EncodeToString(pubPEM(t, rekorKey))+`"`))
	v := New(pol, Options{})
	p := newPuller(t, reg.Host)
	img, err := p.Pull(ctx, reg.Host+"/team/good:v1", imagepull.PullOptions{Verifier: v})
	if err != nil {
		t.Fatal(err)
	}
	if img.Stats.LayersFetched != 1 {
		t.Fatalf("stats %+v", img.Stats)
	}
	_, err = p.Pull(ctx, reg.Host+"/team/wrongemail:v1", imagepull.PullOptions{Verifier: v})
	if !errors.Is(err, errdefs.ErrPermissionDenied) || !strings.Contains(err.Error(), "subject emails") {
		t.Fatalf("wrong email: %v", err)
	}
	if n := len(p.Store().Layers()); n != 1 {
		t.Fatalf("store has %d layers, want only the accepted image's", n)
	}
}
