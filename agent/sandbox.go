package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/agent/container"
	"github.com/cova-project/cova/mount"
	pb "github.com/cova-project/cova/protocols/grpc"
)

// sandbox is the state CreateSandbox sets up and DestroySandbox tears down.
type sandbox struct {
	id       string
	hostname string
	pidns    bool // containers share the pause container's pid namespace

	ns         *sharedNS
	pausePidNS string // /proc/<pause pid>/ns/pid once the pause container exists

	storages   []string            // sandbox storage mount points
	ctrStorage map[string][]string // container id -> its storage mount points

	trustedStore sync.Mutex // held while the trusted image store is set up
	trustedDone  bool       // the image store sits on the trusted device
}

// sharedNS holds the sandbox's IPC and UTS namespaces open by file
// descriptor: no bind mounts, no holder process. Containers join them through
// /proc/<agent pid>/fd/<n>.
type sharedNS struct {
	ipc, uts *os.File
}

func (n *sharedNS) ipcPath() string { return fdPath(n.ipc) }
func (n *sharedNS) utsPath() string { return fdPath(n.uts) }

func fdPath(f *os.File) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), f.Fd()) }

func (n *sharedNS) Close() {
	if n == nil {
		return
	}
	n.ipc.Close()
	n.uts.Close()
}

// newSharedNS creates fresh IPC and UTS namespaces on a throwaway OS thread
// and keeps them open. The thread is never returned to the Go scheduler.
func newSharedNS(hostname string) (*sharedNS, error) {
	type result struct {
		ns  *sharedNS
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := unix.Unshare(unix.CLONE_NEWIPC | unix.CLONE_NEWUTS); err != nil {
			ch <- result{err: fmt.Errorf("unshare ipc/uts: %w", err)}
			return
		}
		if hostname != "" {
			if err := unix.Sethostname([]byte(hostname)); err != nil {
				ch <- result{err: fmt.Errorf("set sandbox hostname: %w", err)}
				return
			}
		}
		tid := unix.Gettid()
		ipc, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/ipc", tid))
		if err != nil {
			ch <- result{err: fmt.Errorf("open ipc namespace: %w", err)}
			return
		}
		uts, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/uts", tid))
		if err != nil {
			ipc.Close()
			ch <- result{err: fmt.Errorf("open uts namespace: %w", err)}
			return
		}
		ch <- result{ns: &sharedNS{ipc: ipc, uts: uts}}
	}()
	r := <-ch
	return r.ns, r.err
}

// hostnamePattern is RFC 1123 (what the kernel accepts, minus oddities).
var hostnamePattern = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9.-]{0,62})?$`)

func (a *Agent) createSandbox(ctx context.Context, r *pb.CreateSandboxRequest) error {
	if r.SandboxId != "" && !container.ValidID(r.SandboxId) {
		return invalid("sandbox_id", "%q is not a valid id", r.SandboxId)
	}
	if r.Hostname != "" && !hostnamePattern.MatchString(r.Hostname) {
		return invalid("hostname", "%q is not a valid host name", r.Hostname)
	}
	if r.GuestHookPath != "" {
		return invalid("guest_hook_path", "guest hooks are not supported (the host must not choose programs the guest runs)")
	}
	if len(r.KernelModules) > 0 {
		return invalid("kernel_modules", "loading kernel modules on request is not supported; list them in the measured agent config")
	}
	dns, err := resolvConf(r.Dns)
	if err != nil {
		return err
	}
	if err := a.ready(ctx); err != nil {
		return err
	}
	for i, s := range r.Storages {
		if s == nil {
			return invalid(fmt.Sprintf("storages[%d]", i), "is null")
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sandbox != nil {
		return fmt.Errorf("sandbox %q already exists: %w", a.sandbox.id, errdefs.ErrAlreadyExists)
	}
	if err := os.MkdirAll(filepath.Join(a.opts.Root, "sandbox"), 0o755); err != nil {
		return fmt.Errorf("create sandbox dir: %w", err)
	}
	if dns != "" {
		if err := os.WriteFile(filepath.Join(a.opts.Root, "sandbox", "resolv.conf"), []byte(dns), 0o644); err != nil {
			return fmt.Errorf("write resolv.conf: %w", err)
		}
	}
	ns, err := newSharedNS(r.Hostname)
	if err != nil {
		return err
	}
	sb := &sandbox{id: r.SandboxId, hostname: r.Hostname, pidns: r.SandboxPidns, ns: ns, ctrStorage: map[string][]string{}}
	for _, s := range r.Storages {
		mp, err := a.opts.Storage.Add(ctx, r.SandboxId, storageFromPB(s))
		if err != nil {
			for _, m := range sb.storages {
				_ = a.opts.Storage.Remove(ctx, m)
			}
			ns.Close()
			return fmt.Errorf("sandbox storage %s: %w", s.MountPoint, err)
		}
		sb.storages = append(sb.storages, mp)
	}
	a.sandbox = sb
	a.log.Info("sandbox created", "sandbox_id", r.SandboxId, "pidns", r.SandboxPidns, "storages", len(sb.storages))
	return nil
}

// resolvConf validates the DNS lines from the host and returns the file.
func resolvConf(lines []string) (string, error) {
	var b strings.Builder
	for i, l := range lines {
		if len(l) > 1024 || strings.ContainsAny(l, "\n\r\x00") {
			return "", invalid(fmt.Sprintf("dns[%d]", i), "must be one line of at most 1024 bytes")
		}
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "nameserver", "search", "domain", "options", "sortlist":
		default:
			return "", invalid(fmt.Sprintf("dns[%d]", i), "unknown resolv.conf keyword %q", f[0])
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String(), nil
}

func (a *Agent) destroySandbox(ctx context.Context) error {
	err := a.Shutdown(ctx)
	if a.opts.VM && a.opts.PowerOff != nil {
		go a.opts.PowerOff() // after this answer has been sent
	}
	return err
}

// Shutdown removes every container, unmounts every storage and forgets the
// sandbox.
func (a *Agent) Shutdown(ctx context.Context) error {
	var errs []error
	if err := a.opts.Containers.RemoveAll(ctx); err != nil {
		errs = append(errs, err)
	}
	a.mu.Lock()
	sb := a.sandbox
	a.sandbox = nil
	a.mu.Unlock()
	if err := a.opts.Storage.Cleanup(ctx); err != nil {
		errs = append(errs, err)
	}
	if sb != nil {
		sb.ns.Close()
		a.log.Info("sandbox destroyed", "sandbox_id", sb.id)
	}
	return errors.Join(errs...)
}

// ready waits until the guest can run containers.
func (a *Agent) ready(ctx context.Context) error {
	if a.opts.Ready == nil {
		return nil
	}
	if err := a.opts.Ready(ctx); err != nil {
		return fmt.Errorf("guest not ready for containers: %w: %w", err, errdefs.ErrUnavailable)
	}
	return nil
}

func (a *Agent) currentSandbox() (*sandbox, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.sandbox == nil {
		return nil, fmt.Errorf("no sandbox: call CreateSandbox first: %w", errdefs.ErrFailedPrecondition)
	}
	return a.sandbox, nil
}

func storageFromPB(s *pb.Storage) mount.Storage {
	st := mount.Storage{
		Driver:        s.Driver,
		DriverOptions: s.DriverOptions,
		Source:        s.Source,
		Fstype:        s.Fstype,
		Options:       s.Options,
		MountPoint:    s.MountPoint,
		Shared:        s.Shared,
	}
	if s.FsGroup != nil {
		st.FSGroup = &mount.FSGroup{GroupID: s.FsGroup.GroupId, ChangePolicy: mount.FSGroupChangePolicy(s.FsGroup.GroupChangePolicy)}
	}
	return st
}
