// Package store keeps unpacked image layers on disk, once each, named by
// their diffID, with reference counts, and prepares overlay root
// filesystems from them.
//
// Layout under the work directory:
//
//	layers/sha256/<hex>/   a committed layer (overlay lower dir)
//	staging/<random>/      a layer being unpacked; removed on failure
//	containers/<id>/upper  per-container overlay upper and work dirs
//	containers/<id>/work
//
// A layer enters layers/ only through Acquire, which renames the staging
// directory after its fill function (download, verify, unpack) succeeded.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
)

// Store is a layer store. It is safe for concurrent use.
type Store struct {
	root string
	log  *slog.Logger

	mu     sync.Mutex
	layers map[oci.Digest]*entry
}

type entry struct {
	refs     int
	ready    bool
	inflight chan struct{} // closed when a fill finishes (success or not)
}

// Open opens (creating) a store in root. Leftover staging directories from
// an earlier run are removed; committed layers are kept with no references.
func Open(root string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("store work dir %q: must be absolute: %w", root, errdefs.ErrInvalidArgument)
	}
	root = filepath.Clean(root)
	if strings.ContainsAny(root, ",:\\\n") {
		// These would corrupt overlay mount options.
		return nil, fmt.Errorf("store work dir %q: must not contain ',', ':', '\\' or newlines: %w", root, errdefs.ErrInvalidArgument)
	}
	if err := makeDirs(root); err != nil {
		return nil, err
	}
	s := &Store{root: root, log: log, layers: map[oci.Digest]*entry{}}
	stale, _ := os.ReadDir(filepath.Join(root, "staging"))
	for _, e := range stale {
		if err := os.RemoveAll(filepath.Join(root, "staging", e.Name())); err != nil {
			return nil, fmt.Errorf("removing stale staging dir: %w", err)
		}
	}
	for _, alg := range []string{oci.SHA256, oci.SHA512} {
		names, _ := os.ReadDir(filepath.Join(root, "layers", alg))
		for _, n := range names {
			d, err := oci.ParseDigest(alg + ":" + n.Name())
			if err != nil || !n.IsDir() {
				log.Warn("ignoring unknown entry in layer store", "name", n.Name())
				continue
			}
			s.layers[d] = &entry{ready: true}
		}
	}
	return s, nil
}

// Root returns the work directory.
func (s *Store) Root() string { return s.root }

// LayerDir returns where the layer with diffID d lives (whether or not it
// is present).
func (s *Store) LayerDir(d oci.Digest) string {
	return filepath.Join(s.root, "layers", d.Algorithm(), d.Hex())
}

// FillFunc fills dir (an empty staging directory) with the layer whose
// diffID is being acquired; it must verify everything before returning nil.
type FillFunc func(ctx context.Context, dir string) error

// Acquire returns the directory of layer d and takes a reference on it. If
// the layer is absent, fill runs on a fresh staging directory that is
// renamed into the store only if fill succeeds and removed otherwise.
// Concurrent Acquires of the same layer wait for one fill. cached reports
// whether the layer was already present.
func (s *Store) Acquire(ctx context.Context, d oci.Digest, fill FillFunc) (dir string, cached bool, err error) {
	if d.IsZero() {
		return "", false, fmt.Errorf("layer diffID: empty: %w", errdefs.ErrInvalidArgument)
	}
	for {
		s.mu.Lock()
		e := s.layers[d]
		switch {
		case e != nil && e.ready:
			e.refs++
			s.mu.Unlock()
			return s.LayerDir(d), true, nil
		case e != nil && e.inflight != nil:
			ch := e.inflight
			s.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return "", false, ctx.Err()
			}
		}
		if e == nil {
			e = &entry{}
			s.layers[d] = e
		}
		e.inflight = make(chan struct{})
		s.mu.Unlock()

		dir, err := s.fill(ctx, d, fill)

		s.mu.Lock()
		close(e.inflight)
		e.inflight = nil
		if err != nil {
			if e.refs == 0 && !e.ready {
				delete(s.layers, d)
			}
			s.mu.Unlock()
			return "", false, err
		}
		e.ready = true
		e.refs++
		s.mu.Unlock()
		return dir, false, nil
	}
}

func (s *Store) fill(ctx context.Context, d oci.Digest, fill FillFunc) (string, error) {
	staging, err := os.MkdirTemp(filepath.Join(s.root, "staging"), d.Hex()[:12]+"-")
	if err != nil {
		return "", fmt.Errorf("creating staging dir: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			if err := os.RemoveAll(staging); err != nil {
				s.log.Error("removing staging dir", "dir", staging, "err", err)
			}
		}
	}()
	// The layer root becomes an overlay lower root: world-readable.
	if err := os.Chmod(staging, 0o755); err != nil {
		return "", fmt.Errorf("staging dir: %w", err)
	}
	if err := fill(ctx, staging); err != nil {
		return "", err
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	dst := s.LayerDir(d)
	if err := os.Rename(staging, dst); err != nil {
		if errors.Is(err, os.ErrExist) || errors.Is(err, errNotEmpty) {
			// Present on disk already (another store instance); keep it.
			s.log.Warn("layer already on disk, discarding the new copy", "diffID", d.String())
			return dst, nil
		}
		return "", fmt.Errorf("committing layer %s: %w", d, err)
	}
	ok = true
	return dst, nil
}

// Release drops one reference on each layer.
func (s *Store) Release(ds ...oci.Digest) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		if e := s.layers[d]; e != nil && e.refs > 0 {
			e.refs--
		}
	}
}

// Refs returns the reference count of layer d (for tests and metrics).
func (s *Store) Refs(d oci.Digest) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.layers[d]; e != nil {
		return e.refs
	}
	return 0
}

// Layers lists the committed layers.
func (s *Store) Layers() []oci.Digest {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []oci.Digest
	for d, e := range s.layers {
		if e.ready {
			out = append(out, d)
		}
	}
	return out
}

// GC removes committed layers nobody references and returns how many.
// Victims are renamed out of layers/ while the lock is held, so a
// concurrent Acquire never sees a half-removed layer.
func (s *Store) GC() (int, error) {
	var errs []error
	var trash []string
	s.mu.Lock()
	for d, e := range s.layers {
		if !e.ready || e.refs != 0 || e.inflight != nil {
			continue
		}
		delete(s.layers, d)
		t, err := os.MkdirTemp(filepath.Join(s.root, "staging"), "gc-")
		if err == nil {
			err = os.Rename(s.LayerDir(d), filepath.Join(t, "l"))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("removing layer %s: %w", d, err))
		}
		if t != "" {
			trash = append(trash, t)
		}
	}
	s.mu.Unlock()
	for _, t := range trash {
		if err := os.RemoveAll(t); err != nil {
			errs = append(errs, fmt.Errorf("removing old layer: %w", err))
		}
	}
	return len(trash), errors.Join(errs...)
}

// makeDirs creates the store's directory layout under root.
func makeDirs(root string) error {
	for _, d := range []string{root, filepath.Join(root, "layers", oci.SHA256), filepath.Join(root, "layers", oci.SHA512), filepath.Join(root, "staging"), filepath.Join(root, "containers")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating store dir: %w", err)
		}
	}
	return nil
}

// Remount puts a file system over the store's root (mount mounts it, e.g. an
// encrypted block device) and recreates the layout on it. Only an empty
// store (no layer, no rootfs, nothing in flight) may move: anything already
// there would be hidden under the mount. Pulls wait while it runs.
func (s *Store) Remount(mount func(root string) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.layers) > 0 {
		return fmt.Errorf("store %s: %d layers already stored; it can move to another device only while empty: %w", s.root, len(s.layers), errdefs.ErrFailedPrecondition)
	}
	for _, sub := range []string{"containers", "staging"} {
		if ents, err := os.ReadDir(filepath.Join(s.root, sub)); err != nil || len(ents) > 0 {
			return fmt.Errorf("store %s: %s is in use; it can move to another device only while empty: %w", s.root, sub, errdefs.ErrFailedPrecondition)
		}
	}
	if err := mount(s.root); err != nil {
		return err
	}
	return makeDirs(s.root)
}
