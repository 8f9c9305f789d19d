package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/agent/ocispec"
	"github.com/cova-project/cova/agent/policy"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/rootfs"
	"github.com/cova-project/cova/test/testutil"
)

// guestModules are the modules the tests need: virtio-serial for the agent
// port, virtio-blk for disks, ext4 (built into Debian's cloud kernel).
var guestModules = []string{"virtio_pci", "virtio_console", "virtio_blk", "ext4", "virtio_net", "overlay"}

// Time limits. A boot under TCG answers its first rpc in ~3 s; the limits
// leave room for a loaded machine.
const (
	readyTimeout    = 45 * time.Second
	scenarioTimeout = 90 * time.Second
	poweroffTimeout = 20 * time.Second
)

// sharedKataDir is where CopyFile writes (the agent's copyfile root).
const sharedKataDir = "/run/kata-containers/shared/containers"

// env is what every boot shares: the kernel and the initrd, made once.
type env struct {
	kernel Kernel
	// initrd carries an allow-all /etc/kata-opa/default-policy.rego (as
	// kata's test images do); initrdCoco has no policy file, so the agent
	// enforces its built-in CoCo default.
	initrd     string
	initrdCoco string
	modules    []string // load order, for agent.kernel_modules
	busybox    string   // static busybox on the host
}

var (
	envOnce   sync.Once
	sharedEnv *env
	envSkip   string // why the VM tests cannot run here
	envErr    error  // a real failure while preparing
	envDir    string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if envDir != "" {
		os.RemoveAll(envDir)
	}
	os.Exit(code)
}

// unavailable skips the test, or fails it under CI=true, where .ci/run
// (test/vm/deps.sh) must have installed everything.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if testutil.InCI() {
		t.Fatalf("%s (CI=true: .ci/run must run test/vm/deps.sh)", msg)
	}
	t.Skip(msg)
}

func needEnv(t testing.TB) *env {
	t.Helper()
	envOnce.Do(func() { sharedEnv, envSkip, envErr = prepare() })
	if envErr != nil {
		t.Fatal(envErr)
	}
	if envSkip != "" {
		unavailable(t, "%s", envSkip)
	}
	return sharedEnv
}

// prepare finds QEMU, the agent and busybox, fetches the kernel and builds
// the initrd. It returns a skip reason for what this machine lacks.
func prepare() (*env, string, error) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return nil, "qemu-system-x86_64 is not installed (bash test/vm/deps.sh)", nil
	}
	agentBin, err := filepath.Abs(filepath.Join("..", "..", "bin", "cova-agent"))
	if err != nil {
		return nil, "", err
	}
	if _, err := os.Stat(agentBin); err != nil {
		return nil, "bin/cova-agent is not built (make build)", nil
	}
	bb := ""
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if out, err := exec.Command("file", "-L", p).Output(); err == nil && strings.Contains(string(out), "statically linked") {
			bb = p
			break
		}
	}
	if bb == "" {
		return nil, "no static busybox (apt-get install busybox-static file)", nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	k, err := FetchKernel(ctx, "fetch-kernel.sh")
	if err != nil {
		return nil, fmt.Sprintf("cannot get the guest kernel: %v", err), nil
	}
	envDir, err = os.MkdirTemp("", "cova-vm-")
	if err != nil {
		return nil, "", err
	}
	e := &env{kernel: k, initrd: filepath.Join(envDir, "initrd.img"), initrdCoco: filepath.Join(envDir, "initrd-coco.img"), busybox: bb}
	allowAll := filepath.Join(envDir, "allow-all.rego")
	if err := os.WriteFile(allowAll, []byte(policy.AllowAllPolicy()), 0o644); err != nil {
		return nil, "", err
	}
	var res rootfs.Result
	for _, img := range []struct {
		path  string
		files []rootfs.FileMapping
	}{
		{e.initrd, []rootfs.FileMapping{{Src: allowAll, Dst: "/etc/kata-opa/default-policy.rego"}}},
		{e.initrdCoco, nil},
	} {
		f, err := os.OpenFile(img.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return nil, "", err
		}
		r, err := rootfs.Build(ctx, f, rootfs.Options{
			Agent:         agentBin,
			KernelDir:     k.Root,
			KernelRelease: k.Release,
			Modules:       guestModules,
			Files:         img.files,
		})
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, "", fmt.Errorf("building the initrd: %w", err)
		}
		res = r
	}
	e.modules = res.Modules
	return e, "", nil
}

// cmdline is the Append of every boot.
func (e *env) cmdline() string {
	return "agent.kernel_modules=" + strings.Join(e.modules, ",") + " agent.log=debug"
}

// vmDir returns a short per-test directory (unix socket paths are short).
func vmDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cova-vm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// boot starts the VM and registers a cleanup that kills it and prints the
// console tail when the test failed (or COVA_VM_CONSOLE is set).
func boot(t testing.TB, e *env, disks ...Disk) *VM {
	t.Helper()
	return bootWith(t, e, "", disks...)
}

// bootWith boots with extra kernel command line words.
func bootWith(t testing.TB, e *env, extra string, disks ...Disk) *VM {
	t.Helper()
	return bootInitrd(t, e, e.initrd, extra, disks...)
}

func bootInitrd(t testing.TB, e *env, initrd, extra string, disks ...Disk) *VM {
	t.Helper()
	return bootConfig(t, Config{Kernel: e.kernel.Image, Initrd: initrd, Append: strings.TrimSpace(e.cmdline() + " " + extra), Dir: vmDir(t), Disks: disks})
}

func bootConfig(t testing.TB, c Config) *VM {
	t.Helper()
	v, err := Start(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		v.Kill()
		if t.Failed() || os.Getenv("COVA_VM_CONSOLE") != "" {
			t.Logf("guest console (%s), last lines:\n%s", v.ConsoleLog, tail(v.Console(), 60))
		}
	})
	return v
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// timings are what a boot measured.
type timings struct {
	firstRPC  time.Duration // QEMU start -> first Check answered
	agentMS   float64       // agent exec -> listening, from its log
	haveAgent bool
}

func (tm timings) String() string {
	a := "n/a"
	if tm.haveAgent {
		a = fmt.Sprintf("%.1f ms", tm.agentMS)
	}
	return fmt.Sprintf("QEMU start -> first Check %v; agent startup %s", tm.firstRPC.Round(time.Millisecond), a)
}

// connect dials the agent and waits until Check answers.
func connect(ctx context.Context, t testing.TB, v *VM) (*Agent, timings) {
	t.Helper()
	a, err := v.Dial(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	rctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	if err := a.WaitReady(rctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	tm := timings{firstRPC: time.Since(v.Started)}
	// The "agent listening" line comes before the answer on the console,
	// but the console is read asynchronously: give it a moment.
	for i := 0; i < 50; i++ {
		if tm.agentMS, tm.haveAgent = v.AgentStartup(); tm.haveAgent {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return a, tm
}

// powerOff sends DestroySandbox and asserts QEMU exits by itself.
func powerOff(ctx context.Context, t testing.TB, a *Agent, v *VM) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := a.DestroySandbox(ctx, &pb.DestroySandboxRequest{}); err != nil {
		t.Fatalf("DestroySandbox: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, poweroffTimeout)
	defer cancel()
	if err := v.Wait(wctx); err != nil {
		t.Fatalf("after DestroySandbox: %v", err)
	}
	return time.Since(start)
}

// makeBusybox writes a minimal busybox root: the binary, the applets the
// tests run, the mount points runc needs, passwd and group.
func makeBusybox(t testing.TB, bb, dir string, extra map[string]string) {
	t.Helper()
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "etc", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":  "root:x:0:\n",
	}
	for k, v := range extra {
		files[k] = v
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "echo", "cat", "grep", "ls", "uname", "ps", "date", "sleep", "nc", "tail"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
}

// containerSpec is runc's default spec (what `runc spec` writes) for root,
// without a network namespace (the agent owns the sandbox's network).
func containerSpec(root string, args ...string) *specs.Spec {
	caps := []string{"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"}
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: root, Readonly: true},
		Process: &specs.Process{
			Args: args,
			Env:  []string{"PATH=/bin", "TERM=xterm"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Permitted: caps, Effective: caps,
			},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
			NoNewPrivileges: true,
		},
		Hostname: "cova",
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		},
		Linux: &specs.Linux{
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
			Resources:     &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}},
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
			},
		},
	}
}

// runContainer creates, starts and waits for container cid (the sandbox's
// first container, so its exec id is its id), returning its output and
// exit status, then removes it.
func runContainer(ctx context.Context, t testing.TB, a *Agent, cid string, spec *specs.Spec, storages []*pb.Storage) (stdout, stderr string, status int32) {
	t.Helper()
	w, err := ocispec.FromSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: cid, ExecId: cid, OCI: w, Storages: storages}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: cid}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	var outs [2][]byte
	var wg sync.WaitGroup
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i] = a.ReadAll(ctx, cid, cid, i == 1)
		}()
	}
	r, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: cid, ExecId: cid})
	if err != nil {
		t.Fatalf("WaitProcess: %v", err)
	}
	wg.Wait()
	if _, err := a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: cid, Timeout: 10}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	return string(outs[0]), string(outs[1]), r.GetStatus()
}

const script = `echo "hello from $(uname -s)"; cat /etc/marker; echo oops >&2; exit 7`

// TestBusyboxCopyFile boots the initrd and runs a busybox container whose
// rootfs the host pushed with CopyFile, as the shim does without a shared
// file system, then destroys the sandbox and expects QEMU to exit.
func TestBusyboxCopyFile(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()

	host := t.TempDir()
	makeBusybox(t, e.busybox, host, map[string]string{"etc/marker": "copied\n"})

	v := boot(t, e)
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)

	const sid = "sandbox-copyfile"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	root := filepath.Join(sharedKataDir, sid, "rootfs")
	start := time.Now()
	reqs, n, err := a.CopyDir(ctx, host, root)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("CopyFile: %d requests, %d bytes in %v", reqs, n, time.Since(start).Round(time.Millisecond))

	start = time.Now()
	out, errOut, status := runContainer(ctx, t, a, sid, containerSpec(root, "sh", "-c", script), nil)
	t.Logf("container: create..remove in %v", time.Since(start).Round(time.Millisecond))
	if out != "hello from Linux\ncopied\n" || errOut != "oops\n" || status != 7 {
		t.Errorf("container: stdout %q stderr %q status %d; want %q %q 7", out, errOut, status, "hello from Linux\ncopied\n", "oops\n")
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox", powerOff(ctx, t, a, v).Round(time.Millisecond))
}

// TestPID1GuestRPCs boots with cgroup v2 and checks what only a guest may
// do: the shared sandbox PID namespace (pause container), cgroup v2 stats,
// setting the clock, onlining CPUs, and guest details as PID 1.
func TestPID1GuestRPCs(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	host := t.TempDir()
	makeBusybox(t, e.busybox, host, nil)
	v := bootWith(t, e, "systemd.unified_cgroup_hierarchy=1")
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)

	d, err := a.GetGuestDetails(ctx, &pb.GuestDetailsRequest{})
	if err != nil || !d.GetAgentDetails().GetInitDaemon() {
		t.Fatalf("GetGuestDetails: %v, %v (want init_daemon true)", d, err)
	}
	const sid = "sandbox-pid1"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova", SandboxPidns: true}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	root := filepath.Join(sharedKataDir, sid, "rootfs")
	if _, _, err := a.CopyDir(ctx, host, root); err != nil {
		t.Fatal(err)
	}
	// The pause container (id == sandbox id) owns the sandbox pid namespace.
	pause, err := ocispec.FromSpec(containerSpec(root, "sleep", "600"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: sid, ExecId: sid, OCI: pause}); err != nil {
		t.Fatalf("CreateContainer(pause): %v", err)
	}
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: sid}); err != nil {
		t.Fatal(err)
	}
	st, err := a.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: sid})
	if err != nil || st.GetCgroupStats().GetPidsStats().GetCurrent() == 0 {
		t.Fatalf("StatsContainer on cgroup v2: %v, %v (want pids.current > 0)", st, err)
	}
	if _, err := a.SetGuestDateTime(ctx, &pb.SetGuestDateTimeRequest{Sec: 1893456000}); err != nil { // 2030-01-01
		t.Fatalf("SetGuestDateTime: %v", err)
	}
	if _, err := a.OnlineCPUMem(ctx, &pb.OnlineCPUMemRequest{NbCpus: 0, CpuOnly: true}); err != nil {
		t.Fatalf("OnlineCPUMem: %v", err)
	}
	out, _, status := runContainer(ctx, t, a, "worker", containerSpec(root, "sh", "-c", "date -u +%Y; ps -o comm | grep -c sleep"), nil)
	if status != 0 || out != "2030\n1\n" {
		t.Errorf("worker in the sandbox pid namespace: stdout %q status %d; want the 2030 clock and the pause's sleep", out, status)
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox", powerOff(ctx, t, a, v).Round(time.Millisecond))
}

// TestCocoDefaultPolicy boots an initrd without a policy file: the agent
// enforces its built-in CoCo default, so the host runs the pod but gets no
// exec, no output, no clock, and a one-line reason for each refusal.
func TestCocoDefaultPolicy(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	// initdata carries only cdh.toml (the host's registry is plain HTTP), no
	// policy.rego, and initrdCoco no default policy file: coco-default rules.
	guestReg := pushBusybox(t, e, "coco/busybox")
	cdh := fmt.Sprintf("[image]\n[[image.registry_config.registry]]\nprefix = %q\ninsecure = true\n", guestReg)
	doc := "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"cdh.toml\" = '''\n" + cdh + "'''\n"
	disk := Disk{Path: initdataDisk(t, []byte(doc), false), ReadOnly: true, Slot: 3}
	v := bootConfig(t, Config{Kernel: e.kernel.Image, Initrd: e.initrdCoco, Append: e.cmdline(), Dir: vmDir(t), Disks: []Disk{disk}, Net: true})
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)
	guestNetwork(ctx, t, a)
	const sid = "sandbox-coco"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	// A rootfs the host provides (copied in, or a disk) is refused: under
	// the CoCo default the image is pulled in the guest.
	hostRoot, err := ocispec.FromSpec(containerSpec(filepath.Join(sharedKataDir, sid, "rootfs"), "true"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: sid, ExecId: sid, OCI: hostRoot})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "no image_guest_pull storage provides the rootfs") {
		t.Fatalf("CreateContainer with a host rootfs under the CoCo default: %v", err)
	}
	mp := filepath.Join("/run/kata-containers", sid, "rootfs")
	spec, err := ocispec.FromSpec(containerSpec(mp, "sh", "-c", "echo secret-output; sleep 600"))
	if err != nil {
		t.Fatal(err)
	}
	spec.Root.Readonly = false
	storages := []*pb.Storage{{
		Driver: "image_guest_pull", Source: guestReg + "/coco/busybox:latest", Fstype: "overlay", MountPoint: mp,
		DriverOptions: []string{`image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}`},
	}}
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: sid, ExecId: sid, OCI: spec, Storages: storages}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: sid}); err != nil {
		t.Fatal(err)
	}
	_, err = a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: sid, ExecId: "shell", Process: spec.Process})
	if st, _ := status.FromError(err); err == nil || st.Code() != codes.PermissionDenied ||
		!strings.Contains(st.Message(), "ExecProcessRequest is blocked by policy") || strings.Contains(st.Message(), "\n") {
		t.Fatalf("ExecProcess under the CoCo default: %v; want one-line PERMISSION_DENIED", err)
	} else {
		t.Logf("exec refused: %s", st.Message())
	}
	r, err := a.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: sid, ExecId: sid, Len: 1024})
	if err != nil || len(r.GetData()) != 0 {
		t.Fatalf("ReadStdout under the CoCo default = %q, %v; want empty data", r.GetData(), err)
	}
	_, err = a.SetGuestDateTime(ctx, &pb.SetGuestDateTimeRequest{Sec: 1893456000})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied {
		t.Fatalf("SetGuestDateTime under the CoCo default: %v", err)
	}
	if _, err := a.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: sid, ExecId: sid, Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: sid, ExecId: sid}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(v.Console(), "builtin:coco-default") {
		t.Error("the console does not say the built-in CoCo default policy was loaded")
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox", powerOff(ctx, t, a, v).Round(time.Millisecond))
}

// TestBusyboxBlk runs a busybox container from an ext4 image attached
// read-only as a virtio-blk disk and handed to the agent as a "blk" storage
// by PCI path.
func TestBusyboxBlk(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		unavailable(t, "mkfs.ext4 is not installed (apt-get install e2fsprogs)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()

	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	makeBusybox(t, e.busybox, tree, map[string]string{"etc/marker": "from the disk\n"})
	img := filepath.Join(dir, "rootfs.ext4")
	if out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", "-L", "cova-rootfs", "-E", "root_owner=0:0", "-d", tree, img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}

	disk := Disk{Path: img, ReadOnly: true, Slot: 3}
	v := boot(t, e, disk)
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)

	const sid = "sandbox-blk"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	mp := filepath.Join("/run/kata-containers", sid, "rootfs")
	storages := []*pb.Storage{{Driver: "blk", Source: disk.PCIPath(), Fstype: "ext4", Options: []string{"ro"}, MountPoint: mp}}
	start := time.Now()
	out, errOut, status := runContainer(ctx, t, a, sid, containerSpec(mp, "sh", "-c", script), storages)
	t.Logf("container: create (mount %s) .. remove in %v", disk.PCIPath(), time.Since(start).Round(time.Millisecond))
	if out != "hello from Linux\nfrom the disk\n" || errOut != "oops\n" || status != 7 {
		t.Errorf("container: stdout %q stderr %q status %d; want %q %q 7", out, errOut, status, "hello from Linux\nfrom the disk\n", "oops\n")
	}
	if !bytes.Contains([]byte(v.Console()), []byte("block device found")) {
		t.Errorf("the console has no \"block device found\" line for %s", disk.PCIPath())
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox", powerOff(ctx, t, a, v).Round(time.Millisecond))
}

// BenchmarkBoot measures QEMU start -> first rpc answered, the agent's own
// exec -> listening, and DestroySandbox -> QEMU exit (make bench-boot).
func BenchmarkBoot(b *testing.B) {
	e := needEnv(b)
	var first, agent, off float64
	for i := 0; i < b.N; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
		v := boot(b, e)
		a, tm := connect(ctx, b, v)
		off += float64(powerOff(ctx, b, a, v).Microseconds()) / 1000
		first += float64(tm.firstRPC.Microseconds()) / 1000
		agent += tm.agentMS
		a.Close()
		cancel()
	}
	n := float64(b.N)
	b.ReportMetric(first/n, "first-rpc-ms")
	b.ReportMetric(agent/n, "agent-startup-ms")
	b.ReportMetric(off/n, "poweroff-ms")
}
