package e2e

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	agentBin, ctl := bin(t, "cova-agent"), bin(t, "cova-ctl")
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

	dir := t.TempDir()
	sock := filepath.Join(dir, "a.sock")
	addr := "unix://" + sock
	var logs strings.Builder
	agent := exec.Command(agentBin, "--listen", addr, "--root", filepath.Join(dir, "state"), "--insecure-registry", reg.Host)
	agent.Stderr = &logs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Signal(os.Interrupt)
		_ = agent.Wait()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent did not listen")
		}
		time.Sleep(5 * time.Millisecond)
	}
	guestRoot := filepath.Join(dir, "state", "kata-containers")
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
	// Unpinned pulls from a registry the agent was not told is insecure fail clearly.
	out, err := exec.Command(ctl, "--addr", addr, "run", "--image", "127.0.0.1:1/none:latest", "--guest-root", guestRoot, "--", "true").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "CreateContainer") {
		t.Fatalf("pull from nowhere: %q %v", out, err)
	}
}
