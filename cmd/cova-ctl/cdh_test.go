package main

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"

	cdhapi "github.com/cova-project/cova/cdh/api"
)

// TestSecureMount drives secure-mount against the real CDH API server with
// a recording mounter: the request carries the volume type, every option,
// the flags and the mount point; the mounter's error comes back with its
// gRPC code; bad flags never reach the server.
func TestSecureMount(t *testing.T) {
	root := t.TempDir()
	var mu sync.Mutex
	var got []string
	srv, err := cdhapi.New(cdhapi.Config{
		MountRoots: []string{root},
		SecureMounter: cdhapi.SecureMounterFunc(func(_ context.Context, vt string, opts map[string]string, flags []string, mp string) (string, error) {
			mu.Lock()
			defer mu.Unlock()
			keys := slices.Sorted(maps.Keys(opts))
			var kv []string
			for _, k := range keys {
				kv = append(kv, k+"="+opts[k])
			}
			got = append(got, fmt.Sprintf("%s %s %v %s", vt, strings.Join(kv, ","), flags, mp))
			if opts["key"] == "file:///wrong" {
				return "", fmt.Errorf("unlocking: no keyslot opens: %w", errdefs.ErrPermissionDenied)
			}
			return mp, nil
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "cdh.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := srv.Start(ctx, sock); err != nil {
		t.Fatal(err)
	}
	mp := filepath.Join(root, "vol")
	cdh := "unix://" + sock

	c := newCLI(strings.NewReader(""))
	if code := c.run(t, "secure-mount", "--cdh", cdh, "--option", "deviceId=254:2", "--option", "sourceType=encrypted",
		"--option", "key=file:///k", "--option", "dataIntegrity=true", "--flag", "ro", mp); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, c.stderr.String())
	}
	if c.stdout.String() != mp+"\n" {
		t.Fatalf("stdout %q", c.stdout.String())
	}
	want := "block-device dataIntegrity=true,deviceId=254:2,key=file:///k,sourceType=encrypted [ro] " + mp
	if len(got) != 1 || got[0] != want {
		t.Fatalf("server saw %q, want %q", got, want)
	}

	c = newCLI(strings.NewReader(""))
	if code := c.run(t, "secure-mount", "--cdh", cdh, "--option", "key=file:///wrong", mp); code == 0 || !strings.Contains(c.stderr.String(), "PermissionDenied") || !strings.Contains(c.stderr.String(), "SecureMount") {
		t.Fatalf("refused mount: exit %d, stderr %q", code, c.stderr.String())
	}

	for _, args := range [][]string{
		{"secure-mount", "--cdh", cdh, mp},                                       // no option
		{"secure-mount", "--cdh", cdh, "--option", "novalue", mp},                // not KEY=VALUE
		{"secure-mount", "--cdh", cdh, "--option", "a=1", "--option", "a=2", mp}, // twice
		{"secure-mount", "--cdh", cdh, "--option", "a=1"},                        // no mount point
		{"secure-mount", "--cdh", cdh, "--option", "a=1", mp, mp},                // two
	} {
		c := newCLI(strings.NewReader(""))
		if code := c.run(t, args...); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage); stderr %q", args, code, c.stderr.String())
		}
	}
	if len(got) != 2 {
		t.Fatalf("bad invocations reached the server: %q", got)
	}
}
