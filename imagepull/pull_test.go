package imagepull

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/registry"
	"github.com/cova-project/cova/imagepull/unpack"
	"github.com/cova-project/cova/test/regtest"
)

func newPuller(t *testing.T, host string, mod func(*Config)) *Puller {
	t.Helper()
	cfg := Config{
		WorkDir:  t.TempDir(),
		Registry: registry.Config{Registries: []registry.Registry{{Prefix: host, Insecure: true}}},
	}
	if os.Geteuid() != 0 {
		cfg.Unpack.OpaqueXattr = unpack.OpaqueXattrUser
	}
	if mod != nil {
		mod(&cfg)
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// buildBusybox builds a 4-layer image: busybox, a data dir, a whiteout of
// one data file and an opaque replacement of another dir.
func buildBusybox(t *testing.T, reg *regtest.Registry, repo string, pushFlags ...string) {
	t.Helper()
	src := t.TempDir()
	mk := func(rel, content string) {
		p := filepath.Join(src, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mk("data/keep", "kept\n")
	mk("data/gone", "whited out\n")
	mk("opt/old/a", "old a\n")
	mk("newopt/b", "new b\n")
	l := regtest.NewLayout(t, "v1")
	l.Insert("/usr/bin/busybox", "/bin/busybox")
	l.Insert(filepath.Join(src, "data"), "/data")
	l.Insert(filepath.Join(src, "opt"), "/opt")
	l.Whiteout("/data/gone")
	l.InsertOpaque(filepath.Join(src, "newopt"), "/opt")
	l.Config("--config.cmd", "/bin/busybox", "--config.env", "A=1")
	l.Push(reg.Host, repo, "v1", pushFlags...)
}

func TestPullRealRegistry(t *testing.T) {
	regtest.Require(t, "docker-registry", "umoci", "skopeo")
	reg := regtest.Start(t)
	buildBusybox(t, reg, "test/busybox")
	p := newPuller(t, reg.Host, nil)
	ctx := context.Background()
	img, err := p.Pull(ctx, reg.Host+"/test/busybox:v1", PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Layers) != 5 || img.Stats.LayersFetched != 5 || img.Config.Config.Env[0] != "A=1" {
		t.Fatalf("image %+v", img)
	}
	checkBusyboxLayers(t, img)

	// Second pull: everything from the store, nothing fetched.
	before := p.Registry().Stats.BlobBytes.Load()
	img2, err := p.Pull(ctx, reg.Host+"/test/busybox@"+img.ManifestDigest.String(), PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if img2.Stats.LayersReused != 5 || p.Registry().Stats.BlobBytes.Load()-before > int64(len(img.RawConfig)) {
		t.Fatalf("second pull fetched layers: %+v", img2.Stats)
	}
	for _, d := range img.DiffIDs {
		if p.Store().Refs(d) != 2 {
			t.Fatalf("refs %d", p.Store().Refs(d))
		}
	}
	p.Release(img)
	if n, _ := p.Store().GC(); n != 0 {
		t.Fatalf("GC removed %d referenced layers", n)
	}
	p.Release(img2)
	if n, _ := p.Store().GC(); n != 5 {
		t.Fatalf("GC removed %d, want 5", n)
	}
}

func checkBusyboxLayers(t *testing.T, img *Image) {
	t.Helper()
	bb, err := os.Stat(filepath.Join(img.Layers[0], "bin/busybox"))
	if err != nil || bb.Mode().Perm() != 0o755 {
		t.Fatalf("busybox: %v %v", bb, err)
	}
	if b, err := os.ReadFile(filepath.Join(img.Layers[1], "data/keep")); err != nil || string(b) != "kept\n" {
		t.Fatalf("data/keep: %q %v", b, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(img.Layers[3], "data/gone"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Fatalf("data/gone is not a whiteout in layer 3: %v %o", err, st.Mode)
	}
	xattr := unpack.OpaqueXattrTrusted
	if os.Geteuid() != 0 {
		xattr = unpack.OpaqueXattrUser
	}
	buf := make([]byte, 8)
	n, err := unix.Lgetxattr(filepath.Join(img.Layers[4], "opt"), xattr, buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Fatalf("opt not opaque in layer 4: %v", err)
	}
}

func TestPullCompressions(t *testing.T) {
	regtest.Require(t, "docker-registry", "umoci", "skopeo")
	reg := regtest.Start(t)
	for _, tc := range []struct {
		name  string
		flags []string
	}{
		{"zstd", []string{"--dest-compress", "--dest-compress-format", "zstd"}},
		{"uncompressed", []string{"--dest-decompress"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := t.TempDir()
			os.WriteFile(filepath.Join(src, "f"), bytes.Repeat([]byte(tc.name), 10000), 0o644)
			l := regtest.NewLayout(t, "v1")
			l.Insert("/usr/bin/busybox", "/bin/busybox")
			l.Insert(src, "/d")
			// Recompress through a second layout so skopeo cannot reuse blobs.
			out := filepath.Join(t.TempDir(), "out")
			regtest.Run(t, "skopeo", append(append([]string{"copy", "--quiet", "--insecure-policy"}, tc.flags...), "oci:"+l.Dir+":v1", "oci:"+out+":v1")...)
			regtest.Run(t, "skopeo", "copy", "--quiet", "--insecure-policy", "--dest-tls-verify=false", "oci:"+out+":v1", "docker://"+reg.Host+"/test/"+tc.name+":v1")
			p := newPuller(t, reg.Host, nil)
			img, err := p.Pull(context.Background(), reg.Host+"/test/"+tc.name+":v1", PullOptions{})
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(filepath.Join(img.Layers[1], "d/f"))
			if err != nil || !bytes.Equal(b, bytes.Repeat([]byte(tc.name), 10000)) {
				t.Fatalf("content: %v", err)
			}
		})
	}
}

// TestPullIndex pushes an index with several platforms and checks that the
// matching one is pulled and the rest are not fetched.
func TestPullIndex(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	ctx := context.Background()
	layer := tarGz(t, tarOf(t, file("hello", "hi")))
	md, err := regtest.PushImage(ctx, reg.Host, "test/multi", "amd", []regtest.Layer{{Blob: layer.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: layer.diffID}})
	if err != nil {
		t.Fatal(err)
	}
	mb := mustGet(t, reg.Host, "test/multi", md.String())
	// Another manifest (the registry insists index entries exist); its
	// layer must never be fetched.
	otherLayer := tarGz(t, tarOf(t, file("other", "platform")))
	other, err := regtest.PushImage(ctx, reg.Host, "test/multi", "s390x", []regtest.Layer{{Blob: otherLayer.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: otherLayer.diffID}})
	if err != nil {
		t.Fatal(err)
	}
	ob := mustGet(t, reg.Host, "test/multi", other.String())
	idx := oci.Index{SchemaVersion: 2, MediaType: oci.MediaTypeOCIIndex, Manifests: []oci.Descriptor{
		{MediaType: oci.MediaTypeOCIManifest, Digest: other, Size: int64(len(ob)), Platform: &oci.Platform{OS: "linux", Architecture: "s390x"}},
		{MediaType: oci.MediaTypeOCIManifest, Digest: md, Size: int64(len(mb)), Platform: &oci.Platform{OS: "linux", Architecture: oci.DefaultPlatform().Architecture}},
	}}
	ib, _ := json.Marshal(idx)
	if err := regtest.PushManifest(ctx, reg.Host, "test/multi", "v1", oci.MediaTypeOCIIndex, ib); err != nil {
		t.Fatal(err)
	}
	p := newPuller(t, reg.Host, nil)
	var seen ManifestInfo
	img, err := p.Pull(ctx, reg.Host+"/test/multi:v1", PullOptions{Verifier: verifierFunc(func(ctx context.Context, m ManifestInfo) error {
		seen = m
		return nil
	})})
	if err != nil {
		t.Fatal(err)
	}
	if img.ManifestDigest != md || img.IndexDigest != oci.FromBytes(ib) || seen.Digest != md || seen.IndexDigest != img.IndexDigest {
		t.Fatalf("manifest %s index %s, verifier saw %s/%s", img.ManifestDigest, img.IndexDigest, seen.Digest, seen.IndexDigest)
	}
	if got := p.Store().Layers(); len(got) != 1 || got[0] != layer.diffID {
		t.Fatalf("store holds %v, want only the selected platform's layer", got)
	}
	_, err = p.Pull(ctx, reg.Host+"/test/multi:v1", PullOptions{Platform: &oci.Platform{OS: "linux", Architecture: "riscv64"}})
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing platform: %v", err)
	}
}

type verifierFunc func(ctx context.Context, m ManifestInfo) error

func (f verifierFunc) VerifyManifest(ctx context.Context, m ManifestInfo) error { return f(ctx, m) }

func TestVerifierRunsFirst(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	ctx := context.Background()
	layer := tarGz(t, tarOf(t, file("hello", "hi")))
	if _, err := regtest.PushImage(ctx, reg.Host, "test/refused", "v1", []regtest.Layer{{Blob: layer.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: layer.diffID}}); err != nil {
		t.Fatal(err)
	}
	p := newPuller(t, reg.Host, nil)
	deny := errors.New("unsigned")
	_, err := p.Pull(ctx, reg.Host+"/test/refused:v1", PullOptions{Verifier: verifierFunc(func(ctx context.Context, m ManifestInfo) error {
		return fmt.Errorf("%w: %w", deny, errdefs.ErrPermissionDenied)
	})})
	if !errors.Is(err, deny) || !errdefs.IsPermissionDenied(err) {
		t.Fatalf("got %v", err)
	}
	if n := p.Registry().Stats.BlobBytes.Load(); n != 0 {
		t.Fatalf("%d blob bytes fetched before the verifier refused", n)
	}
}

// TestPullHostileImages pushes crafted images to a real registry.
func TestPullHostileImages(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	ctx := context.Background()
	good := tarGz(t, tarOf(t, file("hello", "hi")))
	bomb := func() gzLayer {
		var tb bytes.Buffer
		tw := tar.NewWriter(&tb)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "zeros", Size: 200 << 20, Mode: 0o644})
		tw.Write(make([]byte, 200<<20))
		tw.Close()
		return tarGz(t, tb.Bytes())
	}()
	emptyMembers := func() gzLayer {
		// 200k empty gzip members, then one with a tar (CVE-2022-30631 shape).
		var b bytes.Buffer
		empty := gzipBytes(t, nil)
		for i := 0; i < 200000; i++ {
			b.Write(empty)
		}
		raw := tarOf(t, file("after", "members"))
		b.Write(gzipBytes(t, raw))
		return gzLayer{blob: b.Bytes(), diffID: oci.FromBytes(raw)}
	}()
	trailing := tarGz(t, tarOf(t, file("x", "y")))
	trailing.blob = append(append([]byte{}, trailing.blob...), "garbage after the gzip stream"...)
	tests := []struct {
		name    string
		layers  []regtest.Layer
		opts    func(*Config)
		wantErr error // nil: must succeed
	}{
		{name: "wrong diffID", layers: []regtest.Layer{{Blob: good.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: oci.FromBytes([]byte("other"))}},
			wantErr: errdefs.ErrFailedPrecondition},
		{name: "decompression bomb over the byte limit", layers: []regtest.Layer{{Blob: bomb.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: bomb.diffID}},
			opts: func(c *Config) { c.Unpack.MaxBytes = 16 << 20 }, wantErr: unpack.ErrInvalidArchive},
		{name: "many empty gzip members", layers: []regtest.Layer{{Blob: emptyMembers.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: emptyMembers.diffID}}},
		{name: "garbage after the gzip stream", layers: []regtest.Layer{{Blob: trailing.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: trailing.diffID}},
			wantErr: unpack.ErrInvalidArchive},
		{name: "encrypted layer without a key provider", layers: []regtest.Layer{{Blob: good.blob, MediaType: oci.MediaTypeOCILayerGzip + "+encrypted", DiffID: good.diffID}},
			wantErr: errdefs.ErrFailedPrecondition},
		{name: "hostile tar", layers: []regtest.Layer{tarLayer(t, symlink("/etc", "e"), file("e/passwd", "x"))},
			wantErr: unpack.ErrInvalidArchive},
		{name: "second layer breaks and the first is released", layers: []regtest.Layer{
			{Blob: good.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: good.diffID},
			{Blob: trailing.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: trailing.diffID}},
			opts: func(c *Config) { c.MaxConcurrentLayers = 1 }, wantErr: unpack.ErrInvalidArchive},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			repo := fmt.Sprintf("test/hostile%d", i)
			if _, err := regtest.PushImage(ctx, reg.Host, repo, "v1", tc.layers); err != nil {
				t.Fatal(err)
			}
			p := newPuller(t, reg.Host, tc.opts)
			img, err := p.Pull(ctx, reg.Host+"/"+repo+":v1", PullOptions{})
			staging, _ := os.ReadDir(filepath.Join(p.Store().Root(), "staging"))
			if len(staging) != 0 {
				t.Errorf("staging dirs left: %v", staging)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if len(img.Layers) != len(tc.layers) {
					t.Fatalf("layers %v", img.Layers)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			for _, d := range p.Store().Layers() {
				if p.Store().Refs(d) != 0 {
					t.Errorf("layer %s still referenced after a failed pull", d)
				}
			}
			if strings.Contains(tc.name, "released") && len(p.Store().Layers()) != 1 {
				t.Errorf("committed layers %v, want the good first one", p.Store().Layers())
			}
			if tc.name != "second layer breaks and the first is released" && len(p.Store().Layers()) != 0 {
				t.Errorf("bad layer committed: %v", p.Store().Layers())
			}
		})
	}
}

func mustGet(t *testing.T, host, repo, object string) []byte {
	t.Helper()
	c, _ := registry.New(registry.Config{Registries: []registry.Registry{{Prefix: host, Insecure: true}}})
	_, f, err := c.Resolve(context.Background(), mustRef(t, host+"/"+repo+"@"+object))
	if err != nil {
		t.Fatal(err)
	}
	return f.Body
}
