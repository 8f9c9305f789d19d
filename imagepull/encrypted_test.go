package imagepull

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/ocicrypt"
	"github.com/cova-project/cova/imagepull/ocicrypt/ocicrypttest"
	"github.com/cova-project/cova/test/regtest"
)

// openssl runs openssl in dir.
func openssl(t *testing.T, args ...string) {
	t.Helper()
	regtest.Require(t, "openssl")
	regtest.Run(t, "openssl", args...)
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPullEncryptedSkopeoJWE pulls images that skopeo encrypted for an RSA
// and an EC public key (jwe: recipients, ocicrypt's own code).
func TestPullEncryptedSkopeoJWE(t *testing.T) {
	regtest.Require(t, "docker-registry", "umoci", "skopeo", "openssl")
	reg := regtest.Start(t)
	ctx := context.Background()
	dir := t.TempDir()
	openssl(t, "genrsa", "-out", filepath.Join(dir, "rsa.pem"), "2048")
	openssl(t, "rsa", "-in", filepath.Join(dir, "rsa.pem"), "-pubout", "-out", filepath.Join(dir, "rsa.pub"))
	openssl(t, "ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out", filepath.Join(dir, "ec.pem"))
	openssl(t, "ec", "-in", filepath.Join(dir, "ec.pem"), "-pubout", "-out", filepath.Join(dir, "ec.pub"))
	openssl(t, "genrsa", "-out", filepath.Join(dir, "other.pem"), "2048")
	rsaKey, ecKey, otherKey := readFile(t, filepath.Join(dir, "rsa.pem")), readFile(t, filepath.Join(dir, "ec.pem")), readFile(t, filepath.Join(dir, "other.pem"))

	buildBusybox(t, reg, "test/enc-rsa", "--encryption-key", "jwe:"+filepath.Join(dir, "rsa.pub"))
	buildBusybox(t, reg, "test/enc-ec", "--encryption-key", "jwe:"+filepath.Join(dir, "ec.pub"))

	jwe := func(keys ...[]byte) KeyProvider {
		kp, err := ocicrypt.NewJWE(keys...)
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
	tests := []struct {
		name    string
		repo    string
		kp      KeyProvider
		wantErr error
	}{
		{"RSA-OAEP", "test/enc-rsa", jwe(rsaKey), nil},
		{"ECDH-ES", "test/enc-ec", jwe(ecKey), nil},
		{"several keys", "test/enc-ec", jwe(otherKey, rsaKey, ecKey), nil},
		{"no key provider", "test/enc-rsa", nil, errdefs.ErrFailedPrecondition},
		{"wrong key", "test/enc-rsa", jwe(otherKey), errdefs.ErrPermissionDenied},
		{"attestation-agent only", "test/enc-rsa", &ocicrypt.AttestationAgent{}, errdefs.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPuller(t, reg.Host, nil)
			img, err := p.Pull(ctx, reg.Host+"/"+tc.repo+":v1", PullOptions{KeyProvider: tc.kp})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				if n := p.Registry().Stats.BlobBytes.Load(); n != 0 {
					t.Fatalf("%d blob bytes fetched although the key could not be unwrapped", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if img.Stats.LayersDecrypted != 5 {
				t.Fatalf("decrypted %d layers, want 5", img.Stats.LayersDecrypted)
			}
			checkBusyboxLayers(t, img)
			// The layers are now in the store; pulling again still needs
			// the key.
			if _, err := p.Pull(ctx, reg.Host+"/"+tc.repo+":v1", PullOptions{KeyProvider: jwe(otherKey)}); !errdefs.IsPermissionDenied(err) {
				t.Fatalf("cached layers reused without the key: %v", err)
			}
			img2, err := p.Pull(ctx, reg.Host+"/"+tc.repo+":v1", PullOptions{KeyProvider: tc.kp})
			if err != nil || img2.Stats.LayersReused != 5 {
				t.Fatalf("second pull: %v %+v", err, img2)
			}
		})
	}
}

// encImage is an image whose layers we encrypt ourselves.
type encImage struct {
	blobs   [][]byte
	descs   []oci.Descriptor
	diffIDs []oci.Digest
}

// addEncrypted encrypts blob (a layer, mediaType its plain type) and adds
// it with the annotations wrap returns for its private options.
func (im *encImage) addEncrypted(t *testing.T, blob []byte, mediaType string, diffID oci.Digest, wrap func(priv []byte) map[string]string) ocicrypttest.Encrypted {
	t.Helper()
	e, err := ocicrypttest.Encrypt(blob)
	if err != nil {
		t.Fatal(err)
	}
	ann := wrap(e.PrivOpts)
	ann[ocicrypt.AnnotationPubOpts] = e.PubOpts
	im.blobs = append(im.blobs, e.Blob)
	im.descs = append(im.descs, oci.Descriptor{MediaType: mediaType + "+encrypted", Digest: oci.FromBytes(e.Blob), Size: int64(len(e.Blob)), Annotations: ann})
	im.diffIDs = append(im.diffIDs, diffID)
	return e
}

func (im *encImage) addPlain(blob []byte, mediaType string, diffID oci.Digest) {
	im.blobs = append(im.blobs, blob)
	im.descs = append(im.descs, oci.Descriptor{MediaType: mediaType, Digest: oci.FromBytes(blob), Size: int64(len(blob))})
	im.diffIDs = append(im.diffIDs, diffID)
}

// push uploads the blobs, a config and an OCI manifest with the layer
// descriptors as they are (annotations included).
func (im *encImage) push(t *testing.T, host, repo, tag string) oci.Digest {
	t.Helper()
	ctx := context.Background()
	for _, b := range im.blobs {
		if _, err := regtest.PushBlob(ctx, host, repo, b); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for _, d := range im.diffIDs {
		ids = append(ids, d.String())
	}
	cfg, _ := json.Marshal(map[string]any{"architecture": oci.DefaultPlatform().Architecture, "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": ids}})
	cd, err := regtest.PushBlob(ctx, host, repo, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cd.MediaType = oci.MediaTypeOCIConfig
	mb, _ := json.Marshal(oci.Manifest{SchemaVersion: 2, MediaType: oci.MediaTypeOCIManifest, Config: cd, Layers: im.descs})
	if err := regtest.PushManifest(ctx, host, repo, tag, oci.MediaTypeOCIManifest, mb); err != nil {
		t.Fatal(err)
	}
	return oci.FromBytes(mb)
}

type resourceMap map[string][]byte

func (r resourceMap) GetResource(ctx context.Context, uri string) ([]byte, error) {
	if b, ok := r[uri]; ok {
		return b, nil
	}
	return nil, fmt.Errorf("resource %s: %w", uri, errdefs.ErrNotFound)
}

// TestPullEncryptedCoCoKeyProvider pulls images whose layer keys are in
// CoCo attestation-agent packets (v1 and v2, A256GCM and A256CTR), the KEK
// coming from the resource getter; a plain layer may sit between them.
func TestPullEncryptedCoCoKeyProvider(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	ctx := context.Background()
	kek := bytes.Repeat([]byte{0x42}, 32)
	const kid = "kbs:///default/image-kek/1"
	packet := func(wrapType string, v2 bool) func([]byte) map[string]string {
		return func(priv []byte) map[string]string {
			p, err := ocicrypttest.Packet(priv, kek, kid, wrapType, v2)
			if err != nil {
				t.Fatal(err)
			}
			return map[string]string{ocicrypt.AnnotationAttestationAgent: p}
		}
	}
	var im encImage
	l1 := tarGz(t, tarOf(t, file("etc/one", "first layer")))
	im.addEncrypted(t, l1.blob, oci.MediaTypeOCILayerGzip, l1.diffID, packet(ocicrypt.WrapA256GCM, false))
	l2 := tarOf(t, file("etc/two", "plain layer"))
	im.addPlain(l2, oci.MediaTypeOCILayer, oci.FromBytes(l2))
	l3 := tarOf(t, file("etc/three", strings.Repeat("uncompressed and encrypted ", 1000)))
	im.addEncrypted(t, l3, oci.MediaTypeOCILayer, oci.FromBytes(l3), packet(ocicrypt.WrapA256CTR, true))
	l4 := tarGz(t, tarOf(t, file("etc/four", "v2 gcm")))
	im.addEncrypted(t, l4.blob, oci.MediaTypeOCILayerGzip, l4.diffID, packet(ocicrypt.WrapA256GCM, true))
	im.push(t, reg.Host, "test/coco", "v1")

	tests := []struct {
		name    string
		res     resourceMap
		wantErr error
	}{
		{"KEK from the KBS", resourceMap{kid: kek}, nil},
		{"KEK missing", resourceMap{}, errdefs.ErrNotFound},
		{"wrong KEK", resourceMap{kid: bytes.Repeat([]byte{1}, 32)}, errdefs.ErrPermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPuller(t, reg.Host, nil)
			img, err := p.Pull(ctx, reg.Host+"/test/coco:v1", PullOptions{KeyProvider: &ocicrypt.AttestationAgent{Resources: tc.res}})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				if n := p.Registry().Stats.BlobBytes.Load(); n != 0 {
					t.Fatalf("%d blob bytes fetched before the keys were unwrapped", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if img.Stats.LayersDecrypted != 3 {
				t.Fatalf("decrypted %d layers, want 3", img.Stats.LayersDecrypted)
			}
			for i, want := range map[int]string{0: "etc/one", 1: "etc/two", 2: "etc/three", 3: "etc/four"} {
				if _, err := os.Stat(filepath.Join(img.Layers[i], want)); err != nil {
					t.Errorf("layer %d: %v", i, err)
				}
			}
		})
	}
}

// TestEncryptHelperMatchesOcicrypt has skopeo (containers/ocicrypt)
// decrypt an image encrypted by ocicrypttest, so the CoCo images above
// use the real layer format.
func TestEncryptHelperMatchesOcicrypt(t *testing.T) {
	regtest.Require(t, "docker-registry", "skopeo", "openssl")
	reg := regtest.Start(t)
	dir := t.TempDir()
	openssl(t, "genrsa", "-out", filepath.Join(dir, "rsa.pem"), "2048")
	pub := rsaPublicFromPEM(t, readFile(t, filepath.Join(dir, "rsa.pem")))
	var im encImage
	l := tarGz(t, tarOf(t, file("hello", "from cova")))
	im.addEncrypted(t, l.blob, oci.MediaTypeOCILayerGzip, l.diffID, func(priv []byte) map[string]string {
		a, err := ocicrypttest.WrapJWE(priv, pub)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]string{ocicrypt.AnnotationJWE: a}
	})
	im.push(t, reg.Host, "test/ours", "v1")
	out := filepath.Join(t.TempDir(), "out")
	regtest.Run(t, "skopeo", "copy", "--quiet", "--insecure-policy", "--src-tls-verify=false",
		"--decryption-key", filepath.Join(dir, "rsa.pem"), "docker://"+reg.Host+"/test/ours:v1", "oci:"+out+":v1")
	// skopeo verified the HMAC and wrote the plain blob; it must be ours.
	if _, err := os.Stat(filepath.Join(out, "blobs", "sha256", oci.FromBytes(l.blob).Hex())); err != nil {
		t.Fatalf("skopeo did not produce the plaintext blob: %v", err)
	}
}

func rsaPublicFromPEM(t *testing.T, b []byte) *rsa.PublicKey {
	t.Helper()
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatal("no PEM")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	}
	if err != nil {
		t.Fatal(err)
	}
	return &k.(*rsa.PrivateKey).PublicKey
}

// TestPullEncryptedTampered flips one byte near the end of an encrypted
// layer (the host controls the manifest, so the blob digest is made to
// match): only the HMAC can catch it, and it is checked at the very end,
// after the tar was unpacked. Nothing of that layer may stay visible.
func TestPullEncryptedTampered(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	ctx := context.Background()
	kek := bytes.Repeat([]byte{0x42}, 32)
	const kid = "kbs:///default/image-kek/1"
	wrap := func(priv []byte) map[string]string {
		p, _ := ocicrypttest.Packet(priv, kek, kid, ocicrypt.WrapA256GCM, false)
		return map[string]string{ocicrypt.AnnotationAttestationAgent: p}
	}
	content := bytes.Repeat([]byte("A"), 1<<20)
	raw := tarOf(t, file("big", string(content)), file("small", "x"))
	gz := tarGz(t, raw)
	tests := []struct {
		name      string
		blob      []byte
		mediaType string
		diffID    oci.Digest
		flipAt    func(n int) int
		wantHMAC  bool // else any refusal will do (a flipped tar end block is a bad header first)
	}{
		// Inside "big", 16 KiB before its end: the tar stays valid and is
		// unpacked completely before the HMAC fails.
		{"uncompressed inside file content", raw, oci.MediaTypeOCILayer, oci.FromBytes(raw), func(int) int { return 512 + len(content) - 16<<10 }, true},
		{"uncompressed last byte", raw, oci.MediaTypeOCILayer, oci.FromBytes(raw), func(n int) int { return n - 1 }, false},
		{"gzip in the last 32 KiB", gz.blob, oci.MediaTypeOCILayerGzip, gz.diffID, func(n int) int { return n - 100 }, false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var im encImage
			im.addEncrypted(t, tc.blob, tc.mediaType, tc.diffID, wrap)
			im.blobs[0][tc.flipAt(len(im.blobs[0]))] ^= 0x01
			im.descs[0].Digest = oci.FromBytes(im.blobs[0])
			repo := fmt.Sprintf("test/tampered%d", i)
			im.push(t, reg.Host, repo, "v1")
			p := newPuller(t, reg.Host, nil)
			_, err := p.Pull(ctx, reg.Host+"/"+repo+":v1", PullOptions{KeyProvider: &ocicrypt.AttestationAgent{Resources: resourceMap{kid: kek}}})
			if err == nil {
				t.Fatal("tampered layer accepted")
			}
			t.Logf("refused: %v", err)
			// With the flip inside file content the tar was unpacked to its
			// end ("reading past the archive") before the HMAC failed.
			if tc.wantHMAC && (!errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "HMAC") || !strings.Contains(err.Error(), "past the archive")) {
				t.Fatalf("got %v, want an HMAC failure", err)
			}
			if got := p.Store().Layers(); len(got) != 0 {
				t.Fatalf("tampered layer committed: %v", got)
			}
			if _, err := os.Stat(p.Store().LayerDir(tc.diffID)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("layer dir exists: %v", err)
			}
			if staging, _ := os.ReadDir(filepath.Join(p.Store().Root(), "staging")); len(staging) != 0 {
				t.Fatalf("staging left: %v", staging)
			}
		})
	}
}
