package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBadPolicyStopsAgent: the policy compiles in the background while the
// agent starts listening; a policy that does not compile must stop the
// agent (exit status 1, the reason on stderr) before any gated request runs.
func TestBadPolicyStopsAgent(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.rego")
	if err := os.WriteFile(pol, []byte("package agent_policy\n\nthis is not rego {\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr syncBuilder
	cmd := exec.CommandContext(ctx, bin(t, "cova-agent"), "--listen", "unix://"+filepath.Join(dir, "a.sock"),
		"--root", filepath.Join(dir, "state"), "--policy", pol)
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("agent with a broken policy: %v (want exit status 1)\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "policy failed to load; stopping") || !strings.Contains(stderr.String(), "load policy "+pol) {
		t.Fatalf("stderr does not give the reason:\n%s", stderr.String())
	}
	if strings.Contains(stderr.String(), `"msg":"policy loaded"`) {
		t.Fatal("a broken policy was reported loaded")
	}
}
