package mount

import (
	"context"
	"errors"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func lstat(p string) (os.FileInfo, error) { return os.Lstat(p) }

type fakeDriver struct {
	mu        sync.Mutex
	setups    []string
	teardowns []string
}

func (d *fakeDriver) Setup(_ context.Context, id string, s Storage) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.setups = append(d.setups, id+":"+s.MountPoint)
	return nil
}

func (d *fakeDriver) Teardown(_ context.Context, s Storage) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.teardowns = append(d.teardowns, s.MountPoint)
	return nil
}

func shm(mp string) Storage {
	return Storage{Driver: DriverEphemeral, Source: "shm", Fstype: "tmpfs", MountPoint: mp,
		Options: []string{"noexec", "nosuid", "nodev", "mode=1777", "size=65536"}}
}

func TestRefcount(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t, nil)
	mp := e.p("sandbox/shm")

	for i, id := range []string{"sb", "c1", "c2"} {
		got, err := e.m.Add(ctx, id, shm(mp))
		if err != nil {
			t.Fatalf("Add #%d: %v", i, err)
		}
		if got != mp {
			t.Fatalf("Add returned %q, want %q", got, mp)
		}
	}
	calls := e.fake.Calls()
	if len(calls) != 1 {
		t.Fatalf("want one mount, got:\n%s", joinCalls(calls))
	}
	want := call{op: "mount", source: "shm", target: mp, fstype: "tmpfs",
		flags: unix.MS_NOEXEC | unix.MS_NOSUID | unix.MS_NODEV, data: "mode=1777,size=65536"}
	if calls[0] != want {
		t.Fatalf("mount call\n got %v\nwant %v", calls[0], want)
	}
	if fi, err := os.Stat(mp); err != nil || !fi.IsDir() {
		t.Fatalf("mount point not created: %v", err)
	}

	for i := 0; i < 2; i++ {
		if err := e.m.Remove(ctx, mp); err != nil {
			t.Fatal(err)
		}
		if n := e.fake.count("unmount"); n != 0 {
			t.Fatalf("unmounted with users left (after Remove #%d)", i)
		}
	}
	if err := e.m.Remove(ctx, mp); err != nil {
		t.Fatal(err)
	}
	calls = e.fake.Calls()
	if last := calls[len(calls)-1]; last.op != "unmount" || last.target != mp || last.flags != unix.MNT_DETACH {
		t.Fatalf("last call = %v, want detach of %s", last, mp)
	}
	if _, err := os.Lstat(mp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("empty mount point not removed: %v", err)
	}
	if err := e.m.Remove(ctx, mp); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Remove of unknown = %v, want not found", err)
	}
	// After the last Remove, Add mounts again.
	if _, err := e.m.Add(ctx, "c3", shm(mp)); err != nil {
		t.Fatal(err)
	}
	if n := e.fake.count("mount"); n != 2 {
		t.Fatalf("mounts = %d, want 2", n)
	}
}

func TestSharedStorageSurvivesUntilCleanup(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t, nil)
	s := shm(e.p("sandbox/ephemeral/cache"))
	s.Shared = true
	if _, err := e.m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Remove(ctx, s.MountPoint); err != nil {
		t.Fatal(err)
	}
	if n := e.fake.count("unmount"); n != 0 {
		t.Fatal("shared storage unmounted at refcount 0")
	}
	// The next container reuses it without a second mount.
	if _, err := e.m.Add(ctx, "c2", s); err != nil {
		t.Fatal(err)
	}
	if n := e.fake.count("mount"); n != 1 {
		t.Fatalf("mounts = %d, want 1", n)
	}
	if err := e.m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if n := e.fake.count("unmount"); n != 1 {
		t.Fatalf("unmounts after Cleanup = %d, want 1", n)
	}
}

func TestMountPointConflict(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t, nil)
	mp := e.p("sandbox/shm")
	if _, err := e.m.Add(ctx, "sb", shm(mp)); err != nil {
		t.Fatal(err)
	}
	other := Storage{Driver: DriverVirtioFS, Source: "evil", Fstype: "virtiofs", MountPoint: mp}
	if _, err := e.m.Add(ctx, "c1", other); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Add = %v, want already exists", err)
	}
	if n := e.fake.count("mount"); n != 1 {
		t.Fatalf("mounts = %d, want 1", n)
	}
}

func TestCleanupReverseOrder(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t, nil)
	mps := []string{e.p("a"), e.p("a/b"), e.p("c")}
	for _, mp := range mps {
		if _, err := e.m.Add(ctx, "sb", shm(mp)); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.m.MountPoints(); !reflect.DeepEqual(got, mps) {
		t.Fatalf("MountPoints = %v", got)
	}
	if err := e.m.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	var unmounted []string
	for _, c := range e.fake.Calls() {
		if c.op == "unmount" {
			unmounted = append(unmounted, c.target)
		}
	}
	want := []string{e.p("c"), e.p("a/b"), e.p("a")}
	if !reflect.DeepEqual(unmounted, want) {
		t.Fatalf("unmount order = %v, want %v", unmounted, want)
	}
	if len(e.m.MountPoints()) != 0 {
		t.Fatal("storages left after Cleanup")
	}
}

func TestConcurrentAddMountsOnce(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t, nil)
	e.fake.delay = 20 * time.Millisecond
	mp := e.p("sandbox/shm")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.m.Add(ctx, "c", shm(mp))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := e.fake.count("mount"); n != 1 {
		t.Fatalf("mounts = %d, want 1", n)
	}
	for i := 0; i < 7; i++ {
		if err := e.m.Remove(ctx, mp); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.fake.count("unmount"); n != 0 {
		t.Fatal("unmounted with a user left")
	}
	if err := e.m.Remove(ctx, mp); err != nil {
		t.Fatal(err)
	}
	if n := e.fake.count("unmount"); n != 1 {
		t.Fatalf("unmounts = %d, want 1", n)
	}
}

func TestFailedMountIsForgotten(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t, nil)
	e.fake.mountErr = unix.EPERM
	mp := e.p("sandbox/shm")
	if _, err := e.m.Add(ctx, "sb", shm(mp)); !errors.Is(err, unix.EPERM) {
		t.Fatalf("Add = %v, want EPERM", err)
	}
	if len(e.m.MountPoints()) != 0 {
		t.Fatal("failed storage recorded")
	}
	e.fake.mountErr = nil
	if _, err := e.m.Add(ctx, "sb", shm(mp)); err != nil {
		t.Fatalf("retry: %v", err)
	}
}

func TestHandlers(t *testing.T) {
	e := newTestEnv(t, func(o *Options) { o.Drivers = map[string]Driver{"image_guest_pull": &fakeDriver{}} })
	want := []string{"blk", "ephemeral", "image_guest_pull", "local", "overlayfs", "scsi", "virtio-fs"}
	if got := e.m.Handlers(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Handlers = %v, want %v", got, want)
	}
}

func TestExtraDriver(t *testing.T) {
	ctx := context.Background()
	d := &fakeDriver{}
	e := newTestEnv(t, func(o *Options) { o.Drivers = map[string]Driver{"image_guest_pull": d} })
	s := Storage{Driver: "image_guest_pull", Source: "docker.io/library/busybox", Fstype: "overlay", MountPoint: e.p("c1/rootfs")}
	if _, err := e.m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	bad := s
	bad.MountPoint = "/"
	if _, err := e.m.Add(ctx, "c1", bad); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("extra driver with bad mount point = %v", err)
	}
	if err := e.m.Remove(ctx, s.MountPoint); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d.setups, []string{"c1:" + s.MountPoint}) || !reflect.DeepEqual(d.teardowns, []string{s.MountPoint}) {
		t.Fatalf("setups %v teardowns %v", d.setups, d.teardowns)
	}
}

func TestLocalDriver(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t, nil)
	gid := os.Getgid()
	if os.Geteuid() == 0 {
		gid = 4321
	}
	tests := []struct {
		name     string
		options  []string
		wantMode uint32
		wantGid  int
	}{
		{"mode", []string{"mode=0777"}, 0o777, os.Getgid()},
		{"mode and fsgid", []string{"mode=0770", "fsgid=" + itoa(gid)}, 0o2770, gid},
		{"fsgid only", []string{"fsgid=" + itoa(gid)}, 0o755, gid},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mp := e.p("shared/containers/sb/rootfs/local/vol" + itoa(i))
			s := Storage{Driver: DriverLocal, Source: "local", Fstype: "local", MountPoint: mp, Options: tc.options}
			if _, err := e.m.Add(ctx, "c", s); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Stat(mp, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode&0o7777 != tc.wantMode && !(tc.name == "fsgid only" && st.Mode&0o7000 == 0) {
				t.Fatalf("mode = %#o, want %#o", st.Mode&0o7777, tc.wantMode)
			}
			if int(st.Gid) != tc.wantGid {
				t.Fatalf("gid = %d, want %d", st.Gid, tc.wantGid)
			}
			if err := e.m.Remove(ctx, mp); err != nil {
				t.Fatal(err)
			}
			// Like kata, the directory (the volume's data) stays.
			if _, err := os.Stat(mp); err != nil {
				t.Fatalf("local volume removed: %v", err)
			}
		})
	}
	if n := len(e.fake.Calls()); n != 0 {
		t.Fatalf("local driver called the mounter:\n%s", joinCalls(e.fake.Calls()))
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestOverlayDriverFake(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t, nil)
	l1, l2 := e.p("image/layer1"), e.p("image/layer2")
	mustMkdir(t, l1)
	mustMkdir(t, l2)
	upper, work := e.p("c1/fs"), e.p("c1/work")
	s := Storage{
		Driver: DriverOverlayFS, Source: "overlay", Fstype: "overlay", MountPoint: e.p("c1/rootfs"),
		DriverOptions: []string{DriverOptionOverlayCreateDir + "=" + upper, DriverOptionOverlayCreateDir + "=" + work},
		Options:       []string{"lowerdir=" + l1 + ":" + l2, "upperdir=" + upper, "workdir=" + work, "index=off", "nodev"},
	}
	if _, err := e.m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	calls := e.fake.Calls()
	if len(calls) != 1 {
		t.Fatalf("calls:\n%s", joinCalls(calls))
	}
	want := call{op: "mount", source: "overlay", target: s.MountPoint, fstype: "overlay", flags: unix.MS_NODEV,
		data: "lowerdir=" + l1 + ":" + l2 + ",upperdir=" + upper + ",workdir=" + work + ",index=off"}
	if calls[0] != want {
		t.Fatalf("mount call\n got %v\nwant %v", calls[0], want)
	}
}

// TestOverlaySymlinkedLowerStaysInRoot plants a symlink (as a container
// sharing an emptyDir could) and checks the overlay never uses a directory
// outside the root.
func TestOverlaySymlinkedLowerStaysInRoot(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t, nil)
	outside := t.TempDir()
	mustSymlink(t, outside, e.p("sandbox/ephemeral/vol/evil"))
	s := Storage{Driver: DriverOverlayFS, Source: "overlay", Fstype: "overlay", MountPoint: e.p("c1/rootfs"),
		Options: []string{"lowerdir=" + e.p("sandbox/ephemeral/vol/evil")}}
	_, err := e.m.Add(ctx, "c1", s)
	for _, c := range e.fake.Calls() {
		if strings.Contains(c.data, outside) || strings.Contains(c.target, outside) {
			t.Fatalf("mount used a directory outside the root: %v", c)
		}
	}
	if err == nil {
		// Scoped resolution may succeed only with a directory inside the root.
		if c := e.fake.Calls()[0]; !strings.HasPrefix(strings.TrimPrefix(c.data, "lowerdir="), e.root+"/") {
			t.Fatalf("lowerdir outside the root: %v", c)
		}
	}
}

// TestMountPointSymlinkStaysInRoot: a symlink in the mount point's path
// (planted inside the root) must never redirect the mount outside.
func TestMountPointSymlinkStaysInRoot(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		target func(outside string) string
	}{
		{"absolute", func(outside string) string { return outside }},
		{"relative climbing", func(string) string { return "../../../../../../../../../../../tmp" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			outside := t.TempDir()
			mustSymlink(t, tc.target(outside), e.p("sandbox/ephemeral/vol"))
			_, err := e.m.Add(ctx, "c1", shm(e.p("sandbox/ephemeral/vol/x")))
			for _, c := range e.fake.Calls() {
				if !strings.HasPrefix(c.target, e.root+"/") {
					t.Fatalf("mount target left the root: %v", c)
				}
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 0 {
				t.Fatalf("directory created outside the root: %v", entries)
			}
			if err == nil {
				if _, serr := os.Stat(e.p("sandbox/ephemeral/vol/x")); serr != nil {
					t.Fatalf("Add succeeded but the mount point is not reachable inside the root: %v", serr)
				}
			}
		})
	}
}
