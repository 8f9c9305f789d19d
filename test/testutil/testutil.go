// Package testutil holds helpers shared by Cova's tests: privilege gates that
// never let CI skip, a busybox root filesystem and an OCI spec for it.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// InCI reports whether the tests run under CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// RequireRoot skips the test outside CI when not root, and fails it in CI.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatal("this test needs root and CI=true: run CI as root")
	}
	t.Skip("needs root (containers, mounts or namespaces); run as root or with CI=true")
}

// RequireTool skips the test outside CI when a program is missing, and fails
// it in CI (where .ci/run installs it).
func RequireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if InCI() {
		t.Fatalf("%s is not installed but CI=true: .ci/run must install it", name)
	}
	t.Skipf("%s not installed (apt-get install it to run this test)", name)
	return ""
}

// busyboxPath finds a static busybox (Debian busybox-static).
func busyboxPath(t testing.TB) string {
	t.Helper()
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if out, err := exec.Command("file", "-L", p).Output(); err == nil && strings.Contains(string(out), "statically linked") {
			return p
		}
	}
	if InCI() {
		t.Fatal("no static busybox: .ci/run must install busybox-static")
	}
	t.Skip("no static busybox (apt-get install busybox-static)")
	return ""
}

// BusyboxRootfs builds a minimal root filesystem with a static busybox and its
// applets in a temporary directory and returns its path.
func BusyboxRootfs(t testing.TB) string {
	t.Helper()
	bb := busyboxPath(t)
	root := t.TempDir()
	if err := MakeBusyboxRootfs(bb, root); err != nil {
		t.Fatal(err)
	}
	return root
}

// MakeBusyboxRootfs populates dir with busybox from path bb.
func MakeBusyboxRootfs(bb, dir string) error {
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "root", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return fmt.Errorf("busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		_ = os.Symlink("busybox", filepath.Join(dir, "bin", applet))
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "passwd"), []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "etc", "group"), []byte("root:x:0:\nnobody:x:65534:\n"), 0o644)
}

// Spec returns runc's default spec for rootfs running args, with a cgroup
// nested under the test process's own cgroup.
func Spec(rootfs string, args ...string) *specs.Spec {
	s := specconv.Example()
	s.Root = &specs.Root{Path: rootfs}
	s.Process.Terminal = false
	s.Process.Args = args
	s.Process.Env = []string{"PATH=/bin:/sbin:/usr/bin"}
	s.Linux.CgroupsPath = "cova-test/" + filepath.Base(filepath.Dir(rootfs)) + "-" + filepath.Base(rootfs)
	return s
}
