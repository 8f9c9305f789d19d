package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cova-project/cova/rootfs"
)

func staticAgent(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if out, err := exec.Command("file", "-L", p).Output(); err == nil && strings.Contains(string(out), "statically linked") {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no static busybox: .ci/run must install busybox-static")
	}
	t.Skip("no static busybox to stand in for the agent (apt-get install busybox-static)")
	return ""
}

func TestBuildAndDigest(t *testing.T) {
	agent := staticAgent(t)
	dir := t.TempDir()
	extra := filepath.Join(dir, "hello.txt")
	if err := os.WriteFile(extra, []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd.img")
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	var stdout, stderr bytes.Buffer
	if err := run(context.Background(), []string{"build", "--agent", agent, "--out", out, "--add", extra + ":/etc/hello.txt"}, &stdout, &stderr); err != nil {
		t.Fatalf("build: %v\n%s", err, stderr.String())
	}
	d, err := rootfs.DigestFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "SHA256 ("+out+") = "+d.SHA256) {
		t.Errorf("build output lacks the sha256 of the image:\n%s", stdout.String())
	}

	stdout.Reset()
	if err := run(context.Background(), []string{"digest", out, extra}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("digest printed %d lines, want 4:\n%s", len(lines), stdout.String())
	}
	// coreutils checks the BSD-style lines of its own algorithm.
	for tool, prefix := range map[string]string{"sha256sum": "SHA256 ", "sha384sum": "SHA384 "} {
		var sel []string
		for _, l := range lines {
			if strings.HasPrefix(l, prefix) {
				sel = append(sel, l)
			}
		}
		cmd := exec.Command(tool, "--strict", "-c")
		cmd.Stdin = strings.NewReader(strings.Join(sel, "\n") + "\n")
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s -c: %v: %s", tool, err, o)
		}
	}

	// The same inputs give the same image; the old one is replaced whole.
	again := filepath.Join(dir, "again.img")
	if err := run(context.Background(), []string{"build", "--agent", agent, "--out", again, "--add", extra + ":/etc/hello.txt"}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(again)
	if !bytes.Equal(a, b) {
		t.Error("two builds differ")
	}
}

func TestBuildFailureLeavesNothing(t *testing.T) {
	agent := staticAgent(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "initrd.img")
	if err := os.WriteFile(out, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	err := run(context.Background(), []string{"build", "--agent", agent, "--out", out, "--add", "/nonexistent:/x"}, &stdout, &stderr)
	if err == nil {
		t.Fatal("build with a missing --add source succeeded")
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after a failed build, want only the old image", len(entries))
	}
	if data, _ := os.ReadFile(out); string(data) != "old" {
		t.Errorf("a failed build changed the existing image")
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "missing command"},
		{"unknown command", []string{"frob"}, "unknown command"},
		{"build without agent", []string{"build", "--out", "x"}, "--agent and --out"},
		{"bad compression", []string{"build", "--agent", "a", "--out", "x", "--compress", "xz"}, "--compress"},
		{"bad add", []string{"build", "--agent", "a", "--out", "x", "--add", "nocolon"}, "--add"},
		{"digest without files", []string{"digest"}, "no files"},
		{"digest missing file", []string{"digest", "/nonexistent"}, "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tc.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
