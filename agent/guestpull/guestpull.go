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

	mu      sync.Mutex
	mounted map[string]*pulled // by mount point
}

type pulled struct {
	id  string
	img *imagepull.Image
}

// New returns the driver; measure may be nil.
func New(p *imagepull.Puller, measure MeasureFunc, log *slog.Logger) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{puller: p, measure: measure, log: log, mounted: map[string]*pulled{}}
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
		return fmt.Errorf("image_guest_pull for the pause (sandbox) container needs a baked pause bundle, which Cova does not ship yet: %w", errdefs.ErrNotImplemented)
	}
	if _, err := reference.Parse(s.Source); err != nil {
		return invalid("source", "%q is not an image reference: %v", s.Source, err)
	}
	start := time.Now()
	img, err := d.puller.Pull(ctx, s.Source, imagepull.PullOptions{})
	if err != nil {
		return fmt.Errorf("pull %s: %w", s.Source, err)
	}
	defer func() {
		if retErr != nil {
			d.puller.Release(img)
		}
	}()
	if d.measure != nil {
		// guest-components' exact content (not JCS: a space after the comma).
		ref, _ := json.Marshal(s.Source)
		dg, _ := json.Marshal(img.ManifestDigest.String())
		content := fmt.Sprintf(`{"image":%s, "digest":%s}`, ref, dg)
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
	d.log.Info("image pulled", "container_id", id, "image", s.Source, "manifest", img.ManifestDigest.String(),
		"layers", len(img.Layers), "seconds", time.Since(start).Seconds())
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
