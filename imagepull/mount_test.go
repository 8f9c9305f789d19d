package imagepull

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/test/regtest"
)

// inMountNS runs fn on a thread with its own private mount namespace; the
// thread (and every mount fn made) disappears when fn returns.
func inMountNS(fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			ch <- fmt.Errorf("unshare mount ns: %w", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			ch <- fmt.Errorf("making mounts private: %w", err)
			return
		}
		ch <- fn()
	}()
	return <-ch
}

// TestOverlayRootfs mounts the pulled layers as overlayfs (in a private mount
// namespace) and checks the merged view: whiteouts hide, opaque dirs hide the
// lower contents, and busybox from the image runs.
func TestOverlayRootfs(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("overlay mount test needs root")
		}
		t.Skip("overlay mount test needs root")
	}
	regtest.Require(t, "docker-registry", "umoci", "skopeo")
	reg := regtest.Start(t)
	buildBusybox(t, reg, "test/rootfs")
	p := newPuller(t, reg.Host, nil)
	img, err := p.Pull(context.Background(), reg.Host+"/test/rootfs:v1", PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		mount func(target string) error
	}{
		{"new mount API", func(target string) error {
			o, err := p.Store().PrepareRootfs("c-new", img.Layers)
			if err != nil {
				return err
			}
			return o.Mount(target, unix.MS_NODEV)
		}},
		{"mount(2) options", func(target string) error {
			o, err := p.Store().PrepareRootfs("c-old", img.Layers)
			if err != nil {
				return err
			}
			opts, err := o.Options()
			if err != nil {
				return err
			}
			return unix.Mount("overlay", target, "overlay", unix.MS_NODEV, opts)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := t.TempDir()
			var out []byte
			err := inMountNS(func() error {
				if err := tc.mount(target); err != nil {
					return err
				}
				if b, err := os.ReadFile(filepath.Join(target, "data/keep")); err != nil || string(b) != "kept\n" {
					return fmt.Errorf("data/keep: %q %v", b, err)
				}
				if _, err := os.Lstat(filepath.Join(target, "data/gone")); !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("whited-out data/gone visible: %v", err)
				}
				if _, err := os.Lstat(filepath.Join(target, "opt/old")); !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("opaque /opt shows the lower opt/old: %v", err)
				}
				if b, err := os.ReadFile(filepath.Join(target, "opt/b")); err != nil || string(b) != "new b\n" {
					return fmt.Errorf("opt/b: %q %v", b, err)
				}
				if err := os.WriteFile(filepath.Join(target, "written"), []byte("w"), 0o644); err != nil {
					return fmt.Errorf("upper dir not writable: %v", err)
				}
				cmd := exec.Command("/bin/busybox", "echo", "hi")
				cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: target}
				cmd.Dir = "/"
				var err error
				out, err = cmd.CombinedOutput()
				if err != nil {
					return fmt.Errorf("busybox in the rootfs: %v: %s", err, out)
				}
				return unix.Unmount(target, 0)
			})
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(out)) != "hi" {
				t.Fatalf("busybox said %q", out)
			}
			// Nothing leaked into the host mount table.
			mounts, _ := os.ReadFile("/proc/self/mountinfo")
			if strings.Contains(string(mounts), target) {
				t.Fatal("overlay visible in the host mount namespace")
			}
		})
	}
	// Layers are untouched by container writes.
	for _, l := range img.Layers {
		if _, err := os.Stat(filepath.Join(l, "written")); err == nil {
			t.Fatal("container write landed in a layer")
		}
	}
}
