package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"
)

// Mounter performs mount(2) and umount2(2). The Manager passes targets of
// the form /proc/self/fd/N (a handle it holds open for the duration of the
// call) so that the kernel mounts on exactly the directory it resolved.
type Mounter interface {
	Mount(source, target, fstype string, flags uintptr, data string) error
	Unmount(target string, flags int) error
}

// SyscallMounter is the real Mounter.
type SyscallMounter struct{}

// Mount calls mount(2).
func (SyscallMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	return unix.Mount(source, target, fstype, flags, data)
}

// Unmount calls umount2(2).
func (SyscallMounter) Unmount(target string, flags int) error {
	return unix.Unmount(target, flags)
}

func fdPath(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }

// openRoot opens an allowed root, creating it if needed (roots are trusted
// configuration, not host input).
func openRoot(root string) (*os.File, error) {
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("creating %s: %w", root, err)
	}
	f, err := os.OpenFile(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", root, err)
	}
	return f, nil
}

// mkdirIn creates pl (and its parents) inside its root and returns a
// directory handle. Symlinks on the way are resolved as if the root were "/".
func mkdirIn(pl place, mode os.FileMode) (*os.File, error) {
	root, err := openRoot(pl.root)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	dir, err := pathrs.MkdirAllHandle(root, pl.rel, mode)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", pl.abs, err)
	}
	return dir, nil
}

// openIn opens pl inside its root and returns an O_PATH handle.
func openIn(pl place) (*os.File, error) {
	root, err := openRoot(pl.root)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	f, err := pathrs.OpenatInRoot(root, pl.rel)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", pl.abs, err)
	}
	return f, nil
}

// openDirIn opens pl inside its root as a readable directory.
func openDirIn(pl place) (*os.File, error) {
	h, err := openIn(pl)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	d, err := pathrs.Reopen(h, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", pl.abs, err)
	}
	return d, nil
}

// isMountRoot reports whether f is the root of a mount.
func isMountRoot(f *os.File) (bool, error) {
	var stx unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, 0, &stx); err != nil {
		return false, err
	}
	if stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return false, errors.New("kernel does not report STATX_ATTR_MOUNT_ROOT")
	}
	return stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0, nil
}

// mountAt creates the mount point and mounts on it through a handle, then
// applies propagation flags to the new mount.
func (m *Manager) mountAt(pl place, source, fstype string, flags uintptr, data string) error {
	dir, err := mkdirIn(pl, 0o755)
	if err != nil {
		return err
	}
	err = m.mounter.Mount(source, fdPath(dir), fstype, flags&^uintptr(propagationFlags), data)
	_ = dir.Close()
	if err != nil {
		return fmt.Errorf("mounting %s (%s) on %s: %w", source, fstype, pl.abs, err)
	}
	if prop := flags & propagationFlags; prop != 0 {
		// The handle taken before the mount refers to the directory
		// underneath it; reopen to get the new mount's root.
		h, err := openIn(pl)
		if err == nil {
			err = m.mounter.Mount("", fdPath(h), "", flags&uintptr(propagationFlags|unix.MS_REC|unix.MS_SILENT), "")
			_ = h.Close()
		}
		if err != nil {
			_ = m.unmountAt(pl)
			return fmt.Errorf("setting propagation of %s: %w", pl.abs, err)
		}
	}
	return nil
}

// unmountAt detaches the mount at pl (resolved inside its root, so a symlink
// swapped in later cannot redirect the unmount) and removes the mount point
// directory if it is empty.
func (m *Manager) unmountAt(pl place) error {
	h, err := openIn(pl)
	if err != nil {
		return err
	}
	// The handle itself keeps the mount busy, hence MNT_DETACH; the mount
	// goes away as soon as the handle is closed.
	err = m.mounter.Unmount(fdPath(h), unix.MNT_DETACH)
	_ = h.Close()
	if errors.Is(err, unix.EINVAL) {
		m.log.Warn("storage was not mounted any more", "mount_point", pl.abs)
		err = nil
	}
	if err != nil {
		return fmt.Errorf("unmounting %s: %w", pl.abs, err)
	}
	m.removeEmptyDir(pl)
	return nil
}

// removeEmptyDir removes the mount point directory if it is empty.
func (m *Manager) removeEmptyDir(pl place) {
	parentRel, name := filepath.Split(pl.rel)
	var parent *os.File
	var err error
	if parentRel == "" {
		parent, err = openRoot(pl.root)
	} else {
		parent, err = openIn(place{root: pl.root, rel: filepath.Clean(parentRel), abs: filepath.Dir(pl.abs)})
	}
	if err != nil {
		return
	}
	defer parent.Close()
	if err := unix.Unlinkat(int(parent.Fd()), name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		m.log.Debug("mount point left in place", "mount_point", pl.abs, "error", err)
	}
}
