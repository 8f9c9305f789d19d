// Package regtest starts a real registry (Debian's docker-registry) for
// tests, builds images with umoci and pushes them with skopeo, and pushes
// hand-made images straight through the registry API. Tests that need a tool
// that is missing are skipped, or fail when CI=true.
package regtest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cova-project/cova/imagepull/oci"
)

// Require skips (or fails under CI=true) unless every tool is on PATH.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s is required (imagepull/testdata/deps.sh installs it)", tool)
			}
			t.Skipf("%s not installed (run imagepull/testdata/deps.sh)", tool)
		}
	}
}

// Registry is a running docker-registry.
type Registry struct {
	// Host is "127.0.0.1:PORT".
	Host string
	Dir  string
	cmd  *exec.Cmd
}

// Start runs docker-registry on 127.0.0.1 and a free port with storage in a
// temp dir; it is stopped when the test ends.
func Start(t testing.TB) *Registry {
	t.Helper()
	Require(t, "docker-registry")
	dir := t.TempDir()
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		host := "127.0.0.1:" + strconv.Itoa(port)
		cfg := fmt.Sprintf(`version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(dir, "data"), host)
		cfgPath := filepath.Join(dir, "config.yml")
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		var logBuf bytes.Buffer
		cmd := exec.Command("docker-registry", "serve", cfgPath)
		cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting docker-registry: %v", err)
		}
		r := &Registry{Host: host, Dir: dir, cmd: cmd}
		if err := waitReady(host); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			lastErr = fmt.Errorf("%v: %s", err, logBuf.String())
			continue
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		return r
	}
	t.Fatalf("docker-registry did not start: %v", lastErr)
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitReady(host string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + host + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("docker-registry not ready on %s", host)
}

// Run runs a command and fails the test with its output on error.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ManifestDigest returns the digest of repo:tag's manifest on host as
// skopeo sees it (the digest a pull by tag resolves to).
func ManifestDigest(t testing.TB, host, repo, tag string) string {
	t.Helper()
	out, err := exec.Command("skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+host+"/"+repo+":"+tag).Output()
	if err != nil {
		t.Fatalf("skopeo inspect --raw %s/%s:%s: %v", host, repo, tag, err)
	}
	sum := sha256.Sum256(out)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Layout is an OCI image layout being built with umoci.
type Layout struct {
	t   testing.TB
	Dir string
	Tag string
}

// NewLayout runs umoci init + new.
func NewLayout(t testing.TB, tag string) *Layout {
	t.Helper()
	Require(t, "umoci")
	dir := filepath.Join(t.TempDir(), "layout")
	Run(t, "umoci", "init", "--layout", dir)
	Run(t, "umoci", "new", "--image", dir+":"+tag)
	return &Layout{t: t, Dir: dir, Tag: tag}
}

func (l *Layout) image() string { return l.Dir + ":" + l.Tag }

// Insert adds one layer holding src (a file or directory on the host) at
// dest in the image.
func (l *Layout) Insert(src, dest string) {
	l.t.Helper()
	Run(l.t, "umoci", "insert", "--image", l.image(), src, dest)
}

// Whiteout adds one layer that deletes dest.
func (l *Layout) Whiteout(dest string) {
	l.t.Helper()
	Run(l.t, "umoci", "insert", "--image", l.image(), "--whiteout", dest)
}

// InsertOpaque adds one layer that replaces directory dest by src.
func (l *Layout) InsertOpaque(src, dest string) {
	l.t.Helper()
	Run(l.t, "umoci", "insert", "--opaque", "--image", l.image(), src, dest)
}

// Config sets configuration fields, e.g. "--config.cmd", "/bin/sh".
func (l *Layout) Config(args ...string) {
	l.t.Helper()
	Run(l.t, "umoci", append([]string{"config", "--image", l.image()}, args...)...)
}

// Push copies the layout to docker://host/repo:tag with skopeo; extra skopeo
// copy flags (e.g. "--dest-compress-format", "zstd") go before the names.
func (l *Layout) Push(host, repo, tag string, extra ...string) {
	l.t.Helper()
	Require(l.t, "skopeo")
	args := []string{"copy", "--quiet", "--insecure-policy", "--dest-tls-verify=false"}
	args = append(args, extra...)
	args = append(args, "oci:"+l.image(), "docker://"+host+"/"+repo+":"+tag)
	Run(l.t, "skopeo", args...)
}

// PushBlob uploads b to repo with the monolithic upload API.
func PushBlob(ctx context.Context, host, repo string, b []byte) (oci.Descriptor, error) {
	d := oci.FromBytes(b)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+host+"/v2/"+repo+"/blobs/uploads/", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return oci.Descriptor{}, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		return oci.Descriptor{}, fmt.Errorf("start upload: HTTP %d", resp.StatusCode)
	}
	loc := resp.Header.Get("Location")
	if strings.HasPrefix(loc, "/") {
		loc = "http://" + host + loc
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodPut, loc+sep+"digest="+d.String(), bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		return oci.Descriptor{}, err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return oci.Descriptor{}, fmt.Errorf("finish upload: HTTP %d: %s", resp.StatusCode, body)
	}
	return oci.Descriptor{Digest: d, Size: int64(len(b))}, nil
}

// PushManifest puts a manifest or index under tag.
func PushManifest(ctx context.Context, host, repo, tag, mediaType string, body []byte) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+host+"/v2/"+repo+"/manifests/"+tag, bytes.NewReader(body))
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return fmt.Errorf("put manifest: HTTP %d: %s", resp.StatusCode, b)
	}
	return nil
}

// Layer is a layer blob with its uncompressed digest.
type Layer struct {
	Blob      []byte
	MediaType string
	DiffID    oci.Digest
	// URLs become the descriptor's urls (foreign layers).
	URLs []string
	// Annotations become the descriptor's (e.g. ocicrypt's keys).
	Annotations map[string]string
}

// PushImage uploads layers, a config naming their diffIDs and an OCI
// manifest tagged tag; it returns the manifest digest.
func PushImage(ctx context.Context, host, repo, tag string, layers []Layer) (oci.Digest, error) {
	type rootfs struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	}
	cfg := struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
		RootFS       rootfs `json:"rootfs"`
	}{Architecture: oci.DefaultPlatform().Architecture, OS: "linux", RootFS: rootfs{Type: "layers", DiffIDs: []string{}}}
	var descs []oci.Descriptor
	for _, l := range layers {
		d, err := PushBlob(ctx, host, repo, l.Blob)
		if err != nil {
			return oci.Digest{}, err
		}
		d.MediaType = l.MediaType
		d.URLs = l.URLs
		d.Annotations = l.Annotations
		descs = append(descs, d)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.DiffID.String())
	}
	cb, _ := json.Marshal(cfg)
	cd, err := PushBlob(ctx, host, repo, cb)
	if err != nil {
		return oci.Digest{}, err
	}
	cd.MediaType = oci.MediaTypeOCIConfig
	m := oci.Manifest{SchemaVersion: 2, MediaType: oci.MediaTypeOCIManifest, Config: cd, Layers: descs}
	if m.Layers == nil {
		m.Layers = []oci.Descriptor{}
	}
	mb, _ := json.Marshal(m)
	if err := PushManifest(ctx, host, repo, tag, oci.MediaTypeOCIManifest, mb); err != nil {
		return oci.Digest{}, err
	}
	return oci.FromBytes(mb), nil
}

// Cosign's simple-signing payload type and signature annotation.
const (
	CosignPayloadMediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	CosignSigAnnotation    = "dev.cosignproject.cosign/signature"
)

// PushCosign signs manifest digest d of host/repo with key the way
// `cosign sign --key` does (simple-signing payload naming dockerRef, ECDSA
// over its SHA-256) and pushes the signature under the "sha256-<hex>.sig"
// tag.
func PushCosign(ctx context.Context, host, repo, dockerRef string, d oci.Digest, key *ecdsa.PrivateKey) error {
	payload, err := json.Marshal(map[string]any{
		"critical": map[string]any{
			"identity": map[string]string{"docker-reference": dockerRef},
			"image":    map[string]string{"docker-manifest-digest": d.String()},
			"type":     "cosign container image signature",
		},
		"optional": nil,
	})
	if err != nil {
		return err
	}
	sum := sha256.Sum256(payload)
	sig, err := ecdsa.SignASN1(rand.Reader, key, sum[:])
	if err != nil {
		return err
	}
	pd, err := PushBlob(ctx, host, repo, payload)
	if err != nil {
		return err
	}
	cfg, _ := json.Marshal(map[string]any{"architecture": "", "os": "", "config": map[string]any{},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{pd.Digest.String()}}})
	cd, err := PushBlob(ctx, host, repo, cfg)
	if err != nil {
		return err
	}
	cd.MediaType = oci.MediaTypeOCIConfig
	pd.MediaType = CosignPayloadMediaType
	pd.Annotations = map[string]string{CosignSigAnnotation: base64.StdEncoding.EncodeToString(sig)}
	m, _ := json.Marshal(oci.Manifest{SchemaVersion: 2, MediaType: oci.MediaTypeOCIManifest, Config: cd, Layers: []oci.Descriptor{pd}})
	return PushManifest(ctx, host, repo, "sha256-"+d.Hex()+".sig", oci.MediaTypeOCIManifest, m)
}
