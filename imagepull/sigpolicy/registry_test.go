package sigpolicy

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"

	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/registry"
	"github.com/cova-project/cova/imagepull/unpack"
	"github.com/cova-project/cova/test/regtest"
)

// recorder is a reverse proxy in front of the registry that records the
// paths of the requests it forwards.
type recorder struct {
	mu    sync.Mutex
	paths []string
	host  string
}

func newRecorder(t *testing.T, target string) *recorder {
	u, _ := url.Parse("http://" + target)
	rec := &recorder{}
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec.mu.Lock()
		rec.paths = append(rec.paths, r.Method+" "+r.URL.Path)
		rec.mu.Unlock()
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	rec.host = strings.TrimPrefix(srv.URL, "http://")
	return rec
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.paths = nil
	r.mu.Unlock()
}

// firstIndex returns the position of the first request whose path
// contains any of subs, or -1.
func (r *recorder) firstIndex(subs ...string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, p := range r.paths {
		for _, s := range subs {
			if strings.Contains(p, s) {
				return i
			}
		}
	}
	return -1
}

func (r *recorder) lastIndex(sub string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	last := -1
	for i, p := range r.paths {
		if strings.Contains(p, sub) {
			last = i
		}
	}
	return last
}

func gzTar(t *testing.T, name, body string) regtest.Layer {
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))})
	tw.Write([]byte(body))
	tw.Close()
	var gb bytes.Buffer
	zw := gzip.NewWriter(&gb)
	zw.Write(tb.Bytes())
	zw.Close()
	return regtest.Layer{Blob: gb.Bytes(), MediaType: oci.MediaTypeOCILayerGzip, DiffID: oci.FromBytes(tb.Bytes())}
}

// pushCosign pushes a cosign signature manifest for d under its
// "sha256-<hex>.sig" tag, as cosign does.
func pushCosign(t *testing.T, host, repo string, d oci.Digest, layers ...cosignLayer) {
	t.Helper()
	ctx := context.Background()
	m, blobs := cosignManifestFor(layers...)
	for _, b := range blobs {
		if _, err := regtest.PushBlob(ctx, host, repo, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := regtest.PushManifest(ctx, host, repo, sigTag(d), oci.MediaTypeOCIManifest, m); err != nil {
		t.Fatal(err)
	}
}

func newPuller(t *testing.T, host string) *imagepull.Puller {
	t.Helper()
	cfg := imagepull.Config{WorkDir: t.TempDir(), Registry: registry.Config{Registries: []registry.Registry{{Prefix: host, Insecure: true}}}}
	if os.Geteuid() != 0 {
		cfg.Unpack.OpaqueXattr = unpack.OpaqueXattrUser
	}
	p, err := imagepull.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestPullWithPolicy pulls through a recording proxy and checks that the
// policy decides before any blob of the image is requested.
func TestPullWithPolicy(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	rec := newRecorder(t, reg.Host)
	ctx := context.Background()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	gpgKey, err := openpgp.NewEntity("Signer", "", "signer@example.com", nil)
	if err != nil {
		t.Fatal(err)
	}
	lookaside := t.TempDir()

	type image struct {
		digest oci.Digest
		blobs  []string // digests of config and layers
	}
	push := func(repo string) image {
		l := gzTar(t, "hello", repo)
		d, err := regtest.PushImage(ctx, reg.Host, repo, "v1", []regtest.Layer{l})
		if err != nil {
			t.Fatal(err)
		}
		m, _, err := oci.ParseDocument(fetchManifest(t, reg.Host, repo, d), oci.MediaTypeOCIManifest, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		return image{digest: d, blobs: []string{m.Config.Digest.String(), m.Layers[0].Digest.String()}}
	}
	name := func(repo string) string { return rec.host + "/" + repo }

	signed := push("team/signed")
	p := cosignPayload(name("team/signed"), signed.digest)
	pushCosign(t, reg.Host, "team/signed", signed.digest, cosignLayer{payload: p, sig: cosignSign(t, key, p)})
	unsigned := push("team/unsigned")
	tampered := push("team/tampered")
	p2 := cosignPayload(name("team/tampered"), tampered.digest)
	sig2 := cosignSign(t, key, p2)
	p2 = bytes.Replace(p2, []byte(`"optional":null`), []byte(`"optional":{"x":1}`), 1)
	pushCosign(t, reg.Host, "team/tampered", tampered.digest, cosignLayer{payload: p2, sig: sig2})
	otherKey := push("team/otherkey")
	p3 := cosignPayload(name("team/otherkey"), otherKey.digest)
	pushCosign(t, reg.Host, "team/otherkey", otherKey.digest, cosignLayer{payload: p3, sig: cosignSign(t, other, p3)})
	gpgSigned := push("gpg/app")
	writeSigs(t, lookaside, "gpg/app", gpgSigned.digest, gpgSign(t, gpgKey, atomicPayload(name("gpg/app")+":v1", gpgSigned.digest)))
	rejected := push("blocked/app")

	pol := mustPolicy(t, `{"default":[{"type":"reject"}],"transports":{"docker":{
		"`+rec.host+`/team":[{"type":"sigstoreSigned","keyData":"`+base64.StdEncoding.EncodeToString(pubPEM(t, key))+`","signedIdentity":{"type":"matchRepository"}}],
		"`+rec.host+`/gpg":[{"type":"signedBy","keyType":"GPGKeys","keyData":"`+base64.StdEncoding.EncodeToString(gpgPublic(t, false, gpgKey))+`"}]
	}}}`)
	v := New(pol, Options{Lookaside: &Lookaside{Default: "file://" + lookaside}})

	tests := []struct {
		repo    string
		img     image
		wantErr error
	}{
		{"team/signed", signed, nil},
		{"gpg/app", gpgSigned, nil},
		{"team/unsigned", unsigned, errdefs.ErrPermissionDenied},
		{"team/tampered", tampered, errdefs.ErrPermissionDenied},
		{"team/otherkey", otherKey, errdefs.ErrPermissionDenied},
		{"blocked/app", rejected, errdefs.ErrPermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.repo, func(t *testing.T) {
			rec.reset()
			pl := newPuller(t, rec.host)
			img, err := pl.Pull(ctx, name(tc.repo)+":v1", imagepull.PullOptions{Verifier: v})
			first := rec.firstIndex(tc.img.blobs...)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				if first >= 0 {
					t.Fatalf("image blobs requested although the policy refused: %v", rec.paths)
				}
				if len(pl.Store().Layers()) != 0 {
					t.Fatal("layers stored")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(img.Layers) != 1 {
				t.Fatalf("layers %v", img.Layers)
			}
			if sig := rec.lastIndex(".sig"); first < 0 || sig > first {
				t.Fatalf("signature requested (#%d) after the first image blob (#%d): %v", sig, first, rec.paths)
			}
		})
	}
}

func fetchManifest(t *testing.T, host, repo string, d oci.Digest) []byte {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "http://"+host+"/v2/"+repo+"/manifests/"+d.String(), nil)
	req.Header.Set("Accept", oci.ManifestAccept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	b.ReadFrom(resp.Body)
	return b.Bytes()
}

// TestSkopeoSignatures verifies GPG simple-signing signatures written by
// skopeo (containers/image) into a lookaside store. (Debian's skopeo is
// built with sigstore signing disabled, so cosign-format signatures are
// made by the tests themselves.)
func TestSkopeoSignatures(t *testing.T) {
	regtest.Require(t, "docker-registry", "skopeo", "umoci")
	requireTool(t, "gpg")
	reg := regtest.Start(t)
	ctx := context.Background()
	dir := t.TempDir()
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "f"), []byte("signed content"), 0o644)
	l := regtest.NewLayout(t, "v1")
	l.Insert(src, "/d")

	// GPG key and a registries.d telling skopeo where to write.
	home := filepath.Join(dir, "gnupg")
	os.Mkdir(home, 0o700)
	run := func(env []string, name string, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return out
	}
	gpgEnv := []string{"GNUPGHOME=" + home}
	run(gpgEnv, "gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--quick-gen-key", "Cova <cova@example.com>", "rsa2048", "sign", "never")
	fpr := ""
	for _, line := range strings.Split(string(run(gpgEnv, "gpg", "--batch", "--with-colons", "--fingerprint", "cova@example.com")), "\n") {
		if f := strings.Split(line, ":"); len(f) > 9 && f[0] == "fpr" {
			fpr = f[9]
			break
		}
	}
	pubring := run(gpgEnv, "gpg", "--batch", "--export", "cova@example.com")
	staging := filepath.Join(dir, "sigstore")
	regd := filepath.Join(dir, "registries.d")
	os.Mkdir(regd, 0o755)
	os.WriteFile(filepath.Join(regd, "default.yaml"), []byte("default-docker:\n  lookaside-staging: file://"+staging+"\n  use-sigstore-attachments: true\n"), 0o644)

	gpgRef := reg.Host + "/sig/gpg:v1"
	run(gpgEnv, "skopeo", "--registries.d", regd, "copy", "--quiet", "--insecure-policy", "--dest-tls-verify=false",
		"--sign-by", fpr, "oci:"+l.Dir+":v1", "docker://"+gpgRef)
	pol := mustPolicy(t, `{"default":[{"type":"reject"}],"transports":{"docker":{
		"`+reg.Host+`/sig/gpg":[{"type":"signedBy","keyType":"GPGKeys","keyData":"`+base64.StdEncoding.EncodeToString(pubring)+`"}]
	}}}`)
	v := New(pol, Options{Lookaside: &Lookaside{Default: "file://" + staging}})
	p := newPuller(t, reg.Host)
	t.Run("gpg", func(t *testing.T) {
		if _, err := p.Pull(ctx, gpgRef, imagepull.PullOptions{Verifier: v}); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Pull(ctx, reg.Host+"/sig/gpg@"+mustDigest(t, reg.Host, "sig/gpg"), imagepull.PullOptions{Verifier: v}); err != nil {
			t.Fatalf("by digest: %v", err)
		}
		// Same manifest under another tag: the signature names :v1.
		l.Push(reg.Host, "sig/gpg", "v2")
		_, err := p.Pull(ctx, reg.Host+"/sig/gpg:v2", imagepull.PullOptions{Verifier: v})
		if !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), "does not match") {
			t.Fatalf("other tag: %v", err)
		}
	})
}

func mustDigest(t *testing.T, host, repo string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodHead, "http://"+host+"/v2/"+repo+"/manifests/v1", nil)
	req.Header.Set("Accept", oci.ManifestAccept)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.Header.Get("Docker-Content-Digest")
}
