package secrets

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/ocicrypt"
	"github.com/cova-project/cova/imagepull/ocicrypt/ocicrypttest"
	"github.com/cova-project/cova/imagepull/registry"
	"github.com/cova-project/cova/test/faults"
	devkbs "github.com/cova-project/cova/test/kbs"
)

// Registry credential markers.
var (
	registryPassword = []byte("REGISTRY-PASSWORD-MARKER-6d02")
	registryToken    = "REGISTRY-BEARER-TOKEN-MARKER-e4a9"
)

// miniRegistry serves blobs and one manifest from memory behind basic auth
// or the Docker token flow.
type miniRegistry struct {
	srv       *httptest.Server
	bearer    bool
	blobs     map[string][]byte
	manifest  []byte
	mu        sync.Mutex
	tokenHits int
}

func startMiniRegistry(t testing.TB, bearer bool) *miniRegistry {
	t.Helper()
	r := &miniRegistry{bearer: bearer, blobs: map[string][]byte{}}
	r.srv = httptest.NewUnstartedServer(http.HandlerFunc(r.serve))
	r.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	r.srv.Start()
	t.Cleanup(r.srv.Close)
	return r
}

func (r *miniRegistry) host() string { return strings.TrimPrefix(r.srv.URL, "http://") }

func (r *miniRegistry) basicOK(req *http.Request) bool {
	u, p, ok := req.BasicAuth()
	return ok && u == "cova" && p == string(registryPassword)
}

func (r *miniRegistry) serve(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == "/token" {
		r.mu.Lock()
		r.tokenHits++
		r.mu.Unlock()
		if !r.basicOK(req) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"token": registryToken, "expires_in": 300})
		return
	}
	authorized := r.basicOK(req)
	if r.bearer {
		authorized = req.Header.Get("Authorization") == "Bearer "+registryToken
	}
	if !authorized {
		if r.bearer {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s/token",service="mini"`, r.srv.URL))
		} else {
			w.Header().Set("WWW-Authenticate", `Basic realm="mini"`)
		}
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`))
		return
	}
	p := req.URL.Path
	switch {
	case p == "/v2/":
	case strings.HasPrefix(p, "/v2/test/app/manifests/"):
		w.Header().Set("Content-Type", oci.MediaTypeOCIManifest)
		_, _ = w.Write(r.manifest)
	case strings.HasPrefix(p, "/v2/test/app/blobs/"):
		b, ok := r.blobs[strings.TrimPrefix(p, "/v2/test/app/blobs/")]
		if !ok {
			http.NotFound(w, req)
			return
		}
		_, _ = w.Write(b)
	default:
		http.NotFound(w, req)
	}
}

// setImage stores layers (descriptors with their blobs) and a config naming
// diffIDs.
func (r *miniRegistry) setImage(descs []oci.Descriptor, blobs [][]byte, diffIDs []oci.Digest) {
	ids := []string{}
	for i, d := range descs {
		r.blobs[d.Digest.String()] = blobs[i]
		ids = append(ids, diffIDs[i].String())
	}
	cfg, _ := json.Marshal(map[string]any{"architecture": oci.DefaultPlatform().Architecture, "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": ids}})
	r.blobs[oci.FromBytes(cfg).String()] = cfg
	r.manifest, _ = json.Marshal(oci.Manifest{SchemaVersion: 2, MediaType: oci.MediaTypeOCIManifest,
		Config: oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: oci.FromBytes(cfg), Size: int64(len(cfg))}, Layers: descs})
}

func tarOf(t testing.TB, name, body string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	_, _ = tw.Write([]byte(body))
	_ = tw.Close()
	return b.Bytes()
}

func newPuller(t testing.TB, host string, auth *registry.AuthFile, lg *slog.Logger) *imagepull.Puller {
	t.Helper()
	dir, err := os.MkdirTemp("", "cova-secrets-store-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	p, err := imagepull.New(imagepull.Config{
		WorkDir: dir,
		Registry: registry.Config{Registries: []registry.Registry{{Prefix: host, Insecure: true}}, Auth: auth,
			Retries: 2, MaxRetryWait: 2 * time.Second},
		Logger: lg.With("component", "imagepull"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func authFile(t testing.TB, host string, password []byte) *registry.AuthFile {
	t.Helper()
	a, err := registry.ParseAuthFile([]byte(fmt.Sprintf(`{"auths":{%q:{"username":"cova","password":%q}}}`, host, password)))
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestGuestComponentFlows runs the guest components' secret flows (no root
// needed): KBS resources and tokens with re-attestation and failures, an
// encrypted image whose KEK comes from the KBS, and registry pulls with a
// password (basic auth and the token flow), each logging at debug level
// into one captured log.
func TestGuestComponentFlows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sec := newSecrets()
	for name, v := range map[string][]byte{
		"KBS resource": plainSecret, "KEK": kek, "registry password": registryPassword, "registry token": []byte(registryToken),
		"registry basic credential": []byte("cova:" + string(registryPassword)),
	} {
		sec.add(name, v)
	}
	logs := &faults.SyncBuffer{}
	lg := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	sg := newSigner(t)
	kbsSrv := startKBS(t, sg)
	kc := newKBSClient(t, kbsSrv, lg)

	t.Run("KBS resource, token and TEE key", func(t *testing.T) {
		got, err := kc.Resource(ctx, "kbs:///"+plainPath)
		sec.sawErr(err)
		if !bytes.Equal(got, plainSecret) {
			t.Fatalf("resource = %q, %v", got, err)
		}
		tok, err := kc.Token(ctx, "kbs")
		sec.sawErr(err)
		var aa struct {
			Token      string `json:"token"`
			TEEKeypair string `json:"tee_keypair"`
		}
		if err := json.Unmarshal(tok, &aa); err != nil || aa.Token == "" || aa.TEEKeypair == "" {
			t.Fatalf("GetToken answer: %v", err)
		}
		sec.add("attestation token", []byte(aa.Token))
		sec.add("TEE private key", []byte(aa.TEEKeypair))
		// Re-attestation and failure paths log too.
		kbsSrv.FailNext(devkbs.Resource, 1, http.StatusUnauthorized)
		if _, err := kc.Resource(ctx, "kbs:///"+plainPath); err != nil {
			t.Fatal(err)
		}
		kbsSrv.TamperNext(1)
		_, err = kc.Resource(ctx, "kbs:///"+plainPath)
		if err == nil {
			t.Fatal("a tampered answer was accepted")
		}
		sec.sawErr(err)
		_, err = kc.Resource(ctx, "kbs:///default/key/missing")
		sec.sawErr(err)
	})

	t.Run("encrypted layer, KEK from the KBS", func(t *testing.T) {
		reg := startMiniRegistry(t, false)
		raw := tarOf(t, "etc/encrypted", "encrypted layer content")
		enc, err := ocicrypttest.Encrypt(raw)
		if err != nil {
			t.Fatal(err)
		}
		var priv ocicrypt.PrivateOptions
		if err := json.Unmarshal(enc.PrivOpts, &priv); err != nil {
			t.Fatal(err)
		}
		sec.add("layer key", priv.SymKey)
		sec.add("layer private options", enc.PrivOpts)
		packet, err := ocicrypttest.Packet(enc.PrivOpts, kek, "kbs:///"+kekPath, ocicrypt.WrapA256GCM, true)
		if err != nil {
			t.Fatal(err)
		}
		desc := oci.Descriptor{MediaType: oci.MediaTypeOCILayer + "+encrypted", Digest: oci.FromBytes(enc.Blob), Size: int64(len(enc.Blob)),
			Annotations: map[string]string{ocicrypt.AnnotationAttestationAgent: packet, ocicrypt.AnnotationPubOpts: enc.PubOpts}}
		reg.setImage([]oci.Descriptor{desc}, [][]byte{enc.Blob}, []oci.Digest{oci.FromBytes(raw)})
		p := newPuller(t, reg.host(), authFile(t, reg.host(), registryPassword), lg)
		kp := &ocicrypt.AttestationAgent{Resources: resources{kc}}
		img, err := p.Pull(ctx, reg.host()+"/test/app:v1", imagepull.PullOptions{KeyProvider: kp})
		sec.sawErr(err)
		if err != nil || img.Stats.LayersDecrypted != 1 {
			t.Fatalf("pull: %v", err)
		}
		// A wrong KEK: the error must not carry either key.
		wrong, _ := ocicrypttest.Packet(enc.PrivOpts, bytes.Repeat([]byte{7}, 32), "kbs:///"+kekPath, ocicrypt.WrapA256GCM, true)
		desc.Annotations = map[string]string{ocicrypt.AnnotationAttestationAgent: wrong, ocicrypt.AnnotationPubOpts: enc.PubOpts}
		reg.setImage([]oci.Descriptor{desc}, [][]byte{enc.Blob}, []oci.Digest{oci.FromBytes(raw)})
		p = newPuller(t, reg.host(), authFile(t, reg.host(), registryPassword), lg)
		_, err = p.Pull(ctx, reg.host()+"/test/app:v1", imagepull.PullOptions{KeyProvider: kp})
		if err == nil {
			t.Fatal("a layer key wrapped with the wrong KEK was accepted")
		}
		sec.sawErr(err)
	})

	for _, bearer := range []bool{false, true} {
		name := map[bool]string{false: "registry password, basic auth", true: "registry password, token flow"}[bearer]
		t.Run(name, func(t *testing.T) {
			reg := startMiniRegistry(t, bearer)
			raw := tarOf(t, "etc/plain", "plain")
			reg.setImage([]oci.Descriptor{{MediaType: oci.MediaTypeOCILayer, Digest: oci.FromBytes(raw), Size: int64(len(raw))}},
				[][]byte{raw}, []oci.Digest{oci.FromBytes(raw)})
			p := newPuller(t, reg.host(), authFile(t, reg.host(), registryPassword), lg)
			_, err := p.Pull(ctx, reg.host()+"/test/app:v1", imagepull.PullOptions{})
			sec.sawErr(err)
			if err != nil {
				t.Fatal(err)
			}
			if bearer && reg.tokenHits == 0 {
				t.Fatal("the token flow was not used")
			}
			// A wrong password: refused, and neither password echoed.
			p = newPuller(t, reg.host(), authFile(t, reg.host(), append(bytes.Clone(registryPassword), "-wrong"...)), lg)
			_, err = p.Pull(ctx, reg.host()+"/test/app:v1", imagepull.PullOptions{})
			if err == nil {
				t.Fatal("a wrong password was accepted")
			}
			sec.sawErr(err)
		})
	}
	// These rooms log little below info on success; the handler takes
	// everything from debug up.
	if !lg.Enabled(ctx, slog.LevelDebug) {
		t.Fatal("the logger is not at debug level")
	}
	sec.check(t, logs.String(), false)
}
