// Package runtool runs the few external programs the agent needs in a
// guest (mkfs.ext4): PID 1 starts without PATH, so the usual system
// directories are searched when PATH does not find one.
package runtool

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/containerd/errdefs"
)

// Dirs are searched, in order, when PATH does not find a tool.
var Dirs = []string{"/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// Find returns the path of the executable name (through PATH, then Dirs);
// ErrNotFound when there is none. name is a constant of the caller, never
// request data.
func Find(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range Dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or %v: %w", name, Dirs, errdefs.ErrNotFound)
}

// Run runs name with args and returns its combined output.
func Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	p, err := Find(name)
	if err != nil {
		return nil, err
	}
	return exec.CommandContext(ctx, p, args...).CombinedOutput()
}
