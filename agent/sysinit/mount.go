package sysinit

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// mountSpec is one file system to mount; target is relative to the root.
type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// baseMounts are the file systems PID 1 mounts at boot, in order.
var baseMounts = []mountSpec{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"},
	{"shm", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
}

// devLinks are the symlinks created in /dev when missing.
var devLinks = []struct{ name, target string }{
	{"/dev/ptmx", "pts/ptmx"},
	{"/dev/fd", "/proc/self/fd"},
	{"/dev/stdin", "/proc/self/fd/0"},
	{"/dev/stdout", "/proc/self/fd/1"},
	{"/dev/stderr", "/proc/self/fd/2"},
}

// MountBase mounts proc, sysfs, devtmpfs, devpts (a new instance), /dev/shm
// and /run under opts.Root and creates the /dev/ptmx, /dev/fd and
// /dev/std{in,out,err} symlinks that are missing. Mount points that are
// already mounted are left alone, so it can run twice. It acts only as PID 1
// (or with opts.Force in a private mount namespace) and returns nil without
// doing anything otherwise. Errors name the mount or link that failed.
func MountBase(ctx context.Context, log *slog.Logger, opts Options) error {
	log = orDiscard(log)
	root, ok, err := shouldAct(log, "mounting base file systems", opts)
	if err != nil || !ok {
		return err
	}
	for _, m := range baseMounts {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("mounting base file systems: %w", err)
		}
		if err := mountOnce(log, root, m); err != nil {
			return err
		}
	}
	for _, l := range devLinks {
		if err := symlinkIfMissing(filepath.Join(root, l.name), l.target); err != nil {
			return err
		}
	}
	return nil
}

// mountOnce creates m's mount point under root and mounts m there unless
// something is already mounted on it.
func mountOnce(log *slog.Logger, root string, m mountSpec) error {
	target := filepath.Join(root, m.target)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount %s on %s: creating mount point: %w", m.fstype, target, err)
	}
	mounted, err := isMountPoint(target)
	if err != nil {
		return fmt.Errorf("mount %s on %s: checking mount point: %w", m.fstype, target, err)
	}
	if mounted {
		log.Debug("already mounted; skipping", "target", target, "fstype", m.fstype)
		return nil
	}
	if err := unix.Mount(m.source, target, m.fstype, m.flags, m.data); err != nil {
		return fmt.Errorf("mount %s on %s (options %q): %w", m.fstype, target, m.data, err)
	}
	log.Debug("mounted", "target", target, "fstype", m.fstype)
	return nil
}

// isMountPoint reports whether something is mounted on p. It works before
// /proc is mounted: openat2 (Linux 5.6+) or a device comparison answers
// first, and without procfs an unsure answer means "not mounted".
func isMountPoint(p string) (bool, error) {
	if mounted, sure, err := mountinfo.MountedFast(p); err == nil && sure {
		return mounted, nil
	}
	mounted, err := mountinfo.Mounted(p)
	if err != nil && errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat("/proc/self/mountinfo"); serr != nil {
			return false, nil
		}
	}
	return mounted, err
}

// symlinkIfMissing creates link -> target unless something exists at link.
func symlinkIfMissing(link, target string) error {
	if _, err := os.Lstat(link); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("symlink %s: %w", link, err)
	}
	if err := os.Symlink(target, link); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("symlink %s -> %s: %w", link, target, err)
	}
	return nil
}
