package vm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cova-project/cova/agent/policy"
	"github.com/cova-project/cova/rootfs"
)

// dmModules are what the device-mapper tests add to guestModules: dm-verity,
// dm-crypt and dm-integrity with their dependencies, the xts and ecb
// templates that aes-xts-plain64 needs and the authenc template of the
// authenticated capi:authenc(hmac(sha256),xts(aes)) cipher (aes, hmac and
// sha256 are built into the cloud kernel; there is no modprobe in the guest
// to load a template on demand).
var dmModules = []string{"dm_mod", "dm_verity", "dm_crypt", "dm_integrity", "xts", "ecb", "authenc"}

// mkfsFiles are the dynamic mkfs.ext4 of the host (Debian's e2fsprogs) and
// what it needs to run in the guest. The agent runs it for
// create_filesystem and for ephemeral encrypted volumes.
var mkfsFiles = []rootfs.FileMapping{
	{Src: "/usr/sbin/mke2fs", Dst: "/sbin/mkfs.ext4"},
	{Src: "/etc/mke2fs.conf", Dst: "/etc/mke2fs.conf"},
	{Src: "/lib64/ld-linux-x86-64.so.2", Dst: "/lib64/ld-linux-x86-64.so.2"},
}

// mkfsLibs are mke2fs's shared libraries, from /lib/x86_64-linux-gnu.
var mkfsLibs = []string{"libext2fs.so.2", "libcom_err.so.2", "libblkid.so.1", "libuuid.so.1", "libe2p.so.2", "libc.so.6"}

// dmEnv is the initrd of the device-mapper tests: the shared env's kernel
// and agent with dmModules, mkfs.ext4 and the allow-all policy.
type dmEnv struct {
	*env
	initrd  string
	modules []string
}

var (
	dmOnce   sync.Once
	dmShared *dmEnv
	dmSkip   string
	dmErr    error
)

func needDM(t *testing.T) *dmEnv {
	t.Helper()
	e := needEnv(t)
	dmOnce.Do(func() { dmShared, dmSkip, dmErr = prepareDM(e) })
	if dmErr != nil {
		t.Fatal(dmErr)
	}
	if dmSkip != "" {
		unavailable(t, "%s", dmSkip)
	}
	return dmShared
}

// prepareDM builds the initrd into envDir (TestMain removes it).
func prepareDM(e *env) (*dmEnv, string, error) {
	for _, tool := range []string{"mkfs.ext4", "/usr/sbin/mke2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, "mkfs.ext4 is not installed (apt-get install e2fsprogs)", nil
		}
	}
	// COVA_VM_AGENT tests an agent built elsewhere (default bin/cova-agent).
	agentBin := os.Getenv("COVA_VM_AGENT")
	if agentBin == "" {
		var err error
		if agentBin, err = filepath.Abs(filepath.Join("..", "..", "bin", "cova-agent")); err != nil {
			return nil, "", err
		}
	}
	files := append([]rootfs.FileMapping(nil), mkfsFiles...)
	for _, lib := range mkfsLibs {
		files = append(files, rootfs.FileMapping{Src: filepath.Join("/lib/x86_64-linux-gnu", lib), Dst: filepath.Join("/lib/x86_64-linux-gnu", lib)})
	}
	for _, f := range files {
		if _, err := os.Stat(f.Src); err != nil {
			return nil, fmt.Sprintf("mkfs.ext4 for the guest: %v", err), nil
		}
	}
	allowAll := filepath.Join(envDir, "dm-allow-all.rego")
	if err := os.WriteFile(allowAll, []byte(policy.AllowAllPolicy()), 0o644); err != nil {
		return nil, "", err
	}
	files = append(files, rootfs.FileMapping{Src: allowAll, Dst: "/etc/kata-opa/default-policy.rego"})
	d := &dmEnv{env: e, initrd: filepath.Join(envDir, "initrd-dm.img")}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f, err := os.OpenFile(d.initrd, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, "", err
	}
	res, err := rootfs.Build(ctx, f, rootfs.Options{
		Agent:         agentBin,
		KernelDir:     e.kernel.Root,
		KernelRelease: e.kernel.Release,
		Modules:       append(append([]string(nil), guestModules...), dmModules...),
		Files:         files,
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, "", fmt.Errorf("building the device-mapper initrd: %w", err)
	}
	d.modules = res.Modules
	return d, "", nil
}

// boot starts a VM on the device-mapper initrd.
func (d *dmEnv) boot(t *testing.T, disks ...Disk) *VM {
	t.Helper()
	return d.bootWith(t, "", disks...)
}

// bootWith starts a VM on the device-mapper initrd with extra kernel
// command-line arguments.
func (d *dmEnv) bootWith(t *testing.T, extra string, disks ...Disk) *VM {
	t.Helper()
	args := "agent.kernel_modules=" + strings.Join(d.modules, ",") + " agent.log=debug"
	if extra != "" {
		args += " " + extra
	}
	return bootConfig(t, Config{
		Kernel: d.kernel.Image, Initrd: d.initrd,
		Append: args,
		Dir:    vmDir(t), Disks: disks,
	})
}

// busyboxExt4 writes an ext4 image (4096-byte blocks, size a multiple of
// them) holding a busybox root with an empty /data and the extra files.
func busyboxExt4(ctx context.Context, t *testing.T, e *env, size string, extra map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	makeBusybox(t, e.busybox, tree, extra)
	if err := os.MkdirAll(filepath.Join(tree, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "rootfs.ext4")
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", tree, img, size).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return img
}

// consoleHas waits up to 5 s for text on the guest console: a log line
// written just before an RPC answers can reach the host's serial reader
// after the answer does.
func consoleHas(v *VM, text string) bool {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if strings.Contains(v.Console(), text) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}
