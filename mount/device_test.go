package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func TestParsePCIPath(t *testing.T) {
	tests := []struct {
		in    string
		rc    string
		slots []string
		bad   bool
	}{
		{in: "02", rc: "00", slots: []string{"02.0"}},
		{in: "02/03", rc: "00", slots: []string{"02.0", "03.0"}},
		{in: "1f.7/0", rc: "00", slots: []string{"1f.7", "00.0"}},
		{in: "0A/1B", rc: "00", slots: []string{"0a.0", "1b.0"}},
		{in: "02/00/01", rc: "00", slots: []string{"02.0", "00.0", "01.0"}},
		{in: "20/00/02", rc: "20", slots: []string{"00.0", "02.0"}},
		{in: "", bad: true},
		{in: "02/", bad: true},
		{in: "/02", bad: true},
		{in: "20", bad: true},
		{in: "02/20", bad: true},
		{in: "+1", bad: true},
		{in: "-1", bad: true},
		{in: "002", bad: true},
		{in: "02.8", bad: true},
		{in: "02.", bad: true},
		{in: "02.1.1", bad: true},
		{in: "xyz", bad: true},
		{in: "0:0", bad: true},
		{in: "01/01/01/01/01/01/01/01/01", bad: true},
		{in: "../../etc", bad: true},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			p, err := parsePCIPath(tc.in)
			if tc.bad {
				if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.HasPrefix(err.Error(), "source:") {
					t.Fatalf("parsePCIPath = %+v, %v; want invalid source", p, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if p.rootComplex != tc.rc || !reflect.DeepEqual(p.slots, tc.slots) {
				t.Fatalf("got %+v", p)
			}
		})
	}
}

// fakeSys builds sysfs trees shaped like the kernel's.
type fakeSys struct {
	t   *testing.T
	sys string
	dev string
}

// virtioBlk creates <devices>/<pciDir>/virtioN/block/<name>/dev and the
// /sys/block/<name> symlink.
func (f fakeSys) virtioBlk(pciDir, name string, major, minor int) string {
	f.t.Helper()
	blockDir := filepath.Join(f.sys, "devices", pciDir, "virtio4", "block", name)
	mustWrite(f.t, filepath.Join(blockDir, "dev"), fmt.Sprintf("%d:%d\n", major, minor))
	rel, err := filepath.Rel(filepath.Join(f.sys, "block"), blockDir)
	if err != nil {
		f.t.Fatal(err)
	}
	mustSymlink(f.t, rel, filepath.Join(f.sys, "block", name))
	return blockDir
}

// bridge creates a bridge's pci_bus entry.
func (f fakeSys) bridge(pciDir, bus string) {
	f.t.Helper()
	mustMkdir(f.t, filepath.Join(f.sys, "devices", pciDir, "pci_bus", bus))
}

// node creates a block device node under the fake /dev (needs root).
func (f fakeSys) node(name string, major, minor int) {
	f.t.Helper()
	if err := unix.Mknod(filepath.Join(f.dev, name), unix.S_IFBLK|0o600, int(unix.Mkdev(uint32(major), uint32(minor)))); err != nil {
		f.t.Fatal(err)
	}
}

func (e *testEnv) fakeSys(t *testing.T) fakeSys { return fakeSys{t: t, sys: e.sys, dev: e.dev} }

func TestPCIDeviceDir(t *testing.T) {
	tests := []struct {
		name  string
		setup func(f fakeSys)
		path  string
		want  string
	}{
		{
			name:  "device on the root bus",
			setup: func(f fakeSys) { f.virtioBlk("pci0000:00/0000:00:03.0", "vda", 254, 0) },
			path:  "03",
			want:  "devices/pci0000:00/0000:00:03.0",
		},
		{
			name: "behind a bridge with pci_bus",
			setup: func(f fakeSys) {
				f.bridge("pci0000:00/0000:00:02.0", "0000:01")
				f.virtioBlk("pci0000:00/0000:00:02.0/0000:01:03.0", "vda", 254, 0)
			},
			path: "02/03",
			want: "devices/pci0000:00/0000:00:02.0/0000:01:03.0",
		},
		{
			name: "behind a bridge without pci_bus",
			setup: func(f fakeSys) {
				f.virtioBlk("pci0000:00/0000:00:02.0/0000:05:03.0", "vda", 254, 0)
			},
			path: "02/03",
			want: "devices/pci0000:00/0000:00:02.0/0000:05:03.0",
		},
		{
			name: "two bridges and a function",
			setup: func(f fakeSys) {
				f.bridge("pci0000:00/0000:00:02.0", "0000:01")
				f.bridge("pci0000:00/0000:00:02.0/0000:01:01.0", "0000:02")
				f.virtioBlk("pci0000:00/0000:00:02.0/0000:01:01.0/0000:02:03.1", "vdc", 254, 32)
			},
			path: "02/01/03.1",
			want: "devices/pci0000:00/0000:00:02.0/0000:01:01.0/0000:02:03.1",
		},
		{
			name: "NUMA root complex",
			setup: func(f fakeSys) {
				f.bridge("pci0000:20/0000:20:00.0", "0000:21")
				f.virtioBlk("pci0000:20/0000:20:00.0/0000:21:02.0", "vdd", 254, 48)
			},
			path: "20/00/02",
			want: "devices/pci0000:20/0000:20:00.0/0000:21:02.0",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			tc.setup(e.fakeSys(t))
			p, err := parsePCIPath(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			dir, err := pciDeviceDir(e.sys, p)
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(e.sys, tc.want); dir != want {
				t.Fatalf("dir = %s, want %s", dir, want)
			}
			bd, err := virtioBlockDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := blockName(bd); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPCIDeviceDirNotYet(t *testing.T) {
	e := newTestEnv(t, nil)
	f := e.fakeSys(t)
	p, _ := parsePCIPath("02/03")
	if _, err := pciDeviceDir(e.sys, p); !errors.Is(err, errNotYet) {
		t.Fatalf("empty sysfs: %v", err)
	}
	f.bridge("pci0000:00/0000:00:02.0", "0000:01")
	if _, err := pciDeviceDir(e.sys, p); !errors.Is(err, errNotYet) {
		t.Fatalf("bridge only: %v", err)
	}
	mustMkdir(t, filepath.Join(e.sys, "devices/pci0000:00/0000:00:02.0/0000:01:03.0"))
	dir, err := pciDeviceDir(e.sys, p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := virtioBlockDir(dir); !errors.Is(err, errNotYet) {
		t.Fatalf("device without virtio child: %v", err)
	}
}

func TestResolveDevice(t *testing.T) {
	requireRoot(t, "mknod of block device nodes in a temp dir")
	ctx := context.Background()
	tests := []struct {
		name   string
		driver string
		source string
		setup  func(f fakeSys)
		want   string // device name under dev, "" = error
	}{
		{
			name: "virtio-blk behind a bridge", driver: DriverBlk, source: "02/03",
			setup: func(f fakeSys) {
				f.bridge("pci0000:00/0000:00:02.0", "0000:01")
				f.virtioBlk("pci0000:00/0000:00:02.0/0000:01:03.0", "vda", 254, 0)
				f.node("vda", 254, 0)
			},
			want: "vda",
		},
		{
			name: "virtio-blk wrong device node number", driver: DriverBlk, source: "03",
			setup: func(f fakeSys) {
				f.virtioBlk("pci0000:00/0000:00:03.0", "vda", 254, 0)
				f.node("vda", 8, 0)
			},
		},
		{
			name: "virtio-blk node is a regular file", driver: DriverBlk, source: "03",
			setup: func(f fakeSys) {
				f.virtioBlk("pci0000:00/0000:00:03.0", "vda", 254, 0)
				mustWrite(f.t, filepath.Join(f.dev, "vda"), "")
			},
		},
		{
			name: "scsi", driver: DriverScsi, source: "1:2",
			setup: func(f fakeSys) {
				target := "devices/pci0000:00/0000:00:05.0/virtio2/host0/target0:0:1/0:0:1:2"
				mustWrite(f.t, filepath.Join(f.sys, target, "block", "sdc", "dev"), "8:32\n")
				mustSymlink(f.t, "../../../"+target, filepath.Join(f.sys, "bus/scsi/devices/0:0:1:2"))
				mustWrite(f.t, filepath.Join(f.sys, "class/scsi_host/host0/scan"), "")
				f.node("sdc", 8, 32)
			},
			want: "sdc",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newTestEnv(t, nil)
			tc.setup(e.fakeSys(t))
			dev, err := e.m.ResolveDevice(ctx, tc.driver, tc.source)
			if tc.want == "" {
				if err == nil {
					t.Fatalf("ResolveDevice = %s, want error", dev)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(e.dev, tc.want); dev != want {
				t.Fatalf("dev = %s, want %s", dev, want)
			}
		})
	}
	// The SCSI case asked host0 to scan for target 1, LUN 2.
	e := newTestEnv(t, nil)
	mustWrite(t, filepath.Join(e.sys, "class/scsi_host/host0/scan"), "")
	_, _ = e.m.ResolveDevice(ctx, DriverScsi, "1:2")
	if b, _ := os.ReadFile(filepath.Join(e.sys, "class/scsi_host/host0/scan")); string(b) != "0 1 2" {
		t.Fatalf("scan = %q, want %q", b, "0 1 2")
	}
}

func TestResolveDeviceTimeout(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct{ driver, source string }{{DriverBlk, "02/03"}, {DriverScsi, "0:0"}} {
		t.Run(tc.driver, func(t *testing.T) {
			e := newTestEnv(t, func(o *Options) { o.HotplugTimeout = 100 * time.Millisecond })
			start := time.Now()
			_, err := e.m.ResolveDevice(ctx, tc.driver, tc.source)
			if !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("err = %v, want not found", err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.source)) {
				t.Fatalf("error %q does not name the source", err)
			}
			if d := time.Since(start); d < 90*time.Millisecond || d > 2*time.Second {
				t.Fatalf("gave up after %v, want about 100ms", d)
			}
		})
	}
	// A cancelled context stops the wait early.
	e := newTestEnv(t, func(o *Options) { o.HotplugTimeout = time.Minute })
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := e.m.ResolveDevice(cctx, DriverBlk, "02"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}

func TestResolveDeviceHotplugLater(t *testing.T) {
	requireRoot(t, "mknod of block device nodes in a temp dir")
	e := newTestEnv(t, func(o *Options) { o.HotplugTimeout = 5 * time.Second })
	f := e.fakeSys(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(60 * time.Millisecond)
		// The bridge first, the disk a little later, then the node.
		_ = os.MkdirAll(filepath.Join(e.sys, "devices/pci0000:00/0000:00:02.0/pci_bus/0000:01"), 0o755)
		time.Sleep(20 * time.Millisecond)
		blockDir := filepath.Join(e.sys, "devices/pci0000:00/0000:00:02.0/0000:01:03.0/virtio4/block/vda")
		_ = os.MkdirAll(blockDir, 0o755)
		// Atomically, as sysfs shows it: a half-written file would read as
		// a bad device number, not as a device still to come.
		_ = os.WriteFile(filepath.Join(blockDir, ".dev"), []byte("254:0\n"), 0o644)
		_ = os.Rename(filepath.Join(blockDir, ".dev"), filepath.Join(blockDir, "dev"))
		time.Sleep(20 * time.Millisecond)
		_ = unix.Mknod(filepath.Join(f.dev, "vda"), unix.S_IFBLK|0o600, int(unix.Mkdev(254, 0)))
	}()
	start := time.Now()
	dev, err := e.m.ResolveDevice(context.Background(), DriverBlk, "02/03")
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if dev != filepath.Join(e.dev, "vda") {
		t.Fatalf("dev = %s", dev)
	}
	if d := time.Since(start); d < 90*time.Millisecond {
		t.Fatalf("resolved after %v, before the device appeared", d)
	}
}

func TestBlockStorageFake(t *testing.T) {
	requireRoot(t, "mknod of block device nodes in a temp dir")
	ctx := context.Background()
	e := newTestEnv(t, nil)
	f := e.fakeSys(t)
	f.bridge("pci0000:00/0000:00:02.0", "0000:01")
	f.virtioBlk("pci0000:00/0000:00:02.0/0000:01:03.0", "vda", 254, 0)
	f.node("vda", 254, 0)
	s := Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", Options: []string{"ro", "nosuid"}, MountPoint: e.p("sandbox/storage/vol")}
	if _, err := e.m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	want := call{op: "mount", source: filepath.Join(e.dev, "vda"), target: s.MountPoint, fstype: "ext4", flags: unix.MS_RDONLY | unix.MS_NOSUID}
	if calls := e.fake.Calls(); len(calls) != 1 || calls[0] != want {
		t.Fatalf("calls:\n%swant %v", joinCalls(calls), want)
	}
	// A disk that never shows up: not found, nothing mounted.
	missing := Storage{Driver: DriverBlk, Source: "02/04", Fstype: "ext4", MountPoint: e.p("sandbox/storage/vol2")}
	if _, err := e.m.Add(ctx, "c1", missing); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), `"02/04"`) {
		t.Fatalf("Add = %v, want not found naming the source", err)
	}
	if n := e.fake.count("mount"); n != 1 {
		t.Fatalf("mounts = %d", n)
	}
}
