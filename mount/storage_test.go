package mount

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name      string
		in        []string
		flags     uintptr
		data      string
		wantError bool
	}{
		{name: "none"},
		{name: "shm", in: []string{"noexec", "nosuid", "nodev", "mode=1777", "size=67108864"},
			flags: unix.MS_NOEXEC | unix.MS_NOSUID | unix.MS_NODEV, data: "mode=1777,size=67108864"},
		{name: "ro", in: []string{"ro"}, flags: unix.MS_RDONLY},
		{name: "rw clears ro", in: []string{"ro", "rw"}},
		{name: "rbind", in: []string{"rbind"}, flags: unix.MS_BIND | unix.MS_REC},
		{name: "bind rprivate", in: []string{"bind", "rprivate"}, flags: unix.MS_BIND | unix.MS_PRIVATE | unix.MS_REC},
		{name: "exec clears noexec", in: []string{"noexec", "exec"}},
		{name: "defaults", in: []string{"defaults"}},
		{name: "data keeps order", in: []string{"b=2", "ro", "a=1"}, flags: unix.MS_RDONLY, data: "b=2,a=1"},
		{name: "empty option", in: []string{"ro", ""}, wantError: true},
		{name: "comma smuggling", in: []string{"size=1,upperdir=/"}, wantError: true},
		{name: "nul", in: []string{"ro\x00"}, wantError: true},
		{name: "loop", in: []string{"loop"}, wantError: true},
		{name: "data too long", in: []string{"x=" + strings.Repeat("a", 4096)}, wantError: true},
		{name: "too many", in: make([]string, 300), wantError: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			flags, data, err := ParseOptions(tc.in)
			if tc.wantError {
				if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "options:") {
					t.Fatalf("err = %v, want invalid options", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if flags != tc.flags || data != tc.data {
				t.Fatalf("got %#x %q, want %#x %q", flags, data, tc.flags, tc.data)
			}
		})
	}
}

// TestAddValidation checks that bad storages are refused with the field
// named and before anything is created or mounted.
func TestAddValidation(t *testing.T) {
	e := newTestEnv(t, nil)
	mp := e.p("sandbox/shm")
	eph := func(mod func(*Storage)) Storage {
		s := Storage{Driver: DriverEphemeral, Source: "shm", Fstype: "tmpfs", MountPoint: mp,
			Options: []string{"noexec", "nosuid", "nodev", "mode=1777", "size=65536"}}
		if mod != nil {
			mod(&s)
		}
		return s
	}
	tests := []struct {
		name  string
		s     Storage
		field string
		class error
	}{
		{"unsupported driver 9p", Storage{Driver: "9p", Source: "kataShared", MountPoint: mp}, "driver", errdefs.ErrInvalidArgument},
		{"empty driver", Storage{MountPoint: mp}, "driver", errdefs.ErrInvalidArgument},
		{"empty mount point", eph(func(s *Storage) { s.MountPoint = "" }), "mount_point", errdefs.ErrInvalidArgument},
		{"relative mount point", eph(func(s *Storage) { s.MountPoint = "run/kata-containers/x" }), "mount_point", errdefs.ErrInvalidArgument},
		{"dotdot mount point", eph(func(s *Storage) { s.MountPoint = e.p("a/../../etc") }), "mount_point", errdefs.ErrInvalidArgument},
		{"dotdot escape cleaned", eph(func(s *Storage) { s.MountPoint = e.root + "/../etc" }), "mount_point", errdefs.ErrInvalidArgument},
		{"unclean mount point", eph(func(s *Storage) { s.MountPoint = e.p("a") + "//b" }), "mount_point", errdefs.ErrInvalidArgument},
		{"trailing slash", eph(func(s *Storage) { s.MountPoint = e.p("a") + "/" }), "mount_point", errdefs.ErrInvalidArgument},
		{"outside allowed roots", eph(func(s *Storage) { s.MountPoint = "/etc" }), "mount_point", errdefs.ErrInvalidArgument},
		{"the root itself", eph(func(s *Storage) { s.MountPoint = e.root }), "mount_point", errdefs.ErrInvalidArgument},
		{"sibling with root prefix", eph(func(s *Storage) { s.MountPoint = e.root + "x/y" }), "mount_point", errdefs.ErrInvalidArgument},
		{"nul in mount point", eph(func(s *Storage) { s.MountPoint = mp + "\x00/etc" }), "mount_point", errdefs.ErrInvalidArgument},
		{"nul in source", eph(func(s *Storage) { s.Source = "a\x00" }), "source", errdefs.ErrInvalidArgument},
		{"nul in driver option", eph(func(s *Storage) { s.DriverOptions = []string{"\x00"} }), "driver_options", errdefs.ErrInvalidArgument},
		{"bad fs_group policy", eph(func(s *Storage) { s.FSGroup = &FSGroup{GroupID: 1, ChangePolicy: 7} }), "fs_group", errdefs.ErrInvalidArgument},
		{"bind option", eph(func(s *Storage) { s.Options = []string{"bind"} }), "options", errdefs.ErrInvalidArgument},
		{"rbind option", eph(func(s *Storage) { s.Options = []string{"rbind"} }), "options", errdefs.ErrInvalidArgument},
		{"remount option", eph(func(s *Storage) { s.Options = []string{"remount"} }), "options", errdefs.ErrInvalidArgument},
		{"comma in option", eph(func(s *Storage) { s.Options = []string{"size=1,nr_inodes=1"} }), "options", errdefs.ErrInvalidArgument},
		{"loop option", eph(func(s *Storage) { s.Options = []string{"loop"} }), "options", errdefs.ErrInvalidArgument},
		{"bad fsgid", eph(func(s *Storage) { s.Options = []string{"fsgid=-1"} }), "options", errdefs.ErrInvalidArgument},
		{"ephemeral path source", eph(func(s *Storage) { s.Source = "/etc" }), "source", errdefs.ErrInvalidArgument},
		{"ephemeral wrong fstype", eph(func(s *Storage) { s.Fstype = "proc" }), "fstype", errdefs.ErrInvalidArgument},
		{"ephemeral hugetlbfs", eph(func(s *Storage) { s.Fstype = "hugetlbfs" }), "fstype", errdefs.ErrNotImplemented},
		{"ephemeral driver option", eph(func(s *Storage) { s.DriverOptions = []string{"x"} }), "driver_options", errdefs.ErrInvalidArgument},
		{"local unknown option", Storage{Driver: DriverLocal, MountPoint: mp, Options: []string{"uid=0"}}, "options", errdefs.ErrInvalidArgument},
		{"local bad mode", Storage{Driver: DriverLocal, MountPoint: mp, Options: []string{"mode=999"}}, "options", errdefs.ErrInvalidArgument},
		{"local mode too big", Storage{Driver: DriverLocal, MountPoint: mp, Options: []string{"mode=17777"}}, "options", errdefs.ErrInvalidArgument},
		{"virtio-fs empty tag", Storage{Driver: DriverVirtioFS, Fstype: "virtiofs", MountPoint: mp}, "source", errdefs.ErrInvalidArgument},
		{"virtio-fs path tag", Storage{Driver: DriverVirtioFS, Source: "/dev/sda", Fstype: "virtiofs", MountPoint: mp}, "source", errdefs.ErrInvalidArgument},
		{"virtio-fs long tag", Storage{Driver: DriverVirtioFS, Source: strings.Repeat("t", 37), Fstype: "virtiofs", MountPoint: mp}, "source", errdefs.ErrInvalidArgument},
		{"virtio-fs wrong fstype", Storage{Driver: DriverVirtioFS, Source: "kataShared", Fstype: "9p", MountPoint: mp}, "fstype", errdefs.ErrInvalidArgument},
		{"blk without fstype", Storage{Driver: DriverBlk, Source: "02/03", MountPoint: mp}, "fstype", errdefs.ErrInvalidArgument},
		{"blk odd fstype", Storage{Driver: DriverBlk, Source: "02/03", Fstype: "proc", MountPoint: mp}, "fstype", errdefs.ErrInvalidArgument},
		{"blk device path source", Storage{Driver: DriverBlk, Source: "/dev/vda", Fstype: "ext4", MountPoint: mp}, "source", errdefs.ErrInvalidArgument},
		{"blk bad pci slot", Storage{Driver: DriverBlk, Source: "02/20", Fstype: "ext4", MountPoint: mp}, "source", errdefs.ErrInvalidArgument},
		{"blk create_filesystem xfs", Storage{Driver: DriverBlk, Source: "02/03", Fstype: "xfs", MountPoint: mp, DriverOptions: []string{"create_filesystem"}}, "fstype", errdefs.ErrNotImplemented},
		{"blk create_filesystem read-only", Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: mp, DriverOptions: []string{"create_filesystem"}, Options: []string{"ro"}}, "options", errdefs.ErrInvalidArgument},
		{"blk ephemeral without a secure mounter", Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: mp, DriverOptions: []string{"encryption_key=ephemeral", "create_filesystem"}}, "driver_options", errdefs.ErrNotImplemented},
		{"blk other encryption key", Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: mp, DriverOptions: []string{"encryption_key=kbs:///a/b/c"}}, "driver_options", errdefs.ErrInvalidArgument},
		{"blk verity without root hash", Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: mp, Options: []string{"ro", "X-kata.dmverity-enabled=true", "X-kata.dmverity.hashoffset=4096"}}, "options", errdefs.ErrInvalidArgument},
		{"blk verity with create_filesystem", Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: mp, DriverOptions: []string{"create_filesystem"},
			Options: []string{"X-kata.dmverity-enabled=true", "X-kata.dmverity.hashoffset=4096", "X-kata.dmverity.roothash=" + strings.Repeat("ab", 32)}}, "driver_options", errdefs.ErrInvalidArgument},
		{"blk gpt partition", Storage{Driver: DriverBlk, Source: "02/03", Fstype: "erofs", MountPoint: mp, Options: []string{"X-kata.gpt-partitioned=true"}}, "options", errdefs.ErrNotImplemented},
		{"blk unknown driver option", Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: mp, DriverOptions: []string{"x=y"}}, "driver_options", errdefs.ErrInvalidArgument},
		{"scsi bad address", Storage{Driver: DriverScsi, Source: "0:0:0:0", Fstype: "ext4", MountPoint: mp}, "source", errdefs.ErrInvalidArgument},
		{"overlay without lowerdir", Storage{Driver: DriverOverlayFS, Fstype: "overlay", MountPoint: mp}, "options", errdefs.ErrInvalidArgument},
		{"overlay lowerdir outside roots", Storage{Driver: DriverOverlayFS, Fstype: "overlay", MountPoint: mp, Options: []string{"lowerdir=/etc"}}, "options", errdefs.ErrInvalidArgument},
		{"overlay lowerdir dotdot", Storage{Driver: DriverOverlayFS, Fstype: "overlay", MountPoint: mp, Options: []string{"lowerdir=" + e.p("l") + ":" + e.p("a/../../x")}}, "options", errdefs.ErrInvalidArgument},
		{"overlay upperdir outside roots", Storage{Driver: DriverOverlayFS, Fstype: "overlay", MountPoint: mp, Options: []string{"lowerdir=" + e.p("l"), "upperdir=/tmp/u", "workdir=" + e.p("w")}}, "options", errdefs.ErrInvalidArgument},
		{"overlay upper without work", Storage{Driver: DriverOverlayFS, Fstype: "overlay", MountPoint: mp, Options: []string{"lowerdir=" + e.p("l"), "upperdir=" + e.p("u")}}, "options", errdefs.ErrInvalidArgument},
		{"overlay metacopy", Storage{Driver: DriverOverlayFS, Fstype: "overlay", MountPoint: mp, Options: []string{"lowerdir=" + e.p("l"), "metacopy=on"}}, "options", errdefs.ErrInvalidArgument},
		{"overlay create dir outside", Storage{Driver: DriverOverlayFS, Fstype: "overlay", MountPoint: mp, Options: []string{"lowerdir=" + e.p("l")},
			DriverOptions: []string{DriverOptionOverlayCreateDir + "=/etc/x"}}, "driver_options", errdefs.ErrInvalidArgument},
		{"overlay kata fs-opt", Storage{Driver: DriverOverlayFS, Fstype: "overlay", MountPoint: mp, Options: []string{"lowerdir=" + e.p("l"), "io.katacontainers.fs-opt.overlay-rw"}}, "options", errdefs.ErrNotImplemented},
		{"overlay wrong fstype", Storage{Driver: DriverOverlayFS, Fstype: "ext4", MountPoint: mp, Options: []string{"lowerdir=" + e.p("l")}}, "fstype", errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.m.Add(context.Background(), "sb", tc.s)
			if !errors.Is(err, tc.class) {
				t.Fatalf("Add = %v, want %v", err, tc.class)
			}
			if !strings.Contains(err.Error(), tc.field+":") {
				t.Fatalf("error %q does not name field %q", err, tc.field)
			}
			if n := len(e.fake.Calls()); n != 0 {
				t.Fatalf("mounter called %d times:\n%s", n, joinCalls(e.fake.Calls()))
			}
			if mps := e.m.MountPoints(); len(mps) != 0 {
				t.Fatalf("storage recorded after failure: %v", mps)
			}
		})
	}
	// Nothing was created for any refused storage.
	if _, err := lstat(mp); err == nil {
		t.Fatalf("mount point %s was created", mp)
	}
}

func TestUnsupportedDriverMessage(t *testing.T) {
	e := newTestEnv(t, nil)
	err := e.m.Validate(Storage{Driver: "9p", MountPoint: e.p("x")})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), `storage driver "9p" is not supported`) {
		t.Fatalf("Validate = %v", err)
	}
}

func TestLocate(t *testing.T) {
	roots := []string{"/run/kata-containers", "/run/other"}
	tests := []struct {
		in      string
		rootIdx int
		rel     string
	}{
		{"/run/kata-containers/sandbox/shm", 0, "sandbox/shm"},
		{"/run/other/x", 1, "x"},
		{"/run/kata-containers", -1, ""},
		{"/run/kata-containersX/a", -1, ""},
		{"/run", -1, ""},
		{"/run/kata-containers/a/../b", -1, ""},
		{"/run/kata-containers/./b", -1, ""},
		{"relative/x", -1, ""},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			pl, err := locate(roots, "mount_point", tc.in)
			if tc.rootIdx < 0 {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("locate = %+v, %v; want error", pl, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if pl.root != roots[tc.rootIdx] || pl.rel != tc.rel || pl.abs != tc.in {
				t.Fatalf("locate = %+v", pl)
			}
		})
	}
}

func TestNewOptions(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
	}{
		{"relative root", Options{AllowedRoots: []string{"run"}}},
		{"slash root", Options{AllowedRoots: []string{"/"}}},
		{"unclean root", Options{AllowedRoots: []string{"/run/"}}},
		{"shadowing driver", Options{Drivers: map[string]Driver{DriverBlk: &fakeDriver{}}}},
		{"nil driver", Options{Drivers: map[string]Driver{"x": nil}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.o); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("New = %v, want invalid argument", err)
			}
		})
	}
	m, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if m.devRoot != "/dev" || m.sysRoot != "/sys" || m.hotplugTimeout != DefaultHotplugTimeout ||
		len(m.roots) != 1 || m.roots[0] != DefaultAllowedRoot {
		t.Fatalf("defaults not applied: %+v", m)
	}
	if _, ok := m.mounter.(SyscallMounter); !ok {
		t.Fatalf("default mounter is %T", m.mounter)
	}
}
