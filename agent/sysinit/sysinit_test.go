package sysinit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// The mount tests re-execute the test binary in new mount and cgroup
// namespaces (Go's Unshareflags also makes every mount private there), run
// the step under a temporary root inside the child, and check the result
// from inside it. Nothing is ever mounted in the test's own namespace.
const (
	childStepEnv    = "COVA_SYSINIT_TEST_CHILD"
	childRootEnv    = "COVA_SYSINIT_TEST_ROOT"
	childParentNS   = "COVA_SYSINIT_TEST_PARENT_NS"
	childCgroupsEnv = "COVA_SYSINIT_TEST_PROC_CGROUPS"
)

func TestMain(m *testing.M) {
	if step := os.Getenv(childStepEnv); step != "" {
		os.Exit(runChild(step))
	}
	os.Exit(m.Run())
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root and CI=true: run CI as root")
	}
	t.Skip("needs root (mount and cgroup namespaces)")
}

func nsIDs() (string, error) {
	mnt, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return "", err
	}
	cg, err := os.Readlink("/proc/self/ns/cgroup")
	if err != nil {
		return "", err
	}
	return mnt + " " + cg, nil
}

// runInNamespaces runs step in a child in new mount and cgroup namespaces
// (in cgroup cgroupFD when >= 0) and fails the test unless it succeeds.
func runInNamespaces(t *testing.T, step, root string, cgroupFD int, env ...string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := nsIDs()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childStepEnv+"="+step, childRootEnv+"="+root, childParentNS+"="+ns)
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Unshareflags: unix.CLONE_NEWNS | unix.CLONE_NEWCGROUP,
		Pdeathsig:    syscall.SIGKILL,
	}
	if cgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD = true
		cmd.SysProcAttr.CgroupFD = cgroupFD
	}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CHILD OK") {
		t.Fatalf("child %s: %v\n%s", step, err, out)
	}
	t.Logf("child %s:\n%s", step, out)
}

func TestMountGuards(t *testing.T) {
	if IsPID1() {
		t.Skip("running as PID 1")
	}
	ctx := context.Background()
	steps := []struct {
		name string
		run  func(Options) error
	}{
		{"MountBase", func(o Options) error { return MountBase(ctx, nil, o) }},
		{"MountCgroups v2", func(o Options) error { return MountCgroups(ctx, nil, true, o) }},
		{"MountCgroups v1", func(o Options) error { return MountCgroups(ctx, nil, false, o) }},
	}
	tests := []struct {
		name    string
		force   bool
		root    string // "" means a fresh temp dir
		wantErr error
	}{
		{"not PID 1 does nothing", false, "", nil},
		{"Force refused in a shared mount namespace", true, "", errdefs.ErrFailedPrecondition},
		{"relative root", true, "relative/root", errdefs.ErrInvalidArgument},
	}
	for _, s := range steps {
		for _, tc := range tests {
			t.Run(s.name+"/"+tc.name, func(t *testing.T) {
				root := tc.root
				if root == "" {
					root = t.TempDir()
				}
				err := s.run(Options{Root: root, Force: tc.force})
				if (tc.wantErr == nil) != (err == nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if tc.root == "" {
					if ents, _ := os.ReadDir(root); len(ents) != 0 {
						t.Fatalf("step touched the root: %v", ents)
					}
				}
			})
		}
	}
}

func TestPowerOffRefusesWhenNotPID1(t *testing.T) {
	if IsPID1() {
		t.Skip("running as PID 1: this test would power the machine off")
	}
	if err := PowerOff(nil); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("PowerOff = %v, want ErrFailedPrecondition", err)
	}
}

func TestMountBaseInNamespace(t *testing.T) {
	requireRoot(t)
	runInNamespaces(t, "base", t.TempDir(), -1)
}

func TestMountCgroup2InNamespace(t *testing.T) {
	requireRoot(t)
	// Run the child in a cgroup this test creates, so the child's cgroup
	// namespace (and the cgroup2 mount it makes) is rooted there and any
	// write lands in the test's own cgroup.
	mnts, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup2"))
	if err != nil {
		t.Fatal(err)
	}
	if len(mnts) == 0 {
		t.Skip("the host has no cgroup2 mount")
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var cg string
	for _, line := range strings.Split(string(self), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			cg = rest
		}
	}
	if cg == "" {
		t.Skip("not in a cgroup2 hierarchy")
	}
	sub := filepath.Join(mnts[0].Mountpoint, cg, fmt.Sprintf("cova-sysinit-test-%d", os.Getpid()))
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Skipf("cannot create a test cgroup: %v", err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50; i++ {
			if err := os.Remove(sub); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Errorf("could not remove test cgroup %s", sub)
	})
	fd, err := unix.Open(sub, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	runInNamespaces(t, "cgroup2", t.TempDir(), fd)
}

func TestMountCgroup1InNamespace(t *testing.T) {
	requireRoot(t)
	// Only mirror hierarchies the host already has: a new v1 mount of a
	// controller the host has not mounted would take it away from cgroup2
	// for the test's duration. The memory hierarchy is left out so nothing
	// can write to a memory cgroup this test does not own.
	data, err := os.ReadFile("/proc/cgroups")
	if err != nil {
		t.Skipf("no /proc/cgroups: %v", err)
	}
	var kept []string
	hasDevices := false
	for _, c := range parseProcCgroups(data) {
		if c.enabled && c.hierarchy != 0 && c.name != "memory" {
			kept = append(kept, fmt.Sprintf("%s\t%d\t1\t1", c.name, c.hierarchy))
			hasDevices = hasDevices || c.name == "devices"
		}
	}
	if !hasDevices {
		t.Skip("the host has no cgroup v1 devices hierarchy to mirror")
	}
	p := filepath.Join(t.TempDir(), "cgroups")
	if err := os.WriteFile(p, []byte("#subsys_name\thierarchy\tnum_cgroups\tenabled\n"+strings.Join(kept, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	runInNamespaces(t, "cgroup1", t.TempDir(), -1, childCgroupsEnv+"="+p)
}

// runChild is the namespaced side of the mount tests. It prints CHILD OK
// and returns 0 when every check passes.
func runChild(step string) int {
	fail := func(format string, args ...any) int {
		fmt.Fprintf(os.Stderr, "FAIL: "+format+"\n", args...)
		return 1
	}
	// Refuse to mount anything unless the namespaces are really new and
	// nothing propagates back to the host.
	ns, err := nsIDs()
	if err != nil {
		return fail("reading namespaces: %v", err)
	}
	parent := strings.Fields(os.Getenv(childParentNS))
	mine := strings.Fields(ns)
	if len(parent) != 2 || parent[0] == mine[0] || parent[1] == mine[1] {
		return fail("UNSAFE: namespaces %q not new (parent %q)", mine, parent)
	}
	all, err := mountinfo.GetMounts(nil)
	if err != nil {
		return fail("mountinfo: %v", err)
	}
	for _, m := range all {
		if strings.Contains(m.Optional, "shared:") {
			return fail("UNSAFE: %s is shared", m.Mountpoint)
		}
	}

	root := os.Getenv(childRootEnv)
	if root == "" || root == "/" {
		return fail("UNSAFE: root %q", root)
	}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts := Options{Root: root, Force: true}
	var check func() error
	var run func() error
	switch step {
	case "base":
		// devtmpfs is one kernel-wide instance, the same as the host's
		// /dev: give the child its own /dev so MountBase's mkdirs and
		// symlinks stay in the test (this also covers "already mounted").
		dev := filepath.Join(root, "dev")
		if err := os.MkdirAll(dev, 0o755); err != nil {
			return fail("%v", err)
		}
		if err := unix.Mount("tmpfs", dev, "tmpfs", 0, "mode=0755"); err != nil {
			return fail("pre-mounting /dev: %v", err)
		}
		run = func() error { return MountBase(ctx, log, opts) }
		check = func() error { return checkBase(root) }
	case "cgroup2":
		run = func() error { return MountCgroups(ctx, log, true, opts) }
		check = func() error { return checkCgroup2(root) }
	case "cgroup1":
		p := os.Getenv(childCgroupsEnv)
		run = func() error { return mountCgroups(ctx, log, false, opts, p) }
		check = func() error { return checkCgroup1(root, p) }
	default:
		return fail("unknown step %q", step)
	}
	if err := run(); err != nil {
		return fail("%s: %v", step, err)
	}
	if err := check(); err != nil {
		return fail("%s: %v", step, err)
	}
	before, err := mountinfo.GetMounts(mountinfo.PrefixFilter(root))
	if err != nil {
		return fail("%v", err)
	}
	if err := run(); err != nil {
		return fail("%s second run: %v", step, err)
	}
	after, err := mountinfo.GetMounts(mountinfo.PrefixFilter(root))
	if err != nil {
		return fail("%v", err)
	}
	if len(after) != len(before) {
		return fail("%s second run: %d mounts under the root, was %d", step, len(after), len(before))
	}
	fmt.Printf("%d mounts under the root\n", len(after))
	fmt.Println("CHILD OK")
	return 0
}

// mountAt returns the topmost mount on path.
func mountAt(path string) (*mountinfo.Info, error) {
	all, err := mountinfo.GetMounts(func(m *mountinfo.Info) (bool, bool) { return m.Mountpoint != path, false })
	if err != nil {
		return nil, err
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("nothing mounted on %s", path)
	}
	return all[len(all)-1], nil
}

func hasOpts(list string, want ...string) bool {
	have := strings.Split(list, ",")
	for _, w := range want {
		if !slices.Contains(have, w) {
			return false
		}
	}
	return true
}

func checkBase(root string) error {
	tests := []struct {
		target, fstype string
		opts, vfsOpts  []string
		mode           os.FileMode // of the mounted root, when non-zero
	}{
		{"/proc", "proc", []string{"nosuid", "nodev", "noexec"}, nil, 0},
		{"/sys", "sysfs", []string{"nosuid", "nodev", "noexec"}, nil, 0},
		{"/dev", "tmpfs", nil, nil, 0}, // the child's own, left alone
		{"/dev/pts", "devpts", []string{"nosuid", "noexec"}, []string{"mode=620", "ptmxmode=666"}, 0},
		{"/dev/shm", "tmpfs", []string{"nosuid", "nodev"}, nil, os.ModeDir | os.ModeSticky | 0o777},
		{"/run", "tmpfs", []string{"nosuid", "nodev"}, nil, os.ModeDir | 0o755},
	}
	for _, tc := range tests {
		p := filepath.Join(root, tc.target)
		m, err := mountAt(p)
		if err != nil {
			return err
		}
		if m.FSType != tc.fstype || !hasOpts(m.Options, tc.opts...) || !hasOpts(m.VFSOptions, tc.vfsOpts...) {
			return fmt.Errorf("%s: got %s %s / %s, want %s with %v / %v", tc.target, m.FSType, m.Options, m.VFSOptions, tc.fstype, tc.opts, tc.vfsOpts)
		}
		if tc.mode != 0 {
			if fi, err := os.Stat(p); err != nil || fi.Mode() != tc.mode {
				return fmt.Errorf("%s: mode %v (%v), want %v", tc.target, fi.Mode(), err, tc.mode)
			}
		}
	}
	links := map[string]string{
		"/dev/ptmx": "pts/ptmx", "/dev/fd": "/proc/self/fd",
		"/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	}
	for l, want := range links {
		got, err := os.Readlink(filepath.Join(root, l))
		if err != nil || got != want {
			return fmt.Errorf("%s -> %q (%v), want %q", l, got, err, want)
		}
	}
	// The new devpts instance hands out terminals through the ptmx link.
	f, err := os.OpenFile(filepath.Join(root, "dev/ptmx"), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("opening ptmx: %w", err)
	}
	n, err := unix.IoctlGetInt(int(f.Fd()), unix.TIOCGPTN)
	f.Close()
	if err != nil {
		return fmt.Errorf("TIOCGPTN: %w", err)
	}
	fmt.Printf("got pty %d from the new devpts instance\n", n)
	return nil
}

func checkCgroup2(root string) error {
	dir := filepath.Join(root, cgroupDir)
	m, err := mountAt(dir)
	if err != nil {
		return err
	}
	if m.FSType != "cgroup2" || !hasOpts(m.Options, "nosuid", "nodev", "noexec") {
		return fmt.Errorf("%s: got %s %s", dir, m.FSType, m.Options)
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.controllers")); err != nil {
		return err
	}
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return err
	}
	// The namespace root is the test's cgroup, holding only this child.
	if got := strings.Fields(string(procs)); !slices.Equal(got, []string{strconv.Itoa(os.Getpid())}) {
		return fmt.Errorf("cgroup.procs = %q, want only pid %d", got, os.Getpid())
	}
	return nil
}

func checkCgroup1(root, procCgroups string) error {
	data, err := os.ReadFile(procCgroups)
	if err != nil {
		return err
	}
	groups, err := cgroupGroups(parseProcCgroups(data))
	if err != nil {
		return err
	}
	dir := filepath.Join(root, cgroupDir)
	m, err := mountAt(dir)
	if err != nil {
		return err
	}
	if m.FSType != "tmpfs" || !hasOpts(m.Options, "ro", "nosuid", "nodev", "noexec") {
		return fmt.Errorf("%s: got %s %s, want a read-only tmpfs", dir, m.FSType, m.Options)
	}
	for _, g := range groups {
		name := strings.Join(g, ",")
		m, err := mountAt(filepath.Join(dir, name))
		if err != nil {
			return err
		}
		if m.FSType != "cgroup" || !hasOpts(m.VFSOptions, g...) {
			return fmt.Errorf("%s: got %s %s, want cgroup with %v", name, m.FSType, m.VFSOptions, g)
		}
		if len(g) > 1 {
			for _, c := range g {
				if l, err := os.Readlink(filepath.Join(dir, c)); err != nil || l != name {
					return fmt.Errorf("%s -> %q (%v), want %q", c, l, err, name)
				}
			}
		}
		fmt.Printf("mounted cgroup %s\n", name)
	}
	// The tmpfs is read-only now.
	if err := os.Mkdir(filepath.Join(dir, "x"), 0o755); !errors.Is(err, unix.EROFS) {
		return fmt.Errorf("mkdir in %s = %v, want EROFS", dir, err)
	}
	return nil
}
