package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/agent/ocispec"

	pb "github.com/cova-project/cova/protocols/grpc"
)

// TestTrustedImageStore: the host offers a blank disk as Kata's
// /dev/trusted_store; the agent moves the image layer store onto it as an
// ephemeral dm-crypt volume before the guest pull, the container does not
// see the device, and after the VM is gone the host's disk image holds
// neither the image's plaintext nor a file system signature.
func TestTrustedImageStore(t *testing.T) {
	t.Parallel()
	d := needDM(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	guestReg := pushBusybox(t, d.env, "trusted/busybox")
	cdh := fmt.Sprintf("[image]\n[[image.registry_config.registry]]\nprefix = %q\ninsecure = true\n", guestReg)
	doc := "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"cdh.toml\" = '''\n" + cdh + "'''\n"
	idDisk := Disk{Path: initdataDisk(t, []byte(doc), false), ReadOnly: true, Slot: 3}
	blank := filepath.Join(t.TempDir(), "trusted.img")
	if err := os.WriteFile(blank, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(blank, 48<<20); err != nil {
		t.Fatal(err)
	}
	store := Disk{Path: blank, Slot: 4}
	v := bootConfig(t, Config{
		Kernel: d.kernel.Image, Initrd: d.initrd,
		Append: "agent.kernel_modules=" + strings.Join(d.modules, ",") + " agent.log=debug",
		Dir:    vmDir(t), Disks: []Disk{idDisk, store}, Net: true,
	})
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)
	guestNetwork(ctx, t, a)
	const sid = "sandbox-trusted"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	mp := filepath.Join("/run/kata-containers", sid, "rootfs")
	spec := containerSpec(mp, "sh", "-c", "echo pulled onto the trusted store; ls /dev/trusted_store 2>&1; true")
	spec.Root.Readonly = false
	spec.Linux.Devices = append(spec.Linux.Devices, specs.LinuxDevice{Path: "/dev/trusted_store", Type: "b"})
	w, err := ocispec.FromSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: sid, ExecId: sid, OCI: w,
		Devices: []*pb.Device{{Id: store.PCIPath(), Type: "blk", ContainerPath: "/dev/trusted_store"}},
		Storages: []*pb.Storage{{
			Driver: "image_guest_pull", Source: guestReg + "/trusted/busybox:latest", Fstype: "overlay", MountPoint: mp,
			DriverOptions: []string{`image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}`},
		}}})
	if err != nil {
		t.Fatalf("CreateContainer with /dev/trusted_store: %v\n%s", err, tail(v.Console(), 30))
	}
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: sid}); err != nil {
		t.Fatal(err)
	}
	out := string(a.ReadAll(ctx, sid, sid, false))
	if _, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: sid, ExecId: sid}); err != nil {
		t.Fatal(err)
	}
	t.Logf("encrypted store + guest pull + run: %v; output %q", time.Since(start).Round(time.Millisecond), out)
	if !strings.HasPrefix(out, "pulled onto the trusted store\n") || !strings.Contains(out, "No such file") {
		t.Errorf("container output %q: want the greeting and no /dev/trusted_store inside", out)
	}
	if !strings.Contains(v.Console(), "image store moved onto the trusted device") {
		t.Errorf("the console does not say the store moved:\n%s", tail(v.Console(), 30))
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox", powerOff(ctx, t, a, v).Round(time.Millisecond))

	raw, err := os.ReadFile(blank)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(d.env.busybox)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, bb[4096:8192]) {
		t.Error("the trusted disk holds plaintext busybox bytes")
	}
	if raw[1080] == 0x53 && raw[1081] == 0xef {
		t.Error("the trusted disk holds a plain ext4 superblock")
	}
	if len(bytes.Trim(raw, "\x00")) == 0 {
		t.Error("the trusted disk is blank: the layers did not go there")
	}
}
