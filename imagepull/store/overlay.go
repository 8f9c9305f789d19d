package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Overlay describes an overlay mount of image layers.
type Overlay struct {
	// Lower lists the layer directories, top (last layer) first, as
	// overlayfs's lowerdir wants them.
	Lower []string
	// Upper and Work are the writable dirs; both empty for a read-only
	// overlay.
	Upper, Work string
	// UserXattr adds the userxattr option (layers unpacked with
	// user.overlay.* xattrs, for unprivileged overlay).
	UserXattr bool
}

// maxOptions is what mount(2) copies of the data argument (one page).
const maxOptions = 4095

// NewOverlay builds an Overlay from layer directories in image order
// (bottom first), as Image.Layers lists them.
func NewOverlay(layers []string, upper, work string) (Overlay, error) {
	if len(layers) == 0 {
		return Overlay{}, fmt.Errorf("overlay: no layers: %w", errdefs.ErrInvalidArgument)
	}
	o := Overlay{Upper: upper, Work: work}
	for i := len(layers) - 1; i >= 0; i-- {
		o.Lower = append(o.Lower, layers[i])
	}
	if err := o.validate(); err != nil {
		return Overlay{}, err
	}
	return o, nil
}

func (o Overlay) validate() error {
	check := func(what, p string) error {
		if !filepath.IsAbs(p) || strings.ContainsAny(p, ",:\\\n") {
			return fmt.Errorf("overlay %s %q: must be absolute without ',', ':' or '\\': %w", what, p, errdefs.ErrInvalidArgument)
		}
		return nil
	}
	for _, l := range o.Lower {
		if err := check("lower dir", l); err != nil {
			return err
		}
	}
	if (o.Upper == "") != (o.Work == "") {
		return fmt.Errorf("overlay: upper and work dirs go together: %w", errdefs.ErrInvalidArgument)
	}
	if o.Upper != "" {
		if err := check("upper dir", o.Upper); err != nil {
			return err
		}
		if err := check("work dir", o.Work); err != nil {
			return err
		}
	}
	return nil
}

// Options returns the mount(2) data string. It fails with
// ErrFailedPrecondition when the string does not fit in a page; Mount then
// uses the new mount API instead.
func (o Overlay) Options() (string, error) {
	if err := o.validate(); err != nil {
		return "", err
	}
	opts := "lowerdir=" + strings.Join(o.Lower, ":")
	if o.Upper != "" {
		opts += ",upperdir=" + o.Upper + ",workdir=" + o.Work
	}
	if o.UserXattr {
		opts += ",userxattr"
	}
	if len(opts) > maxOptions {
		return opts, fmt.Errorf("overlay options are %d bytes, over the %d byte limit of mount(2): %w", len(opts), maxOptions, errdefs.ErrFailedPrecondition)
	}
	return opts, nil
}

// Mount mounts the overlay at target. It uses fsopen/fsconfig with one
// "lowerdir+" per layer (Linux 6.8+, no length limit) and falls back to
// mount(2) with Options. flags are MS_* flags for the mount(2) fallback and
// the matching MOUNT_ATTR_* for the new API (MS_RDONLY, MS_NODEV, MS_NOSUID
// are honoured).
func (o Overlay) Mount(target string, flags uintptr) error {
	if err := o.validate(); err != nil {
		return err
	}
	err := o.mountFS(target, flags)
	if err == nil {
		return nil
	}
	if !errors.Is(err, errNoNewAPI) {
		return err
	}
	opts, err := o.Options()
	if err != nil {
		return err
	}
	if err := unix.Mount("overlay", target, "overlay", flags, opts); err != nil {
		return fmt.Errorf("mounting overlay at %s: %w", target, err)
	}
	return nil
}

var errNoNewAPI = errors.New("new mount API or lowerdir+ unavailable")

func (o Overlay) mountFS(target string, flags uintptr) error {
	fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return errNoNewAPI
	}
	defer unix.Close(fsfd)
	// lowerdir+ takes the layers top first, one call each.
	for i, l := range o.Lower {
		if err := unix.FsconfigSetString(fsfd, "lowerdir+", l); err != nil {
			if i == 0 && errors.Is(err, unix.EINVAL) {
				return errNoNewAPI
			}
			return fmt.Errorf("overlay lowerdir+ %s: %w", l, err)
		}
	}
	if o.Upper != "" {
		if err := unix.FsconfigSetString(fsfd, "upperdir", o.Upper); err != nil {
			return fmt.Errorf("overlay upperdir: %w", err)
		}
		if err := unix.FsconfigSetString(fsfd, "workdir", o.Work); err != nil {
			return fmt.Errorf("overlay workdir: %w", err)
		}
	}
	if o.UserXattr {
		if err := unix.FsconfigSetFlag(fsfd, "userxattr"); err != nil {
			return fmt.Errorf("overlay userxattr: %w", err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		if errors.Is(err, unix.EINVAL) {
			// Kernels before 6.5 run overlay through the legacy fs_context
			// shim: it accepts lowerdir+ per call and only refuses it here.
			return errNoNewAPI
		}
		return fmt.Errorf("creating overlay: %w", err)
	}
	var attr int
	if flags&unix.MS_RDONLY != 0 {
		attr |= unix.MOUNT_ATTR_RDONLY
	}
	if flags&unix.MS_NODEV != 0 {
		attr |= unix.MOUNT_ATTR_NODEV
	}
	if flags&unix.MS_NOSUID != 0 {
		attr |= unix.MOUNT_ATTR_NOSUID
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, attr)
	if err != nil {
		return fmt.Errorf("overlay fsmount: %w", err)
	}
	defer unix.Close(mfd)
	if err := unix.MoveMount(mfd, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("moving overlay to %s: %w", target, err)
	}
	return nil
}

// validID accepts container ids that are safe as one path component.
func validID(id string) error {
	if id == "" || len(id) > 128 || id == "." || id == ".." {
		return fmt.Errorf("container id %q: %w", id, errdefs.ErrInvalidArgument)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("container id %q: only [A-Za-z0-9._-] allowed: %w", id, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// PrepareRootfs creates the per-container upper and work dirs for id and
// returns the overlay of layers (bottom first) with them.
func (s *Store) PrepareRootfs(id string, layers []string) (Overlay, error) {
	if err := validID(id); err != nil {
		return Overlay{}, err
	}
	base := filepath.Join(s.root, "containers", id)
	if err := os.Mkdir(base, 0o700); err != nil {
		if errors.Is(err, os.ErrExist) {
			return Overlay{}, fmt.Errorf("container %s rootfs dirs: %w", id, errdefs.ErrAlreadyExists)
		}
		return Overlay{}, fmt.Errorf("container %s rootfs dirs: %w", id, err)
	}
	upper, work := filepath.Join(base, "upper"), filepath.Join(base, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			os.RemoveAll(base)
			return Overlay{}, fmt.Errorf("container %s rootfs dirs: %w", id, err)
		}
	}
	return NewOverlay(layers, upper, work)
}

// RemoveRootfs deletes the upper and work dirs of id (after unmounting).
func (s *Store) RemoveRootfs(id string) error {
	if err := validID(id); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(s.root, "containers", id)); err != nil {
		return fmt.Errorf("removing container %s rootfs dirs: %w", id, err)
	}
	return nil
}
