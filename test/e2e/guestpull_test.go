package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/agent/ocispec"
	"github.com/cova-project/cova/agent/policy"
	pb "github.com/cova-project/cova/protocols/grpc"

	"github.com/cova-project/cova/test/regtest"
	"github.com/cova-project/cova/test/testutil"
)

// TestRunImageFromLocalRegistry is issue 3's acceptance check: a busybox
// image pushed to a real local registry is pulled by the agent (guest pull,
// image_guest_pull storage) and `cova-ctl run --image` prints its output.
// A second container from the same image reuses the layers.
func TestRunImageFromLocalRegistry(t *testing.T) {
	testutil.RequireRoot(t)
	regtest.Require(t, "docker-registry", "umoci", "skopeo")
	ctl := bin(t, "cova-ctl")
	reg := pushBusybox(t)

	ag := startAgent(t, "--insecure-registry", reg.Host)
	addr, logs := ag.addr, ag.logs
	guestRoot := ag.guestRoot()
	image := reg.Host + "/test/busybox:latest"
	for i, want := range []string{"hi\n", "again\n"} {
		start := time.Now()
		out, err := exec.Command(ctl, "--addr", addr, "run", "--image", image, "--guest-root", guestRoot, "--", "echo", strings.TrimSpace(want)).Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("run %d: %v: %s", i, err, ee.Stderr)
		}
		if err != nil || string(out) != want {
			t.Fatalf("run %d = %q, %v; want %q", i, out, err, want)
		}
		t.Logf("run --image #%d: %v", i+1, time.Since(start).Round(time.Millisecond))
	}
	if !strings.Contains(logs.String(), `"msg":"image pulled"`) {
		t.Error("the agent log has no image pulled line")
	}
	// The CDH's PullImage (what other guest tools use) with the same puller.
	bundle := filepath.Join(guestRoot, "cdh-bundle")
	cdhSock := "unix://" + filepath.Join(ag.dir, "state", "cdh.sock")
	out, err := exec.Command(ctl, "pull", "--cdh", cdhSock, "--bundle", bundle, image).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "sha256:") {
		t.Fatalf("cova-ctl pull = %q, %v", out, err)
	}
	if fi, err := os.Stat(filepath.Join(bundle, "rootfs", "bin", "busybox")); err != nil || fi.Size() == 0 {
		t.Fatalf("pulled bundle rootfs: %v", err)
	}
	// GetMetrics carries the puller's counters: two pulls, the second
	// from the layer cache.
	m, err := exec.Command(ctl, "--addr", addr, "metrics").Output()
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	for _, want := range []string{"cova_imagepull_pulls_succeeded_total 3", "cova_imagepull_layers_from_cache_total"} {
		if !strings.Contains(string(m), want) {
			t.Errorf("GetMetrics lacks %q:\n%s", want, m)
		}
	}
	// Unpinned pulls from a registry the agent was not told is insecure fail clearly.
	out, err = exec.Command(ctl, "--addr", addr, "run", "--image", "127.0.0.1:1/none:latest", "--guest-root", guestRoot, "--", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "CreateContainer") {
		t.Fatalf("pull from nowhere: %q %v", out, err)
	}
}

// pushBusybox starts a real registry holding test/busybox:latest (busybox
// with sh, echo and cat).
func pushBusybox(t *testing.T) *regtest.Registry {
	t.Helper()
	reg := regtest.Start(t)
	l := regtest.NewLayout(t, "latest")
	l.Insert("/bin/busybox", "/bin/busybox")
	tree := t.TempDir()
	if err := os.MkdirAll(filepath.Join(tree, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "echo", "cat"} {
		if err := os.Symlink("busybox", filepath.Join(tree, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	l.Insert(filepath.Join(tree, "bin"), "/bin")
	l.Push(reg.Host, "test/busybox", "latest")
	return reg
}

// TestPulledImageDigestPinning: a policy's PulledImage rule pins the tag to
// a manifest digest. The agent evaluates it after the pull resolved the tag
// and before the rootfs is mounted: the wrong digest refuses the container
// with a one-line PERMISSION_DENIED; the right one runs it.
func TestPulledImageDigestPinning(t *testing.T) {
	testutil.RequireRoot(t)
	regtest.Require(t, "docker-registry", "umoci", "skopeo")
	ctl := bin(t, "cova-ctl")
	reg := pushBusybox(t)
	image := reg.Host + "/test/busybox:latest"
	digest := regtest.ManifestDigest(t, reg.Host, "test/busybox", "latest")

	for _, tc := range []struct {
		name, pinned string
		ok           bool
	}{
		{"other digest", "sha256:" + strings.Repeat("0", 64), false},
		{"pulled digest", digest, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pol := filepath.Join(t.TempDir(), "policy.rego")
			rule := fmt.Sprintf("\nPulledImage if {\n\tprint(\"PulledImage: pinned\", input.image, \"to %s, got\", input.digest)\n\tinput.digest == %q\n}\n", tc.pinned, tc.pinned)
			if err := os.WriteFile(pol, []byte(policy.AllowAllPolicy()+rule), 0o644); err != nil {
				t.Fatal(err)
			}
			ag := startAgent(t, "--insecure-registry", reg.Host, "--policy", pol)
			out, err := exec.Command(ctl, "--addr", ag.addr, "run", "--image", image, "--guest-root", ag.guestRoot(), "--", "echo", "pinned").CombinedOutput()
			if tc.ok {
				if err != nil || string(out) != "pinned\n" {
					t.Fatalf("run under the right pin = %q, %v", out, err)
				}
				return
			}
			if err == nil || !strings.Contains(string(out), "PermissionDenied") || !strings.Contains(string(out), "PulledImage is blocked by policy: PulledImage: pinned") {
				t.Fatalf("run under the wrong pin = %q, %v; want PERMISSION_DENIED from PulledImage", out, err)
			}
			if strings.Contains(ag.logs.String(), `"msg":"image rootfs mounted"`) {
				t.Error("a refused image was mounted")
			}
		})
	}
}

// TestPauseContainerFromGuestPull: the shim's pause container with an
// image_guest_pull storage of container type "sandbox" runs the agent binary
// itself as /pause (nothing is pulled); it keeps running, SIGTERM ends it
// with status 0, and removal leaves no rootfs behind.
func TestPauseContainerFromGuestPull(t *testing.T) {
	testutil.RequireRoot(t)
	ag := startAgent(t)
	conn, err := net.Dial("unix", ag.sock)
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()
	c := pb.NewAgentServiceClient(client)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const sid = "sbx"
	if _, err := c.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, SandboxPidns: true}); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join(ag.guestRoot(), sid, "rootfs")
	pauseSpec := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: mp, Readonly: true},
		Process: &specs.Process{Args: []string{"/pause"}, Cwd: "/", User: specs.User{UID: 65535, GID: 65535}, NoNewPrivileges: true},
		Mounts:  []specs.Mount{{Destination: "/proc", Type: "proc", Source: "proc"}},
		Linux:   &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.MountNamespace}}},
	}
	w, err := ocispec.FromSpec(pauseSpec)
	if err != nil {
		t.Fatal(err)
	}
	storage := &pb.Storage{
		Driver: "image_guest_pull", Source: "pause", Fstype: "overlay", MountPoint: mp,
		DriverOptions: []string{`image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"sandbox"}}`},
	}
	if _, err := c.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: sid, ExecId: sid, OCI: w, Storages: []*pb.Storage{storage}}); err != nil {
		t.Fatalf("CreateContainer(pause): %v", err)
	}
	if _, err := c.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: sid}); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = c.WaitProcess(wctx, &pb.WaitProcessRequest{ContainerId: sid})
	wcancel()
	if err == nil {
		t.Fatalf("the pause process exited at once:\n%s", ag.logs.String())
	}
	// SIGTERM ends pause cleanly (exit 0), as Kubernetes' pause does.
	if _, err := c.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: sid, ExecId: sid, Signal: 15}); err != nil {
		t.Fatal(err)
	}
	if r, err := c.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: sid}); err != nil || r.Status != 0 {
		t.Fatalf("pause after SIGTERM: %v %v; want exit 0", r, err)
	}
	if _, err := c.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: sid}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(mp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pause rootfs left behind: %v", err)
	}
}
