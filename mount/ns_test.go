package mount

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// nsParentEnv carries the parent's mount namespace into the re-executed test
// binary; its presence means "you are the child, in a private namespace".
const nsParentEnv = "COVA_MOUNT_TEST_PARENT_MNTNS"

// TestInMountNamespace re-executes this test binary in a new mount namespace
// (made private before anything is mounted) and runs the TestNS* tests
// there, which mount real tmpfs and overlay file systems on temp dirs.
func TestInMountNamespace(t *testing.T) {
	if os.Getenv(nsParentEnv) != "" {
		t.Skip("already inside the test mount namespace")
	}
	requireRoot(t, "mounts tmpfs and overlay inside a private mount namespace")
	parentNS, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestNS", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), nsParentEnv+"="+parentNS)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tests in the mount namespace failed: %v\n%s", err, out)
	}
	for _, name := range []string{"TestNSEphemeral", "TestNSOverlay", "TestNSLocal", "TestNSSymlinkedMountPoint", "TestNSFSGroup", "TestNSCleanup"} {
		if !strings.Contains(string(out), "--- PASS: "+name) {
			t.Errorf("%s did not pass in the namespace:\n%s", name, out)
		}
	}
}

var nsOnce sync.Once
var nsErr error

// enterNS skips unless running as the namespaced child, and makes sure the
// namespace really is private before any test mounts something.
func enterNS(t *testing.T) {
	t.Helper()
	parent := os.Getenv(nsParentEnv)
	if parent == "" {
		t.Skip("runs only inside the private mount namespace made by TestInMountNamespace")
	}
	nsOnce.Do(func() {
		self, err := os.Readlink("/proc/self/ns/mnt")
		if err != nil {
			nsErr = err
			return
		}
		if self == parent {
			nsErr = errors.New("not in a new mount namespace; refusing to mount")
			return
		}
		nsErr = unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, "")
	})
	if nsErr != nil {
		t.Fatal(nsErr)
	}
}

type mountInfo struct {
	mountPoint, optional, fstype, source, superOpts, opts string
}

func mounts(t *testing.T) []mountInfo {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []mountInfo
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 6 || len(b) < 3 {
			continue
		}
		mp, _ := strconv.Unquote(`"` + strings.ReplaceAll(a[4], `"`, `\"`) + `"`)
		if mp == "" {
			mp = a[4]
		}
		out = append(out, mountInfo{mountPoint: mp, opts: a[5], optional: strings.Join(a[6:], " "), fstype: b[0], source: b[1], superOpts: b[2]})
	}
	return out
}

func findMount(t *testing.T, mp string) *mountInfo {
	t.Helper()
	var found *mountInfo
	for _, m := range mounts(t) {
		if m.mountPoint == mp {
			m := m
			found = &m // the last one is on top
		}
	}
	return found
}

func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	for _, m := range mounts(t) {
		if m.mountPoint == dir || strings.HasPrefix(m.mountPoint, dir+"/") {
			out = append(out, m.mountPoint)
		}
	}
	return out
}

func nsManager(t *testing.T) (*Manager, string) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	m, err := New(Options{AllowedRoots: []string{root}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Cleanup(context.Background()) })
	return m, root
}

func TestNSEphemeral(t *testing.T) {
	enterNS(t)
	ctx := context.Background()
	m, root := nsManager(t)
	mp := filepath.Join(root, "sandbox/shm")
	s := Storage{Driver: DriverEphemeral, Source: "shm", Fstype: "tmpfs", MountPoint: mp,
		Options: []string{"noexec", "nosuid", "nodev", "mode=1777", "size=1048576", "fsgid=4321", "shared"}}
	for i := 0; i < 2; i++ {
		if _, err := m.Add(ctx, "sb", s); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(mountsUnder(t, mp)); n != 1 {
		t.Fatalf("%d mounts at %s, want 1", n, mp)
	}
	mi := findMount(t, mp)
	if mi == nil || mi.fstype != "tmpfs" || mi.source != "shm" {
		t.Fatalf("mount = %+v", mi)
	}
	for _, o := range []string{"noexec", "nosuid", "nodev"} {
		if !strings.Contains(mi.opts, o) {
			t.Errorf("mount options %q lack %s", mi.opts, o)
		}
	}
	if !strings.Contains(mi.superOpts, "size=1024k") {
		t.Errorf("super options %q lack size=1024k", mi.superOpts)
	}
	if !strings.Contains(mi.optional, "shared:") {
		t.Errorf("propagation %q is not shared", mi.optional)
	}
	var st unix.Stat_t
	if err := unix.Stat(mp, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o3777 || st.Gid != 4321 {
		t.Errorf("root of the tmpfs: mode %#o gid %d, want 03777 gid 4321", st.Mode&0o7777, st.Gid)
	}

	if err := m.Remove(ctx, mp); err != nil {
		t.Fatal(err)
	}
	if findMount(t, mp) == nil {
		t.Fatal("unmounted while a user remains")
	}
	if err := m.Remove(ctx, mp); err != nil {
		t.Fatal(err)
	}
	if got := mountsUnder(t, mp); len(got) != 0 {
		t.Fatalf("still mounted: %v", got)
	}
	if _, err := os.Lstat(mp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("mount point not removed: %v", err)
	}
}

func TestNSOverlay(t *testing.T) {
	enterNS(t)
	ctx := context.Background()
	m, root := nsManager(t)
	lower := filepath.Join(root, "layers/l1")
	mustWrite(t, filepath.Join(lower, "etc/os-release"), "ID=cova\n")
	upper, work := filepath.Join(root, "c1/fs"), filepath.Join(root, "c1/work")
	mp := filepath.Join(root, "c1/rootfs")
	s := Storage{Driver: DriverOverlayFS, Source: "overlay", Fstype: "overlay", MountPoint: mp,
		DriverOptions: []string{DriverOptionOverlayCreateDir + "=" + upper, DriverOptionOverlayCreateDir + "=" + work},
		Options:       []string{"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work}}
	if _, err := m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	if mi := findMount(t, mp); mi == nil || mi.fstype != "overlay" {
		t.Fatalf("overlay not mounted: %+v", mi)
	}
	if b, err := os.ReadFile(filepath.Join(mp, "etc/os-release")); err != nil || string(b) != "ID=cova\n" {
		t.Fatalf("lower file through overlay: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(mp, "new"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(upper, "new")); err != nil {
		t.Fatalf("write did not land in upperdir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(lower, "new")); err == nil {
		t.Fatal("write landed in lowerdir")
	}
	if err := m.Remove(ctx, mp); err != nil {
		t.Fatal(err)
	}
	if got := mountsUnder(t, mp); len(got) != 0 {
		t.Fatalf("still mounted: %v", got)
	}
	// Read-only overlay of two lowers.
	lower2 := filepath.Join(root, "layers/l2")
	mustWrite(t, filepath.Join(lower2, "top"), "2")
	ro := Storage{Driver: DriverOverlayFS, Fstype: "overlay", MountPoint: filepath.Join(root, "c2/rootfs"),
		Options: []string{"lowerdir=" + lower2 + ":" + lower}}
	if _, err := m.Add(ctx, "c2", ro); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"top", "etc/os-release"} {
		if _, err := os.Stat(filepath.Join(ro.MountPoint, f)); err != nil {
			t.Errorf("%s missing from the read-only overlay: %v", f, err)
		}
	}
}

func TestNSLocal(t *testing.T) {
	enterNS(t)
	ctx := context.Background()
	m, root := nsManager(t)
	mp := filepath.Join(root, "shared/containers/sb/rootfs/local/data")
	if _, err := m.Add(ctx, "c1", Storage{Driver: DriverLocal, Source: "local", Fstype: "local", MountPoint: mp, Options: []string{"mode=0777"}}); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(mp, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o777 {
		t.Fatalf("mode = %#o, want 0777", st.Mode&0o7777)
	}
	if got := mountsUnder(t, root); len(got) != 0 {
		t.Fatalf("local storage mounted something: %v", got)
	}
}

// TestNSSymlinkedMountPoint: a symlink inside the root (as a container with
// a shared emptyDir could plant) never sends a real mount outside the root.
func TestNSSymlinkedMountPoint(t *testing.T) {
	enterNS(t)
	ctx := context.Background()
	for _, mirror := range []bool{false, true} {
		t.Run("mirror="+strconv.FormatBool(mirror), func(t *testing.T) {
			m, root := nsManager(t)
			outside := t.TempDir()
			mustMkdir(t, filepath.Join(outside, "x"))
			mustSymlink(t, outside, filepath.Join(root, "sandbox/ephemeral/vol"))
			if mirror {
				// The link's target also exists inside the root.
				mustMkdir(t, filepath.Join(root, outside, "x"))
			}
			_, err := m.Add(ctx, "c1", Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: filepath.Join(root, "sandbox/ephemeral/vol/x")})
			if got := mountsUnder(t, outside); len(got) != 0 {
				t.Fatalf("mounted outside the root: %v", got)
			}
			if mirror {
				if err != nil {
					t.Fatal(err)
				}
				if got := mountsUnder(t, filepath.Join(root, outside, "x")); len(got) != 1 {
					t.Fatalf("mount not inside the root: %v", mountsUnder(t, root))
				}
			} else if err == nil {
				t.Fatal("Add through a dangling scoped symlink succeeded")
			}
		})
	}
}

func TestNSFSGroup(t *testing.T) {
	enterNS(t)
	ctx := context.Background()
	m, root := nsManager(t)
	outside := filepath.Join(t.TempDir(), "secret")
	mustWrite(t, outside, "host")
	lower := filepath.Join(root, "layers/vol")
	mustWrite(t, filepath.Join(lower, "a/b/file"), "data")
	mustSymlink(t, outside, filepath.Join(lower, "a/escape"))
	upper, work := filepath.Join(root, "v/upper"), filepath.Join(root, "v/work")
	mustMkdir(t, upper)
	mustMkdir(t, work)
	mp := filepath.Join(root, "v/merged")
	s := Storage{Driver: DriverOverlayFS, Fstype: "overlay", MountPoint: mp,
		Options: []string{"lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work},
		FSGroup: &FSGroup{GroupID: 5555}}
	if _, err := m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rel  string
		mode uint32
	}{{"", 0o2770}, {"a", 0o2770}, {"a/b", 0o2770}, {"a/b/file", 0o660}} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(mp, tc.rel), &st); err != nil {
			t.Fatal(err)
		}
		if st.Gid != 5555 || st.Mode&tc.mode != tc.mode {
			t.Errorf("%q: gid %d mode %#o, want gid 5555 and bits %#o", tc.rel, st.Gid, st.Mode&0o7777, tc.mode)
		}
	}
	var st unix.Stat_t
	if err := unix.Stat(outside, &st); err != nil {
		t.Fatal(err)
	}
	if st.Gid == 5555 || st.Mode&0o7777 != 0o644 {
		t.Fatalf("symlink target outside the volume was changed: gid %d mode %#o", st.Gid, st.Mode&0o7777)
	}
}

func TestNSCleanup(t *testing.T) {
	enterNS(t)
	ctx := context.Background()
	m, root := nsManager(t)
	for _, rel := range []string{"a", "a/b", "a/b/c", "d"} {
		if _, err := m.Add(ctx, "sb", Storage{Driver: DriverEphemeral, Fstype: "tmpfs", MountPoint: filepath.Join(root, rel)}); err != nil {
			t.Fatal(err)
		}
	}
	if got := mountsUnder(t, root); len(got) != 4 {
		t.Fatalf("mounts = %v", got)
	}
	if err := m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if got := mountsUnder(t, root); len(got) != 0 {
		t.Fatalf("left mounted: %v", got)
	}
}
