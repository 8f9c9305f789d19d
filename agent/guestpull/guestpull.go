// Package guestpull is the image_guest_pull storage driver: the Kata shim
// asks the guest to pull a container's image (the host is not trusted with
// it) by sending a Storage with driver "image_guest_pull", the image
// reference as source and the rootfs path as mount point. The driver pulls
// with imagepull into the sandbox's shared layer store, mounts an overlay of
// the layers with a per-container upper dir at the mount point, and records
// the PullImage runtime measurement.
package guestpull

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/reference"
	"github.com/cova-project/cova/mount"
)

// DriverName is the Kata storage driver this package implements.
const DriverName = "image_guest_pull"

// driverOptionPrefix prefixes the JSON metadata in Storage.DriverOptions.
const driverOptionPrefix = "image_guest_pull="

// MeasureFunc records a runtime measurement event.
type MeasureFunc func(ctx context.Context, domain, operation, content string) error

// Driver implements mount.Driver.
type Driver struct {
	puller  *imagepull.Puller
	measure MeasureFunc
	log     *slog.Logger

	self  string // this binary, served as /pause
	opts  func(ctx context.Context) (imagepull.PullOptions, error)
	check ImageCheck

	mu      sync.Mutex
	mounted map[string]*pulled // by mount point
}

type pulled struct {
	id    string
	img   *imagepull.Image // nil for the pause rootfs
	pause string           // the bind-mounted /pause, for the pause rootfs
}

// New returns the driver; measure may be nil. self is the agent binary,
// which doubles as the pause process ("" disables pause rootfs).
func New(p *imagepull.Puller, measure MeasureFunc, self string, log *slog.Logger) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{puller: p, measure: measure, self: self, log: log, mounted: map[string]*pulled{},
		opts: func(context.Context) (imagepull.PullOptions, error) { return imagepull.PullOptions{}, nil }}
}

// WithPullOptions sets how each pull gets its signature verifier and layer
// key provider (called per pull, so a policy behind the KBS is fetched when
// first needed, not at boot). An error fails the pull.
func (d *Driver) WithPullOptions(f func(ctx context.Context) (imagepull.PullOptions, error)) *Driver {
	d.opts = f
	return d
}

// ImageCheck decides whether a pulled image may become a container's
// rootfs, knowing the manifest digest actually pulled (the agent policy's
// PulledImage rule).
type ImageCheck func(ctx context.Context, containerID, image, digest string) error

// WithImageCheck sets the check run after each pull, before the pull is
// measured and the rootfs mounted; its error fails the storage.
func (d *Driver) WithImageCheck(f ImageCheck) *Driver {
	d.check = f
	return d
}

// PullImageEvent is the content of the PullImage runtime measurement, in
// guest-components' exact format (not JCS: a space after the comma).
func PullImageEvent(image, digest string) string {
	ref, _ := json.Marshal(image)
	dg, _ := json.Marshal(digest)
	return fmt.Sprintf(`{"image":%s, "digest":%s}`, ref, dg)
}

// metadata is the JSON Kata puts in the driver option; only the container
// type matters here.
type metadata struct {
	Metadata map[string]string `json:"metadata"`
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("storage %s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// containerType returns the CRI container type from the driver options.
func containerType(opts []string) (string, error) {
	for i, o := range opts {
		if !strings.HasPrefix(o, driverOptionPrefix) {
			continue
		}
		raw := strings.TrimPrefix(o, driverOptionPrefix)
		if len(raw) > 1<<20 {
			return "", invalid(fmt.Sprintf("driver_options[%d]", i), "metadata larger than 1 MiB")
		}
		var m metadata
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			return "", invalid(fmt.Sprintf("driver_options[%d]", i), "metadata is not JSON: %v", err)
		}
		for _, k := range []string{"io.kubernetes.cri.container-type", "io.kubernetes.cri-o.ContainerType"} {
			if v := m.Metadata[k]; v != "" {
				return v, nil
			}
		}
		return "", nil
	}
	return "", nil
}

// Setup pulls s.Source and mounts its rootfs at s.MountPoint.
func (d *Driver) Setup(ctx context.Context, id string, s mount.Storage) (retErr error) {
	if s.Fstype != "" && s.Fstype != "overlay" {
		return invalid("fstype", "%q: image_guest_pull mounts an overlay", s.Fstype)
	}
	ctype, err := containerType(s.DriverOptions)
	if err != nil {
		return err
	}
	if ctype == "sandbox" {
		return d.setupPause(id, s)
	}
	if _, err := reference.Parse(s.Source); err != nil {
		return invalid("source", "%q is not an image reference: %v", s.Source, err)
	}
	start := time.Now()
	po, err := d.opts(ctx)
	if err != nil {
		return fmt.Errorf("image pull settings: %w", err)
	}
	img, err := d.puller.Pull(ctx, s.Source, po)
	if err != nil {
		return fmt.Errorf("pull %s: %w", s.Source, err)
	}
	defer func() {
		if retErr != nil {
			d.puller.Release(img)
		}
	}()
	if d.check != nil {
		if err := d.check(ctx, id, s.Source, img.ManifestDigest.String()); err != nil {
			return fmt.Errorf("image %s (%s): %w", s.Source, img.ManifestDigest, err)
		}
	}
	if d.measure != nil {
		content := PullImageEvent(s.Source, img.ManifestDigest.String())
		if err := d.measure(ctx, "github.com/confidential-containers", "PullImage", content); err != nil {
			return fmt.Errorf("record PullImage measurement for %s: %w", s.Source, err)
		}
	}
	if err := mkdirNoSymlinks(s.MountPoint); err != nil {
		return err
	}
	ov, err := d.puller.Store().PrepareRootfs(id, img.Layers)
	if err != nil {
		return fmt.Errorf("prepare rootfs of %s: %w", id, err)
	}
	if err := ov.Mount(s.MountPoint, 0); err != nil {
		_ = d.puller.Store().RemoveRootfs(id)
		return fmt.Errorf("mount rootfs of %s at %s: %w", id, s.MountPoint, err)
	}
	d.mu.Lock()
	d.mounted[s.MountPoint] = &pulled{id: id, img: img}
	d.mu.Unlock()
	d.log.Info("image rootfs mounted", "container_id", id, "image", s.Source, "manifest", img.ManifestDigest.String(),
		"layers", len(img.Layers), "seconds", time.Since(start).Seconds())
	return nil
}

// setupPause makes the pause container's rootfs without pulling anything (as
// kata uses a baked pause bundle): an empty directory whose /pause is this
// very binary, bind-mounted read-only; run as "/pause" it only waits.
func (d *Driver) setupPause(id string, s mount.Storage) error {
	if d.self == "" {
		return fmt.Errorf("image_guest_pull for the pause container: no agent binary to serve as /pause: %w", errdefs.ErrNotImplemented)
	}
	if err := mkdirNoSymlinks(s.MountPoint); err != nil {
		return err
	}
	target := filepath.Join(s.MountPoint, "pause")
	f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|unix.O_NOFOLLOW, 0o755)
	if err != nil {
		return fmt.Errorf("create %s: %w", target, err)
	}
	f.Close()
	if err := unix.Mount(d.self, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s at %s: %w", d.self, target, err)
	}
	if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		_ = unix.Unmount(target, unix.MNT_DETACH)
		return fmt.Errorf("make %s read-only: %w", target, err)
	}
	d.mu.Lock()
	d.mounted[s.MountPoint] = &pulled{id: id, pause: target}
	d.mu.Unlock()
	d.log.Info("pause rootfs ready", "container_id", id, "image", s.Source)
	return nil
}

// Teardown unmounts the rootfs, drops the container's upper dir and its
// references on the layers, and collects unreferenced layers.
func (d *Driver) Teardown(ctx context.Context, s mount.Storage) error {
	d.mu.Lock()
	p := d.mounted[s.MountPoint]
	delete(d.mounted, s.MountPoint)
	d.mu.Unlock()
	if p == nil {
		return nil
	}
	if p.pause != "" {
		if err := unix.Unmount(p.pause, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", p.pause, err)
		}
		return os.RemoveAll(s.MountPoint)
	}
	var errs []error
	if err := unix.Unmount(s.MountPoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", s.MountPoint, err))
	}
	if err := d.puller.Store().RemoveRootfs(p.id); err != nil {
		errs = append(errs, err)
	}
	d.puller.Release(p.img)
	if _, err := d.puller.Store().GC(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// mkdirNoSymlinks creates dir and refuses a path that resolves elsewhere
// (a symlinked component planted under the allowed root).
func mkdirNoSymlinks(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create mount point %s: %w", dir, err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("resolve mount point %s: %w", dir, err)
	}
	if real != filepath.Clean(dir) {
		return invalid("mount_point", "%q resolves through a symlink to %q", dir, real)
	}
	return nil
}
