package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
)

func TestAcquire(t *testing.T) {
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := oci.FromBytes([]byte("layer"))
	var fills atomic.Int32
	fill := func(ctx context.Context, dir string) error {
		fills.Add(1)
		return os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	}
	var wg sync.WaitGroup
	dirs := make([]string, 8)
	for i := range dirs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir, _, err := s.Acquire(context.Background(), d, fill)
			if err != nil {
				t.Error(err)
			}
			dirs[i] = dir
		}()
	}
	wg.Wait()
	if fills.Load() != 1 {
		t.Fatalf("%d fills for one layer", fills.Load())
	}
	for _, dir := range dirs {
		if dir != s.LayerDir(d) {
			t.Fatalf("dir %q", dir)
		}
	}
	if b, err := os.ReadFile(filepath.Join(s.LayerDir(d), "f")); err != nil || string(b) != "x" {
		t.Fatalf("layer content: %q %v", b, err)
	}
	if s.Refs(d) != 8 {
		t.Fatalf("refs %d", s.Refs(d))
	}
	if _, cached, _ := s.Acquire(context.Background(), d, fill); !cached {
		t.Fatal("second acquire not cached")
	}
	// Referenced layers survive GC.
	if n, err := s.GC(); n != 0 || err != nil {
		t.Fatalf("GC removed %d: %v", n, err)
	}
	for i := 0; i < 9; i++ {
		s.Release(d)
	}
	if n, err := s.GC(); n != 1 || err != nil {
		t.Fatalf("GC removed %d: %v", n, err)
	}
	if _, err := os.Stat(s.LayerDir(d)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("layer still on disk: %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), "staging")); len(ents) != 0 {
		t.Fatalf("staging not empty: %v", ents)
	}
}

func TestAcquireFailureCleansStaging(t *testing.T) {
	s, err := Open(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := oci.FromBytes([]byte("bad"))
	boom := errors.New("digest mismatch")
	_, _, err = s.Acquire(context.Background(), d, func(ctx context.Context, dir string) error {
		os.WriteFile(filepath.Join(dir, "partial"), []byte("x"), 0o644)
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Root(), "staging")); len(ents) != 0 {
		t.Fatalf("staging not cleaned: %v", ents)
	}
	if _, err := os.Stat(s.LayerDir(d)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("failed layer committed")
	}
	// A later fill can succeed.
	if _, _, err := s.Acquire(context.Background(), d, func(ctx context.Context, dir string) error { return nil }); err != nil {
		t.Fatal(err)
	}
}

func TestReopen(t *testing.T) {
	root := t.TempDir()
	s, _ := Open(root, nil)
	d := oci.FromBytes([]byte("kept"))
	if _, _, err := s.Acquire(context.Background(), d, func(ctx context.Context, dir string) error { return nil }); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "staging", "leftover", "x"), 0o755)
	s2, err := Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := s2.Layers(); len(got) != 1 || got[0] != d {
		t.Fatalf("layers after reopen: %v", got)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "staging")); len(ents) != 0 {
		t.Fatalf("stale staging kept: %v", ents)
	}
	if _, cached, _ := s2.Acquire(context.Background(), d, nil); !cached {
		t.Fatal("reopened layer not reused")
	}
}

func TestOpenRejectsBadRoots(t *testing.T) {
	for _, root := range []string{"relative/dir", "/tmp/a,b", "/tmp/a:b"} {
		if _, err := Open(root, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("Open(%q): %v", root, err)
		}
	}
}

func TestOverlayOptions(t *testing.T) {
	o, err := NewOverlay([]string{"/l/1", "/l/2", "/l/3"}, "/c/upper", "/c/work")
	if err != nil {
		t.Fatal(err)
	}
	got, err := o.Options()
	if err != nil || got != "lowerdir=/l/3:/l/2:/l/1,upperdir=/c/upper,workdir=/c/work" {
		t.Fatalf("options %q %v", got, err)
	}
	long := make([]string, 100)
	for i := range long {
		long[i] = "/run/kata-containers/image/layers/sha256/" + strings.Repeat("a", 64)
	}
	o, _ = NewOverlay(long, "", "")
	if _, err := o.Options(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("long options: %v", err)
	}
	for _, bad := range [][]string{{"rel"}, {"/a,b"}, {"/a:b"}, {}} {
		if _, err := NewOverlay(bad, "", ""); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("NewOverlay(%q): %v", bad, err)
		}
	}
	if _, err := NewOverlay([]string{"/a"}, "/u", ""); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Error("upper without work accepted")
	}
}

func TestPrepareRootfs(t *testing.T) {
	s, _ := Open(t.TempDir(), nil)
	o, err := s.PrepareRootfs("c1", []string{"/l/1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(o.Upper); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PrepareRootfs("c1", []string{"/l/1"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	for _, bad := range []string{"", "..", "a/b", "x\x00"} {
		if _, err := s.PrepareRootfs(bad, []string{"/l/1"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("id %q: %v", bad, err)
		}
	}
	if err := s.RemoveRootfs("c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(o.Upper); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("upper dir left")
	}
}

// TestRemount: an empty store moves onto another file system (simulated by
// a mount function that empties the root, as a fresh mount would look) and
// gets its layout back; a store holding a layer refuses and never calls
// the mount function.
func TestRemount(t *testing.T) {
	root := t.TempDir()
	s, err := Open(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	called := 0
	fresh := func(dir string) error {
		called++
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
		return nil
	}
	if err := s.Remount(fresh); err != nil || called != 1 {
		t.Fatalf("Remount of an empty store: %v (mount called %d times)", err, called)
	}
	for _, sub := range []string{"layers/sha256", "layers/sha512", "staging", "containers"} {
		if fi, err := os.Stat(filepath.Join(root, sub)); err != nil || !fi.IsDir() {
			t.Fatalf("%s after Remount: %v", sub, err)
		}
	}
	d := oci.FromBytes([]byte("layer"))
	if _, _, err := s.Acquire(context.Background(), d, func(ctx context.Context, dir string) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := s.Remount(fresh); !errdefs.IsFailedPrecondition(err) || called != 1 {
		t.Fatalf("Remount of a store with a layer: %v (mount called %d times)", err, called)
	}
}
