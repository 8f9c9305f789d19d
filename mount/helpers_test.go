package mount

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// call is one recorded Mounter call, with /proc/self/fd paths resolved to
// the directories they named at the time of the call.
type call struct {
	op     string // "mount" or "unmount"
	source string
	target string
	fstype string
	flags  uintptr
	data   string
}

func (c call) String() string {
	return fmt.Sprintf("%s %s on %s type %s flags %#x data %q", c.op, c.source, c.target, c.fstype, c.flags, c.data)
}

// fakeMounter records calls instead of mounting.
type fakeMounter struct {
	mu       sync.Mutex
	calls    []call
	mountErr error
	delay    time.Duration
}

var fdPathRE = regexp.MustCompile(`/proc/self/fd/[0-9]+`)

func resolveFDs(s string) string {
	return fdPathRE.ReplaceAllStringFunc(s, func(p string) string {
		t, err := os.Readlink(p)
		if err != nil {
			return p + "(unresolvable)"
		}
		return t
	})
}

func (f *fakeMounter) Mount(source, target, fstype string, flags uintptr, data string) error {
	c := call{op: "mount", source: source, target: resolveFDs(target), fstype: fstype, flags: flags, data: resolveFDs(data)}
	time.Sleep(f.delay)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
	return f.mountErr
}

func (f *fakeMounter) Unmount(target string, flags int) error {
	c := call{op: "unmount", target: resolveFDs(target), flags: uintptr(flags)}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
	return nil
}

func (f *fakeMounter) Calls() []call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]call(nil), f.calls...)
}

func (f *fakeMounter) count(op string) int {
	n := 0
	for _, c := range f.Calls() {
		if c.op == op {
			n++
		}
	}
	return n
}

// testEnv is a Manager with a fake mounter and a temp dir as allowed root.
type testEnv struct {
	m    *Manager
	fake *fakeMounter
	root string // the allowed root
	dev  string
	sys  string
}

func newTestEnv(t *testing.T, mod func(*Options)) *testEnv {
	t.Helper()
	base := t.TempDir()
	e := &testEnv{
		fake: &fakeMounter{},
		root: filepath.Join(base, "run"),
		dev:  filepath.Join(base, "dev"),
		sys:  filepath.Join(base, "sys"),
	}
	for _, d := range []string{e.root, e.dev, e.sys} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	o := Options{
		DevRoot:        e.dev,
		SysRoot:        e.sys,
		HotplugTimeout: 300 * time.Millisecond,
		PollInterval:   5 * time.Millisecond,
		Mounter:        e.fake,
		AllowedRoots:   []string{e.root},
	}
	if mod != nil {
		mod(&o)
	}
	m, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	return e
}

func (e *testEnv) p(rel string) string { return filepath.Join(e.root, rel) }

// requireRoot skips (or fails in CI) tests that need root.
func requireRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("test needs root (%s) and CI=true", why)
	}
	t.Skipf("needs root: %s", why)
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	mustMkdir(t, filepath.Dir(link))
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func joinCalls(cs []call) string {
	var b strings.Builder
	for _, c := range cs {
		b.WriteString(c.String())
		b.WriteString("\n")
	}
	return b.String()
}
