package sysinit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

const (
	cgroupDir   = "/sys/fs/cgroup"
	cgroupFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC | unix.MS_RELATIME
)

// coMounted are controllers mounted together on a fresh kernel, as systemd
// and kata lay them out; each member also gets a symlink to the group.
var coMounted = [][]string{
	{"cpu", "cpuacct"},
	{"net_cls", "net_prio"},
}

// MountCgroups mounts the cgroup file systems under opts.Root:
//
//   - unified: cgroup2 on /sys/fs/cgroup (with nsdelegate when the kernel
//     takes it), then every available controller is enabled in the root's
//     cgroup.subtree_control (best effort: failures are logged).
//   - v1: a tmpfs on /sys/fs/cgroup, one cgroup mount per hierarchy of the
//     enabled controllers in /proc/cgroups (controllers already sharing a
//     hierarchy stay together; on a fresh kernel cpu,cpuacct and
//     net_cls,net_prio are co-mounted, with per-controller symlinks), then
//     the tmpfs is remounted read-only. The devices controller is required.
//
// Nothing is done if /sys/fs/cgroup is already a mount point. Like MountBase
// it acts only as PID 1 or with opts.Force in a private mount namespace.
func MountCgroups(ctx context.Context, log *slog.Logger, unified bool, opts Options) error {
	return mountCgroups(ctx, orDiscard(log), unified, opts, "/proc/cgroups")
}

// mountCgroups is MountCgroups reading the controller list from procCgroups.
func mountCgroups(ctx context.Context, log *slog.Logger, unified bool, opts Options, procCgroups string) error {
	root, ok, err := shouldAct(log, "mounting cgroups", opts)
	if err != nil || !ok {
		return err
	}
	target := filepath.Join(root, cgroupDir)
	if err := os.MkdirAll(target, 0o755); err != nil {
		return fmt.Errorf("mount cgroups on %s: creating mount point: %w", target, err)
	}
	mounted, err := isMountPoint(target)
	if err != nil {
		return fmt.Errorf("mount cgroups on %s: checking mount point: %w", target, err)
	}
	if mounted {
		log.Debug("cgroups already mounted; skipping", "target", target)
		return nil
	}
	if unified {
		return mountCgroup2(log, target)
	}
	data, err := os.ReadFile(procCgroups)
	if err != nil {
		return fmt.Errorf("mount cgroups: reading controller list: %w", err)
	}
	groups, err := cgroupGroups(parseProcCgroups(data))
	if err != nil {
		return fmt.Errorf("mount cgroups: %w", err)
	}
	return mountCgroup1(ctx, log, target, groups)
}

func mountCgroup2(log *slog.Logger, target string) error {
	err := unix.Mount("cgroup2", target, "cgroup2", cgroupFlags, "nsdelegate")
	if errors.Is(err, unix.EINVAL) {
		log.Debug("cgroup2 refused nsdelegate; mounting without it")
		err = unix.Mount("cgroup2", target, "cgroup2", cgroupFlags, "")
	}
	if err != nil {
		return fmt.Errorf("mount cgroup2 on %s: %w", target, err)
	}
	log.Debug("mounted cgroup2", "target", target)
	enableControllers(log, target)
	return nil
}

// enableControllers enables every controller of the cgroup at dir for its
// children, all at once or else one by one; failures are only logged (the
// cgroup manager enables what it needs when it creates a cgroup).
func enableControllers(log *slog.Logger, dir string) {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		log.Warn("reading cgroup controllers", "err", err)
		return
	}
	ctrls := strings.Fields(string(data))
	if len(ctrls) == 0 {
		return
	}
	control := filepath.Join(dir, "cgroup.subtree_control")
	all := "+" + strings.Join(ctrls, " +")
	if err := writeExisting(control, all); err == nil {
		return
	}
	for _, c := range ctrls {
		if err := writeExisting(control, "+"+c); err != nil {
			log.Warn("enabling cgroup controller", "controller", c, "err", err)
		}
	}
}

// writeExisting writes s to an existing file (a cgroup or sysfs knob).
func writeExisting(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// cgroupController is one line of /proc/cgroups.
type cgroupController struct {
	name      string
	hierarchy int
	enabled   bool
}

// parseProcCgroups parses /proc/cgroups ("#subsys_name hierarchy num_cgroups
// enabled"), skipping the header and malformed lines.
func parseProcCgroups(data []byte) []cgroupController {
	var out []cgroupController
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || strings.HasPrefix(f[0], "#") || !validController(f[0]) {
			continue
		}
		h, err1 := strconv.Atoi(f[1])
		_, err2 := strconv.ParseUint(f[2], 10, 64)
		en, err3 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil || err3 != nil || h < 0 {
			continue
		}
		out = append(out, cgroupController{name: f[0], hierarchy: h, enabled: en != 0})
	}
	return out
}

func validController(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '_' {
			return false
		}
	}
	return true
}

// cgroupGroups turns the enabled controllers into mount groups, each sorted
// by name. Controllers sharing a non-zero hierarchy id are already mounted
// together somewhere and must stay together; unmounted ones (id 0) follow
// coMounted. It fails without the devices controller, which container
// isolation needs.
func cgroupGroups(ctrls []cgroupController) ([][]string, error) {
	byHierarchy := map[int][]string{}
	free := map[string]bool{}
	hasDevices := false
	for _, c := range ctrls {
		if !c.enabled {
			continue
		}
		if c.name == "devices" {
			hasDevices = true
		}
		if c.hierarchy == 0 {
			free[c.name] = true
			continue
		}
		byHierarchy[c.hierarchy] = append(byHierarchy[c.hierarchy], c.name)
	}
	if !hasDevices {
		return nil, fmt.Errorf("the devices cgroup controller is missing or disabled: %w", errdefs.ErrFailedPrecondition)
	}
	var groups [][]string
	for _, g := range byHierarchy {
		groups = append(groups, g)
	}
	for _, pair := range coMounted {
		var g []string
		for _, n := range pair {
			if free[n] {
				g = append(g, n)
			}
		}
		if len(g) > 1 {
			for _, n := range g {
				delete(free, n)
			}
			groups = append(groups, g)
		}
	}
	for n := range free {
		groups = append(groups, []string{n})
	}
	for _, g := range groups {
		sort.Strings(g)
	}
	sort.Slice(groups, func(i, j int) bool { return groups[i][0] < groups[j][0] })
	return groups, nil
}

func mountCgroup1(ctx context.Context, log *slog.Logger, target string, groups [][]string) error {
	if err := unix.Mount("tmpfs", target, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", target, err)
	}
	for _, g := range groups {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("mounting cgroups: %w", err)
		}
		name := strings.Join(g, ",")
		dir := filepath.Join(target, name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return fmt.Errorf("mount cgroup %s: creating %s: %w", name, dir, err)
		}
		if err := unix.Mount("cgroup", dir, "cgroup", cgroupFlags, name); err != nil {
			return fmt.Errorf("mount cgroup %s on %s: %w", name, dir, err)
		}
		if len(g) > 1 {
			for _, c := range g {
				if err := os.Symlink(name, filepath.Join(target, c)); err != nil {
					return fmt.Errorf("mount cgroup %s: symlink %s: %w", name, c, err)
				}
			}
		}
		log.Debug("mounted cgroup", "controllers", name)
	}
	// Hierarchical memory accounting; always on (and the knob a no-op)
	// since Linux 5.16.
	if err := setUseHierarchy(filepath.Join(target, "memory")); err != nil {
		log.Warn("enabling memory.use_hierarchy", "err", err)
	}
	if err := unix.Mount("", target, "", unix.MS_REMOUNT|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0755"); err != nil {
		return fmt.Errorf("remount %s read-only: %w", target, err)
	}
	return nil
}

// setUseHierarchy writes 1 to memoryDir/memory.use_hierarchy unless it
// already reads 1 or the memory controller is not mounted there.
func setUseHierarchy(memoryDir string) error {
	p := filepath.Join(memoryDir, "memory.use_hierarchy")
	cur, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(cur)) == "1" {
		return nil
	}
	return writeExisting(p, "1")
}
