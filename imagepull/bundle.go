package imagepull

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/imagepull/reference"
	"github.com/cova-project/cova/imagepull/unpack"
)

// BundleRootfs is the directory under a bundle where PullImage mounts the
// image (as image-rs does).
const BundleRootfs = "rootfs"

// bundles tracks the rootfs PullImage mounted, by bundle path.
type bundles struct {
	mu sync.Mutex
	m  map[string]*bundle
}

type bundle struct {
	id     string // the store's container id for the upper/work dirs
	img    *Image
	rootfs string
}

// PullImage is the CDH ImagePullService PullImage: it pulls imageURL with
// the options Config.PullOptions gives (none: no signature policy and no
// layer keys), mounts an overlay of its layers with a private writable
// upper dir at bundlePath/rootfs, and returns the manifest digest
// ("sha256:…"). The bundle keeps its references on the layers until
// ReleaseBundle. A bundle path already in use is ErrAlreadyExists.
func (p *Puller) PullImage(ctx context.Context, imageURL, bundlePath string) (manifestDigest string, err error) {
	var opts PullOptions
	if p.cfg.PullOptions != nil {
		if opts, err = p.cfg.PullOptions(ctx); err != nil {
			return "", fmt.Errorf("image pull settings: %w", err)
		}
	}
	return p.PullImageWith(ctx, imageURL, bundlePath, opts)
}

// PullImageWith is PullImage with explicit options.
func (p *Puller) PullImageWith(ctx context.Context, imageURL, bundlePath string, opts PullOptions) (string, error) {
	if imageURL == "" {
		return "", fmt.Errorf("image_url: empty: %w", errdefs.ErrInvalidArgument)
	}
	if _, err := reference.Parse(imageURL); err != nil {
		return "", fmt.Errorf("image_url: %w", err)
	}
	if err := validBundlePath(bundlePath); err != nil {
		return "", err
	}
	b := &bundle{id: bundleID(bundlePath), rootfs: filepath.Join(bundlePath, BundleRootfs)}
	p.bundles.mu.Lock()
	if p.bundles.m == nil {
		p.bundles.m = map[string]*bundle{}
	}
	if _, ok := p.bundles.m[bundlePath]; ok {
		p.bundles.mu.Unlock()
		return "", fmt.Errorf("bundle_path %s: an image is already mounted there: %w", bundlePath, errdefs.ErrAlreadyExists)
	}
	p.bundles.m[bundlePath] = b // reserved; removed again on failure
	p.bundles.mu.Unlock()
	ok := false
	defer func() {
		if !ok {
			p.bundles.mu.Lock()
			delete(p.bundles.m, bundlePath)
			p.bundles.mu.Unlock()
		}
	}()

	if err := mkdirAllNoSymlinks(b.rootfs); err != nil {
		return "", fmt.Errorf("bundle_path %s: %w", bundlePath, err)
	}
	if ents, err := os.ReadDir(b.rootfs); err != nil || len(ents) > 0 {
		return "", fmt.Errorf("bundle_path %s: %s is not an empty directory: %w", bundlePath, b.rootfs, errdefs.ErrAlreadyExists)
	}
	img, err := p.Pull(ctx, imageURL, opts)
	if err != nil {
		return "", err
	}
	defer func() {
		if !ok {
			p.Release(img)
		}
	}()
	ov, err := p.store.PrepareRootfs(b.id, img.Layers)
	if err != nil {
		return "", fmt.Errorf("bundle %s: %w", bundlePath, err)
	}
	ov.UserXattr = p.cfg.Unpack.OpaqueXattr == unpack.OpaqueXattrUser
	var flags uintptr = unix.MS_NODEV
	if !p.cfg.Unpack.AllowSetuid {
		flags |= unix.MS_NOSUID
	}
	if err := ov.Mount(b.rootfs, flags); err != nil {
		_ = p.store.RemoveRootfs(b.id)
		return "", fmt.Errorf("bundle %s: %w", bundlePath, err)
	}
	b.img = img
	ok = true
	p.log.Info("image mounted", "image", img.Reference, "manifest", img.ManifestDigest.String(), "rootfs", b.rootfs)
	return img.ManifestDigest.String(), nil
}

// ReleaseBundle undoes PullImage: it unmounts bundlePath/rootfs, removes
// the upper dir and drops the image's layer references (Store().GC()
// removes unreferenced layers). An unknown bundle is ErrNotFound.
func (p *Puller) ReleaseBundle(bundlePath string) error {
	p.bundles.mu.Lock()
	b := p.bundles.m[filepath.Clean(bundlePath)]
	if b != nil && b.img != nil {
		delete(p.bundles.m, filepath.Clean(bundlePath))
	} else {
		b = nil
	}
	p.bundles.mu.Unlock()
	if b == nil {
		return fmt.Errorf("bundle_path %s: no image mounted by PullImage: %w", bundlePath, errdefs.ErrNotFound)
	}
	var errs []error
	if err := unix.Unmount(b.rootfs, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		errs = append(errs, fmt.Errorf("unmounting %s: %w", b.rootfs, err))
	}
	if err := p.store.RemoveRootfs(b.id); err != nil {
		errs = append(errs, err)
	}
	p.Release(b.img)
	return errors.Join(errs...)
}

// validBundlePath accepts a clean absolute path.
func validBundlePath(p string) error {
	if p == "" || !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" || strings.ContainsRune(p, 0) || len(p) > 4096 {
		return fmt.Errorf("bundle_path %q: want a clean absolute directory path: %w", clipStr(p), errdefs.ErrInvalidArgument)
	}
	return nil
}

// bundleID names a bundle's upper/work dirs in the store.
func bundleID(path string) string {
	s := sha256.Sum256([]byte(path))
	return "bundle-" + hex.EncodeToString(s[:16])
}

// mkdirAllNoSymlinks creates dir and refuses one that resolves elsewhere
// (a symlinked component).
func mkdirAllNoSymlinks(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("resolving %s: %w", dir, err)
	}
	if real != dir {
		return fmt.Errorf("%s resolves through a symlink to %s: %w", dir, real, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ReleaseBundles releases every bundle PullImage mounted (agent shutdown).
func (p *Puller) ReleaseBundles() error {
	p.bundles.mu.Lock()
	var paths []string
	for path, b := range p.bundles.m {
		if b.img != nil {
			paths = append(paths, path)
		}
	}
	p.bundles.mu.Unlock()
	var errs []error
	for _, path := range paths {
		if err := p.ReleaseBundle(path); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
