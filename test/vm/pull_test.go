package vm

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cova-project/cova/agent/ocispec"
	"github.com/cova-project/cova/agent/policy"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/test/regtest"
)

// pushBusybox starts a local registry, pushes a busybox image as
// repo:latest and returns the registry's address as the guest sees it
// (10.0.2.2 through QEMU user networking).
func pushBusybox(t *testing.T, e *env, repo string) string {
	t.Helper()
	regtest.Require(t, "docker-registry", "umoci", "skopeo")
	reg := regtest.Start(t)
	l := regtest.NewLayout(t, "latest")
	l.Insert(e.busybox, "/bin/busybox")
	tree := t.TempDir()
	if err := os.MkdirAll(filepath.Join(tree, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "echo", "cat", "uname"} {
		if err := os.Symlink("busybox", filepath.Join(tree, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	l.Insert(filepath.Join(tree, "bin"), "/bin")
	l.Push(reg.Host, repo, "latest")
	return "10.0.2.2:" + reg.Host[strings.LastIndexByte(reg.Host, ':')+1:]
}

// TestGuestPullFromHostRegistry is the CoCo guest-pull flow in a real guest:
// the host pushes busybox to its local registry; initdata's cdh.toml tells
// the agent that registry (reached at 10.0.2.2 through QEMU user networking)
// is plain HTTP; the harness configures the guest NIC and route with the
// agent's network rpcs as the shim does, then creates a container whose
// rootfs is an image_guest_pull storage. The agent pulls, verifies and
// unpacks the image inside the guest and runs it.
func TestGuestPullFromHostRegistry(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	guestReg := pushBusybox(t, e, "test/busybox")
	cdh := fmt.Sprintf("[image]\n[[image.registry_config.registry]]\nprefix = %q\ninsecure = true\n", guestReg)
	doc := "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"cdh.toml\" = '''\n" + cdh + "'''\n\"policy.rego\" = '''\n" + policy.AllowAllPolicy() + "'''\n"
	disk := Disk{Path: initdataDisk(t, []byte(doc), false), ReadOnly: true, Slot: 3}

	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	v := bootConfig(t, Config{Kernel: e.kernel.Image, Initrd: e.initrd, Append: e.cmdline(), Dir: vmDir(t), Disks: []Disk{disk}, Net: true})
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)

	// The shim's network setup: NIC by MAC, address, default route.
	guestNetwork(ctx, t, a)

	const sid = "sandbox-pull"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	mp := filepath.Join("/run/kata-containers", sid, "rootfs")
	storages := []*pb.Storage{{
		Driver: "image_guest_pull", Source: guestReg + "/test/busybox:latest", Fstype: "overlay", MountPoint: mp,
		DriverOptions: []string{`image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}`},
	}}
	spec := containerSpec(mp, "sh", "-c", "echo pulled in the guest; uname -s")
	spec.Root.Readonly = false
	start := time.Now()
	out, errOut, status := runContainer(ctx, t, a, sid, spec, storages)
	t.Logf("guest pull + container: %v", time.Since(start).Round(time.Millisecond))
	if out != "pulled in the guest\nLinux\n" || status != 0 {
		t.Fatalf("container: stdout %q stderr %q status %d", out, errOut, status)
	}
	if !strings.Contains(v.Console(), "image pulled") {
		t.Error("no \"image pulled\" line on the console")
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox", powerOff(ctx, t, a, v).Round(time.Millisecond))
}

// TestGuestPullRefusedBySignaturePolicy: initdata's cdh.toml carries an
// image security policy that rejects everything; the guest refuses the
// image before it fetches any layer, and the container is not created.
func TestGuestPullRefusedBySignaturePolicy(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	guestReg := pushBusybox(t, e, "test/busybox")
	cdh := fmt.Sprintf("[image]\nimage_security_policy = '{\"default\":[{\"type\":\"reject\"}]}'\n[[image.registry_config.registry]]\nprefix = %q\ninsecure = true\n", guestReg)
	doc := "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"cdh.toml\" = '''\n" + cdh + "'''\n\"policy.rego\" = '''\n" + policy.AllowAllPolicy() + "'''\n"
	disk := Disk{Path: initdataDisk(t, []byte(doc), false), ReadOnly: true, Slot: 3}
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	v := bootConfig(t, Config{Kernel: e.kernel.Image, Initrd: e.initrd, Append: e.cmdline(), Dir: vmDir(t), Disks: []Disk{disk}, Net: true})
	a, _ := connect(ctx, t, v)
	guestNetwork(ctx, t, a)
	const sid = "sandbox-reject"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid}); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join("/run/kata-containers", sid, "rootfs")
	w, err := ocispec.FromSpec(containerSpec(mp, "true"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: sid, ExecId: sid, OCI: w, Storages: []*pb.Storage{{
		Driver: "image_guest_pull", Source: guestReg + "/test/busybox:latest", Fstype: "overlay", MountPoint: mp,
	}}})
	if err == nil || !strings.Contains(err.Error(), "reject") {
		t.Fatalf("CreateContainer under a reject-all image policy: %v", err)
	}
	t.Logf("refused: %v", err)
	if strings.Contains(v.Console(), `"msg":"layer pulled"`) {
		t.Error("a layer was pulled before the policy decided")
	}
	powerOff(ctx, t, a, v)
}
