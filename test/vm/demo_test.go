package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/agent/policy"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/protocols/types"
)

// TestDemo is `make demo`: the confidential pod flow as far as it exists
// today, step by step with timings. The host pushes an image to its local
// registry; a measured initrd boots under QEMU (TCG) with an initdata disk
// carrying the workload policy and the registry configuration; the harness
// drives the agent as the Kata shim would; the guest pulls and runs the
// image; the policy refuses the host a shell; the VM powers itself off.
func TestDemo(t *testing.T) {
	e := needEnv(t)
	step := func(start time.Time, format string, args ...any) {
		t.Logf("%-62s %8v", fmt.Sprintf(format, args...), time.Since(start).Round(time.Millisecond))
	}
	t0 := time.Now()
	digest := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		return hex.EncodeToString(s[:8])
	}
	step(t0, "initrd %s (sha256 %s…), kernel %s", filepath.Base(e.initrd), digest(e.initrd), e.kernel.Release)

	t1 := time.Now()
	guestReg := pushBusybox(t, e, "demo/busybox")
	step(t1, "local registry (guest sees %s): pushed demo/busybox:latest", guestReg)

	// The workload's policy: everything but a shell for the host.
	pol := strings.Replace(policy.AllowAllPolicy(), "default ExecProcessRequest := true", "default ExecProcessRequest := false", 1)
	cdh := fmt.Sprintf("[image]\n[[image.registry_config.registry]]\nprefix = %q\ninsecure = true\n", guestReg)
	doc := "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"cdh.toml\" = '''\n" + cdh + "'''\n\"policy.rego\" = '''\n" + pol + "'''\n"
	sum := sha256.Sum256([]byte(doc))
	disk := Disk{Path: initdataDisk(t, []byte(doc), false), ReadOnly: true, Slot: 3}
	t.Logf("initdata sha256 %s (policy.rego: no exec; cdh.toml: the registry)", hex.EncodeToString(sum[:]))

	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	t2 := time.Now()
	v := bootConfig(t, Config{Kernel: e.kernel.Image, Initrd: e.initrd, Append: e.cmdline(), Dir: vmDir(t), Disks: []Disk{disk}, Net: true})
	a, tm := connect(ctx, t, v)
	step(t2, "VM booted (TCG), agent answers Check (agent start-up %.0f ms)", tm.agentMS)

	t3 := time.Now()
	if _, err := a.UpdateInterface(ctx, &pb.UpdateInterfaceRequest{Interface: &types.Interface{
		HwAddr: GuestMAC, Name: "eth0", Mtu: 1500,
		IPAddresses: []*types.IPAddress{{Family: types.IPFamily_v4, Address: "10.0.2.15", Mask: "24"}},
	}}); err != nil {
		t.Fatalf("UpdateInterface: %v", err)
	}
	if _, err := a.UpdateRoutes(ctx, &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{
		{Dest: "0.0.0.0/0", Gateway: "10.0.2.2", Device: "eth0", Family: types.IPFamily_v4},
	}}}); err != nil {
		t.Fatalf("UpdateRoutes: %v", err)
	}
	const sid = "demo"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova-demo"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	step(t3, "network (UpdateInterface, UpdateRoutes) and CreateSandbox")

	t4 := time.Now()
	mp := filepath.Join("/run/kata-containers", sid, "rootfs")
	storages := []*pb.Storage{{
		Driver: "image_guest_pull", Source: guestReg + "/demo/busybox:latest", Fstype: "overlay", MountPoint: mp,
		DriverOptions: []string{`image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}`},
	}}
	spec := containerSpec(mp, "sh", "-c", "echo hello from a guest-pulled container on $(uname -s) $(cat /proc/sys/kernel/hostname)")
	spec.Root.Readonly = false
	spec.Hostname = ""
	w, errOut, st := runContainer(ctx, t, a, sid, spec, storages)
	step(t4, "guest pull + create + start + wait (exit %d)", st)
	t.Logf("container output: %s", strings.TrimSpace(w))
	if st != 0 || !strings.Contains(w, "hello from a guest-pulled container") {
		t.Fatalf("container: %q %q %d", w, errOut, st)
	}
	if !strings.Contains(v.Console(), `"msg":"image pulled"`) {
		t.Error("no image pulled line on the console")
	}

	_, err := a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: sid, ExecId: "shell"})
	s, _ := status.FromError(err)
	t.Logf("host asks for a shell: %s", s.Message())
	if err == nil {
		t.Fatal("exec was allowed")
	}
	t5 := time.Now()
	off := powerOff(ctx, t, a, v)
	step(t5, "DestroySandbox: VM powered off (%v)", off.Round(time.Millisecond))
	step(t0, "total")
}
