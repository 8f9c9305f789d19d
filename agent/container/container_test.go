package container

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/test/testutil"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
		return
	}
	os.Exit(m.Run())
}

func newManager(t *testing.T) *Manager {
	t.Helper()
	testutil.RequireRoot(t)
	m, err := New(Options{StateRoot: t.TempDir(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.RemoveAll(context.Background()) })
	return m
}

func readAll(t *testing.T, read func(context.Context, int) ([]byte, error)) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var b strings.Builder
	for {
		d, err := read(ctx, 4096)
		b.Write(d)
		if errors.Is(err, io.EOF) {
			return b.String()
		}
		if err != nil {
			t.Fatalf("read: %v (so far %q)", err, b.String())
		}
	}
}

func TestLifecycle(t *testing.T) {
	m := newManager(t)
	ctx := context.Background()
	spec := testutil.Spec(testutil.BusyboxRootfs(t), "sh", "-c", "echo out; echo err >&2; exit 7")
	c, err := m.Create(ctx, CreateOptions{ID: "c1", Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	if _, done := c.Init().Status(); done {
		t.Fatal("init exited before start")
	}
	if err := m.Start(ctx, "c1"); err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx, "c1"); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("second start: want failed precondition, got %v", err)
	}
	if got := readAll(t, c.Init().ReadStdout); got != "out\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := readAll(t, c.Init().ReadStderr); got != "err\n" {
		t.Errorf("stderr = %q", got)
	}
	st, err := c.Init().Wait(ctx)
	if err != nil || st != 7 {
		t.Fatalf("wait = %d, %v; want 7", st, err)
	}
	if err := m.Remove(ctx, "c1", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Get("c1"); !errdefs.IsNotFound(err) {
		t.Fatalf("after remove: %v", err)
	}
}

func TestExecAndSignal(t *testing.T) {
	m := newManager(t)
	ctx := context.Background()
	spec := testutil.Spec(testutil.BusyboxRootfs(t), "sleep", "1000")
	c, err := m.Create(ctx, CreateOptions{ID: "c2", Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "e0", &specs.Process{Args: []string{"true"}, Cwd: "/"}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("exec before start: %v", err)
	}
	if err := m.Start(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	p, err := c.Exec(ctx, "e1", &specs.Process{Args: []string{"sh", "-c", "read x; echo got:$x; exit 3"}, Env: []string{"PATH=/bin"}, Cwd: "/"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.WriteStdin(ctx, []byte("hello\n")); err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, p.ReadStdout); got != "got:hello\n" {
		t.Errorf("exec stdout = %q", got)
	}
	if st, _ := p.Wait(ctx); st != 3 {
		t.Errorf("exec status = %d, want 3", st)
	}
	// tty exec
	tp, err := c.Exec(ctx, "e2", &specs.Process{Args: []string{"sh", "-c", "tty; exit 0"}, Env: []string{"PATH=/bin"}, Cwd: "/", Terminal: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, tp.ReadStdout); !strings.Contains(got, "/dev/pts/") {
		t.Errorf("tty exec output = %q, want a /dev/pts name", got)
	}
	if got := readAll(t, tp.ReadStderr); got != "" {
		t.Errorf("tty stderr = %q", got)
	}
	if err := c.Signal("", unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	st, err := c.Init().Wait(ctx)
	if err != nil || st != 128+int(unix.SIGKILL) {
		t.Fatalf("init status = %d, %v; want %d", st, err, 128+int(unix.SIGKILL))
	}
}

func TestCreateValidation(t *testing.T) {
	m := newManager(t)
	rootfs := testutil.BusyboxRootfs(t)
	cases := map[string]struct {
		id   string
		spec *specs.Spec
	}{
		"bad id":        {"../x", testutil.Spec(rootfs, "true")},
		"no args":       {"ok", testutil.Spec(rootfs)},
		"relative root": {"ok", func() *specs.Spec { s := testutil.Spec(rootfs, "true"); s.Root.Path = "rel"; return s }()},
		"nil spec":      {"ok", nil},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := m.Create(context.Background(), CreateOptions{ID: tc.id, Spec: tc.spec})
			if !errdefs.IsInvalidArgument(err) {
				t.Fatalf("want invalid argument, got %v", err)
			}
		})
	}
}
