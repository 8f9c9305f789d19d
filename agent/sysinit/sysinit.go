// Package sysinit holds the agent's PID 1 system setup: base mounts
// (MountBase), cgroup mounts (MountCgroups), kernel modules (LoadModules),
// the child subreaper bit for host mode (SetSubreaper) and PowerOff.
//
// Every step is guarded so it only acts when it should: the mount steps act
// when the process is PID 1 (IsPID1), or with Options.Force inside a private
// mount namespace (tests); LoadModules acts only as PID 1; PowerOff refuses
// unless the process is PID 1, and nothing can override that.
package sysinit

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// IsPID1 reports whether this process is the init process of its PID
// namespace. It is the single guard for the steps that may only run as PID 1.
func IsPID1() bool { return os.Getpid() == 1 }

// Options control where and whether a mount step acts.
type Options struct {
	// Root is the directory treated as "/"; empty means "/". It must be
	// absolute.
	Root string
	// Force makes the step act although the process is not PID 1. It exists
	// for tests and is refused unless the process runs in a mount namespace
	// of its own (not PID 1's, not its parent's) and the mount holding Root
	// does not propagate to other namespaces.
	Force bool
}

// root returns the validated root directory.
func (o Options) root() (string, error) {
	if o.Root == "" {
		return "/", nil
	}
	if !filepath.IsAbs(o.Root) {
		return "", fmt.Errorf("opts.Root %q: must be an absolute path: %w", o.Root, errdefs.ErrInvalidArgument)
	}
	return filepath.Clean(o.Root), nil
}

// shouldAct is the guard of the mount steps: it reports whether step may act
// under opts and returns the root to act in.
func shouldAct(log *slog.Logger, step string, opts Options) (string, bool, error) {
	root, err := opts.root()
	if err != nil {
		return "", false, fmt.Errorf("%s: %w", step, err)
	}
	if IsPID1() {
		return root, true, nil
	}
	if !opts.Force {
		log.Debug("not PID 1; skipping", "step", step)
		return root, false, nil
	}
	if err := checkPrivateMounts(root); err != nil {
		return "", false, fmt.Errorf("%s: Force refused: %w", step, err)
	}
	return root, true, nil
}

// checkPrivateMounts fails unless this process has a mount namespace of its
// own and the mount holding root propagates nowhere: the only places where a
// non-PID 1 process may mount.
func checkPrivateMounts(root string) error {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return fmt.Errorf("reading own mount namespace: %v: %w", err, errdefs.ErrFailedPrecondition)
	}
	compared := 0
	for _, pid := range []int{1, os.Getppid()} {
		if pid <= 0 {
			continue
		}
		other, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/mnt")
		if err != nil {
			continue // not ours to read
		}
		compared++
		if other == self {
			return fmt.Errorf("process shares the mount namespace of pid %d: %w", pid, errdefs.ErrFailedPrecondition)
		}
	}
	if compared == 0 {
		return fmt.Errorf("cannot tell whether the mount namespace is private: %w", errdefs.ErrFailedPrecondition)
	}
	resolved, err := filepath.EvalSymlinks(root)
	if err != nil {
		return fmt.Errorf("resolving root %q: %w", root, err)
	}
	mounts, err := mountinfo.GetMounts(nil)
	if err != nil {
		return fmt.Errorf("reading mountinfo: %w", err)
	}
	// The holder is the longest mount point containing root; of mounts
	// stacked on one point, the last listed is the visible one.
	var holder *mountinfo.Info
	for _, m := range mounts {
		if !pathWithin(resolved, m.Mountpoint) {
			continue
		}
		if holder == nil || len(m.Mountpoint) >= len(holder.Mountpoint) {
			holder = m
		}
	}
	if holder == nil {
		return fmt.Errorf("no mount holds %q: %w", resolved, errdefs.ErrFailedPrecondition)
	}
	if strings.Contains(holder.Optional, "shared:") {
		return fmt.Errorf("mount %s holding %q is shared and would propagate: %w", holder.Mountpoint, resolved, errdefs.ErrFailedPrecondition)
	}
	return nil
}

// SetSubreaper makes this process a child subreaper, so orphaned descendants
// (container processes whose parents exit) are reparented to it. For host
// mode, where the agent is not PID 1.
func SetSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("setting child subreaper: %w", err)
	}
	return nil
}

// PowerOff syncs file systems and powers the machine off. It refuses, doing
// nothing, unless the process is PID 1. On success it does not return.
func PowerOff(log *slog.Logger) error {
	if !IsPID1() {
		return fmt.Errorf("power off: refusing, not PID 1: %w", errdefs.ErrFailedPrecondition)
	}
	if log != nil {
		log.Info("powering off")
	}
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
		return fmt.Errorf("power off: %w", err)
	}
	return errors.New("power off: reboot(2) returned")
}

// pathWithin reports whether path is dir or below it.
func pathWithin(path, dir string) bool {
	return dir == "/" || path == dir || strings.HasPrefix(path, dir+"/")
}

func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}
