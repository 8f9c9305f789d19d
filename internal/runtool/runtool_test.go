package runtool

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

func TestFindAndRun(t *testing.T) {
	dir := t.TempDir()
	tool := filepath.Join(dir, "cova-test-tool")
	if err := os.WriteFile(tool, []byte("#!/bin/sh\necho ran \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "not-executable"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", "/nonexistent")
	old := Dirs
	Dirs = []string{"/nonexistent-too", dir}
	t.Cleanup(func() { Dirs = old })
	out, err := Run(context.Background(), "cova-test-tool", "a", "b")
	if err != nil || string(out) != "ran a b\n" {
		t.Fatalf("Run = %q, %v", out, err)
	}
	if _, err := Find("not-executable"); !errdefs.IsNotFound(err) {
		t.Fatalf("a non-executable file was found: %v", err)
	}
	if _, err := Find("cova-no-such-tool"); !errdefs.IsNotFound(err) {
		t.Fatalf("missing tool: %v", err)
	}
}
