package registry

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/test/regtest"
)

// TestRealRegistry pulls an image that umoci built and skopeo pushed to a
// real docker-registry, by tag and by digest.
func TestRealRegistry(t *testing.T) {
	regtest.Require(t, "docker-registry", "umoci", "skopeo")
	reg := regtest.Start(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("hello from a layer\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	l := regtest.NewLayout(t, "v1")
	l.Insert(src, "/data")
	l.Insert("/usr/bin/busybox", "/bin/busybox")
	l.Push(reg.Host, "test/busybox", "v1")

	c, _ := testClient(t, Config{Registries: insecure(reg.Host)})
	ctx := context.Background()
	repo, f, err := c.Resolve(ctx, mustRef(t, reg.Host+"/test/busybox:v1"))
	if err != nil {
		t.Fatal(err)
	}
	m, idx, err := oci.ParseDocument(f.Body, f.ContentType, "", 0)
	if err != nil || idx != nil {
		t.Fatalf("parse: %v %v", err, idx)
	}
	if len(m.Layers) != 2 {
		t.Fatalf("%d layers, want 2", len(m.Layers))
	}
	cfgBytes, err := repo.FetchBlob(ctx, m.Config, oci.MaxConfigBytes)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := oci.ParseConfig(cfgBytes, len(m.Layers))
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range m.Layers {
		rc, err := repo.OpenBlob(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil || n != l.Size {
			t.Fatalf("layer %d: %d bytes, %v", i, n, err)
		}
	}
	if cfg.RootFS.DiffIDs[0].IsZero() {
		t.Fatal("no diff id")
	}
	// Same manifest by digest.
	_, f2, err := c.Resolve(ctx, mustRef(t, reg.Host+"/test/busybox@"+f.Digest.String()))
	if err != nil || f2.Digest != f.Digest {
		t.Fatalf("by digest: %v %s", err, f2.Digest)
	}
}
