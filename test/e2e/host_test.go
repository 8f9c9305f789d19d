// Package e2e drives the built binaries end to end: bin/cova-agent in host
// mode on a unix socket and bin/cova-ctl against it, as a user would.
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

	"github.com/cova-project/cova/test/testutil"
)

func bin(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "bin", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		if testutil.InCI() {
			t.Fatalf("%s is not built: .ci/run must run make build first", name)
		}
		t.Skipf("%s is not built: run make build", name)
	}
	return p
}

func TestAgentAndCtl(t *testing.T) {
	testutil.RequireRoot(t)
	agentBin, ctl := bin(t, "cova-agent"), bin(t, "cova-ctl")
	dir := t.TempDir()
	sock := filepath.Join(dir, "a.sock")
	addr := "unix://" + sock

	out, err := exec.Command(agentBin, "--version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "cova-agent ") {
		t.Fatalf("--version: %q %v", out, err)
	}
	if out, err := exec.Command("file", agentBin).Output(); err != nil || !strings.Contains(string(out), "statically linked") {
		t.Fatalf("agent is not static: %s %v", out, err)
	}

	var logs strings.Builder
	agent := exec.Command(agentBin, "--listen", addr, "--root", filepath.Join(dir, "state"))
	agent.Stderr = &logs
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Process.Signal(os.Interrupt)
		_ = agent.Wait()
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not listen: %v\n%s", err, logs.String())
		}
		time.Sleep(5 * time.Millisecond)
	}

	out, err = exec.Command(ctl, "--addr", addr, "check").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "SERVING" {
		t.Fatalf("check: %q %v", out, err)
	}

	rootfs := testutil.BusyboxRootfs(t)
	run := exec.Command(ctl, "--addr", addr, "run", "--rootfs", rootfs, "--", "sh", "-c", "echo hi; echo err >&2; exit 3")
	var stdout, stderr strings.Builder
	run.Stdout, run.Stderr = &stdout, &stderr
	err = run.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("run exit = %v (stderr %q)", err, stderr.String())
	}
	if stdout.String() != "hi\n" || stderr.String() != "err\n" {
		t.Fatalf("run output: stdout %q stderr %q", stdout.String(), stderr.String())
	}

	// The Attestation Agent API is served in process (host mode: sample TEE).
	aa := "unix://" + filepath.Join(dir, "state", "attestation-agent", "attestation-agent.sock")
	out, err = exec.Command(ctl, "tee", "--aa", aa).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "sample" {
		t.Fatalf("tee: %q %v", out, err)
	}
	out, err = exec.Command(ctl, "evidence", "--aa", aa, "--runtime-data", "0102ff").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `"report_data":"AQL/`) {
		t.Fatalf("evidence: %q %v", out, err)
	}

	// An error from the agent: exit 1 with the rpc and code named.
	out, err = exec.Command(ctl, "--addr", addr, "start", "--id", "missing").CombinedOutput()
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "StartContainer: NotFound") {
		t.Fatalf("start missing: %q %v", out, err)
	}
}
