package imagepull

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/test/regtest"
)

// TestPullImageBadInput: what is refused before anything is pulled.
func TestPullImageBadInput(t *testing.T) {
	p, err := New(Config{WorkDir: t.TempDir(), PullOptions: func(context.Context) (PullOptions, error) {
		return PullOptions{}, fmt.Errorf("kbs down: %w", errdefs.ErrUnavailable)
	}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "used", "rootfs"), 0o755)
	os.WriteFile(filepath.Join(dir, "used", "rootfs", "x"), nil, 0o644)
	os.Symlink("/tmp", filepath.Join(dir, "link"))
	ctx := context.Background()
	for _, tc := range []struct {
		name, image, bundle string
		with                bool // PullImageWith (skips the failing PullOptions)
		want                error
	}{
		{"relative bundle", "busybox", "bundle", true, errdefs.ErrInvalidArgument},
		{"unclean bundle", "busybox", dir + "/a/../b", true, errdefs.ErrInvalidArgument},
		{"root bundle", "busybox", "/", true, errdefs.ErrInvalidArgument},
		{"empty image", "", dir + "/b", true, errdefs.ErrInvalidArgument},
		{"bad image", "a/b@sha256:short", dir + "/b", true, errdefs.ErrInvalidArgument},
		{"non-empty rootfs", "busybox", dir + "/used", true, errdefs.ErrAlreadyExists},
		{"symlinked bundle", "busybox", dir + "/link/x", true, errdefs.ErrInvalidArgument},
		{"pull options fail", "busybox", dir + "/c", false, errdefs.ErrUnavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.with {
				_, err = p.PullImageWith(ctx, tc.image, tc.bundle, PullOptions{})
			} else {
				_, err = p.PullImage(ctx, tc.image, tc.bundle)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	if err := p.ReleaseBundle(dir + "/c"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("release of a failed bundle: %v", err)
	}
}

// TestPullImageBundles (root): two bundles of one image share the layers
// (the second fetches none), have separate writable rootfs, and release
// everything.
func TestPullImageBundles(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("PullImage test needs root (overlay mount)")
		}
		t.Skip("PullImage test needs root (overlay mount)")
	}
	regtest.Require(t, "docker-registry", "umoci", "skopeo")
	reg := regtest.Start(t)
	buildBusybox(t, reg, "test/bundle")
	var calls int
	p := newPuller(t, reg.Host, func(c *Config) {
		c.PullOptions = func(context.Context) (PullOptions, error) { calls++; return PullOptions{}, nil }
	})
	ctx := context.Background()
	dir := t.TempDir()
	b1, b2 := filepath.Join(dir, "c1"), filepath.Join(dir, "c2")
	ref := reg.Host + "/test/bundle:v1"
	err := inMountNS(func() error {
		d1, err := p.PullImage(ctx, ref, b1)
		if err != nil {
			return err
		}
		if _, err := p.PullImage(ctx, ref, b1); !errors.Is(err, errdefs.ErrAlreadyExists) {
			return fmt.Errorf("same bundle twice: %v", err)
		}
		fetched := p.Metrics().LayersFetched
		d2, err := p.PullImage(ctx, ref, b2)
		if err != nil {
			return err
		}
		if d1 != d2 || len(d1) != 71 {
			return fmt.Errorf("digests %q %q", d1, d2)
		}
		if m := p.Metrics(); m.LayersFetched != fetched || m.LayersFromCache != 5 {
			return fmt.Errorf("second bundle fetched layers: %+v", m)
		}
		r1, r2 := filepath.Join(b1, "rootfs"), filepath.Join(b2, "rootfs")
		if b, err := os.ReadFile(filepath.Join(r2, "data/keep")); err != nil || string(b) != "kept\n" {
			return fmt.Errorf("data/keep: %q %v", b, err)
		}
		if _, err := os.Stat(filepath.Join(r1, "bin/busybox")); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(r1, "mine"), []byte("1"), 0o644); err != nil {
			return fmt.Errorf("rootfs not writable: %v", err)
		}
		if _, err := os.Stat(filepath.Join(r2, "mine")); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("write in bundle 1 visible in bundle 2: %v", err)
		}
		for _, b := range []string{b1, b2} {
			if err := p.ReleaseBundle(b); err != nil {
				return err
			}
		}
		if ents, _ := os.ReadDir(r1); len(ents) != 0 {
			return fmt.Errorf("rootfs still mounted: %d entries", len(ents))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 3 {
		t.Fatalf("PullOptions called %d times, want 3", calls)
	}
	if n, _ := p.Store().GC(); n != 5 {
		t.Fatalf("GC removed %d layers, want 5 (all released)", n)
	}
	if err := p.ReleaseBundle(b1); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second release: %v", err)
	}
}
