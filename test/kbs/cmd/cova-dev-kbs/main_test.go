package main

import (
	"bufio"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/cdh/kbs"
)

// TestDevKBSBinary builds the command, starts it on a free port with a
// resource directory, and fetches a resource through the real KBS client
// (sample attestation, JWE-wrapped answer).
func TestDevKBSBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "cova-dev-kbs")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	res := filepath.Join(dir, "res", "default", "key", "demo")
	if err := os.MkdirAll(filepath.Dir(res), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(res, []byte("the released secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(dir, "ca.pem")
	url := startBinary(t, bin, "-addr", "127.0.0.1:0", "-resources", filepath.Join(dir, "res"), "-ca-out", ca, "-name", "10.0.2.2", "-snp", "-tdx")
	if !strings.HasPrefix(url, "https://127.0.0.1:") {
		t.Fatalf("listening line gave %q", url)
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kbs.New(kbs.Config{URL: url, ExtraRootCAs: string(pem), Primary: sample.New()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got, err := c.Resource(ctx, "kbs:///default/key/demo")
	if err != nil || string(got) != "the released secret" {
		t.Fatalf("resource = %q, %v", got, err)
	}
	if _, err := c.Resource(ctx, "kbs:///default/key/missing"); err == nil {
		t.Fatal("a missing resource was served")
	}

	// -plain-http and a -deny policy.
	secret := filepath.Join(dir, "res", "default", "secret", "db")
	if err := os.MkdirAll(filepath.Dir(secret), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(secret, []byte("denied"), 0o600); err != nil {
		t.Fatal(err)
	}
	url = startBinary(t, bin, "-addr", "127.0.0.1:0", "-resources", filepath.Join(dir, "res"), "-plain-http", "-deny", "^resource/default/secret/")
	if !strings.HasPrefix(url, "http://127.0.0.1:") {
		t.Fatalf("-plain-http listening line gave %q", url)
	}
	c, err = kbs.New(kbs.Config{URL: url, Primary: sample.New()})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Resource(ctx, "kbs:///default/key/demo"); err != nil || string(got) != "the released secret" {
		t.Fatalf("plain http resource = %q, %v", got, err)
	}
	_, err = c.Resource(ctx, "kbs:///default/secret/db")
	var ke *kbs.Error
	if !errors.As(err, &ke) || ke.Status != 401 || ke.Type != "PolicyDeny" {
		t.Fatalf("denied resource: %v", err)
	}
}

// startBinary runs the built command and returns the URL it listens on.
func startBinary(t *testing.T, bin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
	}()
	select {
	case l := <-line:
		_, url, _ := strings.Cut(l, "listening on ")
		return url
	case <-time.After(20 * time.Second):
		t.Fatal("no listening line")
	}
	return ""
}
