package faults

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/imagepull"
)

// childEnv makes the test binary run one child scenario (see runChild)
// instead of the tests; its value names the scenario.
const childEnv = "COVA_FAULTS_CHILD"

// childDirEnv passes the child the directory it works in.
const childDirEnv = "COVA_FAULTS_DIR"

// childResult is what a child scenario reports on its last stdout line.
type childResult struct {
	Err       string `json:"err"`
	Exhausted bool   `json:"exhausted"`
	Clean     string `json:"clean"` // "" when nothing was half-written
}

// runChild runs a scenario in this process (a re-exec of the test binary in
// namespaces the parent created) and returns the exit code.
func runChild(name string) int {
	var res childResult
	var err error
	switch name {
	case "diskfull":
		res, err = diskFullChild(os.Getenv(childDirEnv))
	default:
		err = fmt.Errorf("unknown child scenario %q", name)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	b, _ := json.Marshal(res)
	fmt.Println(string(b))
	return 0
}

// childT is the part of testing.TB the image and registry helpers use, for
// the child process (no testing.T there).
type childT struct {
	testing.TB
	cleanups []func()
}

func (c *childT) Helper()           {}
func (c *childT) Cleanup(f func())  { c.cleanups = append(c.cleanups, f) }
func (c *childT) Fatal(args ...any) { panic(fmt.Sprint(args...)) }
func (c *childT) Fatalf(f string, args ...any) {
	panic(fmt.Sprintf(f, args...))
}
func (c *childT) TempDir() string {
	d, err := os.MkdirTemp("", "cova-faults-child-")
	if err != nil {
		panic(err)
	}
	c.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}
func (c *childT) done() {
	for i := len(c.cleanups) - 1; i >= 0; i-- {
		c.cleanups[i]()
	}
}

// diskFullChild mounts a 2 MiB tmpfs on dir (in the child's own mount
// namespace), pulls a 6 MiB layer into a store there and reports what the
// pull returned and whether anything was left half-written.
func diskFullChild(dir string) (res childResult, err error) {
	t := &childT{}
	defer t.done()
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=2m,mode=0700"); err != nil {
		return res, fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	defer func() { _ = unix.Unmount(dir, unix.MNT_DETACH) }()
	f := startRegistry(t, makeImage(t, 6<<20, 0), nil)
	p := newPuller(t, f.host(), filepath.Join(dir, "image"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, perr := p.Pull(ctx, f.ref(), imagepull.PullOptions{})
	if perr == nil {
		return res, errors.New("a 6 MiB layer fit in a 2 MiB tmpfs")
	}
	res.Err = perr.Error()
	res.Exhausted = errors.Is(perr, errdefs.ErrResourceExhausted)
	if herr := nothingHalfWritten(p); herr != nil {
		res.Clean = herr.Error()
	}
	return res, nil
}

func unpackFaults() []fault {
	return []fault{{
		area: "unpack", name: "disk full (2 MiB tmpfs) during unpack", want: failClosed, bound: 60 * time.Second, root: true,
		classes: []error{errdefs.ErrResourceExhausted}, says: []string{"no space left on device"},
		run: func(ctx context.Context, t *testing.T) error {
			dir := t.TempDir()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"=diskfull", childDirEnv+"="+dir)
			// A private mount namespace: the tmpfs never appears on the host.
			cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			var res childResult
			if err := json.Unmarshal([]byte(lines[len(lines)-1]), &res); err != nil {
				t.Fatalf("child said %q: %v", out, err)
			}
			if res.Clean != "" {
				t.Errorf("half-written store: %s", res.Clean)
			}
			if onHost(t, dir) {
				t.Errorf("the tmpfs on %s leaked into the host's mount namespace", dir)
			}
			if res.Exhausted {
				return fmt.Errorf("%s: %w", res.Err, errdefs.ErrResourceExhausted)
			}
			return errors.New(res.Err)
		},
	}}
}

// onHost reports whether dir is a mount point in this process's namespace.
func onHost(t *testing.T, dir string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 4 && fs[4] == dir {
			return true
		}
	}
	return false
}
