// Package container runs OCI containers in-process with runc's libcontainer:
// create (init held until start), start, exec, standard streams, signals,
// wait, pause/resume, resource updates, stats, OOM events and removal.
//
// The agent package converts requests from the wire to the OCI runtime spec
// and calls this package; nothing here knows about ttrpc.
package container

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	_ "github.com/opencontainers/cgroups/devices" // device rules need the devices manager
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Options configures a Manager.
type Options struct {
	// StateRoot holds libcontainer's state directories.
	StateRoot string
	// NoPivotRoot must be true when / is an initramfs (pivot_root fails there).
	NoPivotRoot bool
	Logger      *slog.Logger
}

// Manager owns the containers of one sandbox.
type Manager struct {
	opts Options
	log  *slog.Logger

	mu         sync.Mutex
	containers map[string]*Container

	oom chan string // container ids whose cgroup hit an OOM
}

// New returns a Manager; StateRoot is created if needed.
func New(opts Options) (*Manager, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.StateRoot == "" {
		return nil, fmt.Errorf("container state root is empty: %w", errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(opts.StateRoot, 0o700); err != nil {
		return nil, fmt.Errorf("create state root: %w", err)
	}
	return &Manager{opts: opts, log: opts.Logger, containers: map[string]*Container{}, oom: make(chan string, 64)}, nil
}

// idPattern is what kata and runc accept as a container id.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// ValidID reports whether id is an acceptable container or exec id.
func ValidID(id string) bool { return idPattern.MatchString(id) }

// Container is one container and its processes.
type Container struct {
	ID   string
	Spec *specs.Spec

	lc   *libcontainer.Container
	init *Process
	log  *slog.Logger

	mu      sync.Mutex
	started bool
	execs   map[string]*Process
	stopOOM chan struct{}
}

// CreateOptions are the per-container choices of the agent.
type CreateOptions struct {
	ID   string
	Spec *specs.Spec
}

// Create sets the container up and starts its init process held before the
// user's program (runc create). Start releases it.
func (m *Manager) Create(ctx context.Context, o CreateOptions) (_ *Container, retErr error) {
	if !ValidID(o.ID) {
		return nil, fmt.Errorf("container_id %q is not a valid id: %w", o.ID, errdefs.ErrInvalidArgument)
	}
	if o.Spec == nil || o.Spec.Process == nil || o.Spec.Root == nil || o.Spec.Linux == nil {
		return nil, fmt.Errorf("OCI spec needs Process, Root and Linux: %w", errdefs.ErrInvalidArgument)
	}
	if len(o.Spec.Process.Args) == 0 {
		return nil, fmt.Errorf("OCI.Process.Args is empty: %w", errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(o.Spec.Root.Path) {
		return nil, fmt.Errorf("OCI.Root.Path %q is not absolute: %w", o.Spec.Root.Path, errdefs.ErrInvalidArgument)
	}
	m.mu.Lock()
	if _, ok := m.containers[o.ID]; ok {
		m.mu.Unlock()
		return nil, fmt.Errorf("container %s: %w", o.ID, errdefs.ErrAlreadyExists)
	}
	m.containers[o.ID] = nil // reserve the id while we build it
	m.mu.Unlock()
	defer func() {
		if retErr != nil {
			m.mu.Lock()
			delete(m.containers, o.ID)
			m.mu.Unlock()
		}
	}()

	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:  o.ID,
		NoPivotRoot: m.opts.NoPivotRoot,
		Spec:        o.Spec,
	})
	if err != nil {
		return nil, fmt.Errorf("convert OCI spec: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	lc, err := libcontainer.Create(m.opts.StateRoot, o.ID, cfg)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", o.ID, err)
	}
	defer func() {
		if retErr != nil {
			_ = lc.Destroy()
		}
	}()
	log := m.log.With("container_id", o.ID)
	c := &Container{ID: o.ID, Spec: o.Spec, lc: lc, log: log, execs: map[string]*Process{}}
	p, err := c.spawn(ctx, "", o.Spec.Process, true)
	if err != nil {
		return nil, err
	}
	c.init = p
	m.mu.Lock()
	m.containers[o.ID] = c
	m.mu.Unlock()
	log.Info("container created", "pid", p.Pid)
	return c, nil
}

// spawn starts a process in the container: the held init (init=true) or an exec.
func (c *Container) spawn(_ context.Context, execID string, ps *specs.Process, init bool) (_ *Process, retErr error) {
	lp, err := newLibcontainerProcess(ps, init)
	if err != nil {
		return nil, err
	}
	io, err := newStdio(ps.Terminal)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil {
			io.closeAll()
		}
	}()
	io.attach(lp)
	if init {
		err = c.lc.Start(lp)
	} else {
		err = c.lc.Run(lp)
	}
	if err != nil {
		return nil, fmt.Errorf("start process in container %s: %w", c.ID, err)
	}
	pid, err := lp.Pid()
	if err != nil {
		return nil, fmt.Errorf("process pid: %w", err)
	}
	p := &Process{ExecID: execID, Pid: pid, lp: lp, exited: make(chan struct{})}
	var w, h uint16
	if ps.ConsoleSize != nil {
		w, h = uint16(min(ps.ConsoleSize.Width, 0xffff)), uint16(min(ps.ConsoleSize.Height, 0xffff))
	}
	if err := io.finish(p, w, h); err != nil {
		_ = lp.Signal(unix.SIGKILL)
		_, _ = lp.Wait()
		return nil, err
	}
	go func() {
		if err := p.wait(); err != nil {
			c.log.Warn("wait for process failed", "exec_id", execID, "pid", pid, "err", err)
		}
		p.release()
	}()
	return p, nil
}

func newLibcontainerProcess(ps *specs.Process, init bool) (*libcontainer.Process, error) {
	lp := &libcontainer.Process{
		Args:            ps.Args,
		Env:             ps.Env,
		Cwd:             ps.Cwd,
		UID:             int(ps.User.UID),
		GID:             int(ps.User.GID),
		Init:            init,
		NoNewPrivileges: &ps.NoNewPrivileges,
	}
	if lp.Cwd == "" {
		lp.Cwd = "/"
	}
	for _, g := range ps.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	if ps.Capabilities != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding:    ps.Capabilities.Bounding,
			Effective:   ps.Capabilities.Effective,
			Inheritable: ps.Capabilities.Inheritable,
			Permitted:   ps.Capabilities.Permitted,
			Ambient:     ps.Capabilities.Ambient,
		}
	}
	for _, r := range ps.Rlimits {
		t, ok := rlimits[r.Type]
		if !ok {
			return nil, fmt.Errorf("Process.Rlimits: unknown type %q: %w", r.Type, errdefs.ErrInvalidArgument)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: t, Hard: r.Hard, Soft: r.Soft})
	}
	if ps.ConsoleSize != nil {
		lp.ConsoleWidth, lp.ConsoleHeight = uint16(min(ps.ConsoleSize.Width, 0xffff)), uint16(min(ps.ConsoleSize.Height, 0xffff))
	}
	return lp, nil
}

var rlimits = map[string]int{
	"RLIMIT_CPU": unix.RLIMIT_CPU, "RLIMIT_FSIZE": unix.RLIMIT_FSIZE, "RLIMIT_DATA": unix.RLIMIT_DATA,
	"RLIMIT_STACK": unix.RLIMIT_STACK, "RLIMIT_CORE": unix.RLIMIT_CORE, "RLIMIT_RSS": unix.RLIMIT_RSS,
	"RLIMIT_NPROC": unix.RLIMIT_NPROC, "RLIMIT_NOFILE": unix.RLIMIT_NOFILE, "RLIMIT_MEMLOCK": unix.RLIMIT_MEMLOCK,
	"RLIMIT_AS": unix.RLIMIT_AS, "RLIMIT_LOCKS": unix.RLIMIT_LOCKS, "RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_MSGQUEUE": unix.RLIMIT_MSGQUEUE, "RLIMIT_NICE": unix.RLIMIT_NICE, "RLIMIT_RTPRIO": unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME": unix.RLIMIT_RTTIME,
}

// Get returns a container by id.
func (m *Manager) Get(id string) (*Container, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	c := m.containers[id]
	if c == nil {
		return nil, fmt.Errorf("container %q: %w", id, errdefs.ErrNotFound)
	}
	return c, nil
}

// List returns the ids of all containers.
func (m *Manager) List() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	ids := make([]string, 0, len(m.containers))
	for id, c := range m.containers {
		if c != nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// OOMEvents delivers the id of a container each time its cgroup hits an OOM.
func (m *Manager) OOMEvents() <-chan string { return m.oom }

// Start releases the held init process (runc start).
func (m *Manager) Start(ctx context.Context, id string) error {
	c, err := m.Get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return fmt.Errorf("container %s is already started: %w", id, errdefs.ErrFailedPrecondition)
	}
	if _, done := c.init.Status(); done {
		return fmt.Errorf("container %s init has exited: %w", id, errdefs.ErrFailedPrecondition)
	}
	// Watch for OOM before the init runs: a process that exhausts its
	// limit at once would otherwise be killed before anyone listens.
	if c.stopOOM == nil {
		if ch, err := c.lc.NotifyOOM(); err == nil {
			c.stopOOM = make(chan struct{})
			go m.forwardOOM(id, ch, c.stopOOM)
		} else {
			c.log.Debug("no OOM notifications", "err", err)
		}
	}
	if err := c.lc.Exec(); err != nil {
		return fmt.Errorf("start container %s: %w", id, err)
	}
	c.started = true
	c.log.Info("container started")
	return nil
}

func (m *Manager) forwardOOM(id string, ch <-chan struct{}, stop <-chan struct{}) {
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
			select {
			case m.oom <- id:
			default: // a poller that is not listening must not block us
			}
		case <-stop:
			return
		}
	}
}

// Init returns the container's init process.
func (c *Container) Init() *Process { return c.init }

// Process returns the init process (execID "") or an exec.
func (c *Container) Process(execID string) (*Process, error) {
	if execID == "" {
		return c.init, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.execs[execID]
	if p == nil {
		return nil, fmt.Errorf("exec %q in container %s: %w", execID, c.ID, errdefs.ErrNotFound)
	}
	return p, nil
}

// Exec runs an extra process in a started container.
func (c *Container) Exec(ctx context.Context, execID string, ps *specs.Process) (*Process, error) {
	if !ValidID(execID) {
		return nil, fmt.Errorf("exec_id %q is not a valid id: %w", execID, errdefs.ErrInvalidArgument)
	}
	if ps == nil || len(ps.Args) == 0 {
		return nil, fmt.Errorf("process.Args is empty: %w", errdefs.ErrInvalidArgument)
	}
	c.mu.Lock()
	if !c.started {
		c.mu.Unlock()
		return nil, fmt.Errorf("container %s is not started: %w", c.ID, errdefs.ErrFailedPrecondition)
	}
	if _, ok := c.execs[execID]; ok {
		c.mu.Unlock()
		return nil, fmt.Errorf("exec %s in container %s: %w", execID, c.ID, errdefs.ErrAlreadyExists)
	}
	c.execs[execID] = nil
	c.mu.Unlock()
	p, err := c.spawn(ctx, execID, ps, false)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		delete(c.execs, execID)
		return nil, err
	}
	c.execs[execID] = p
	c.log.Info("exec started", "exec_id", execID, "pid", p.Pid)
	return p, nil
}

// ForgetExec drops an exec once it has exited and its output has been read or
// once grace has passed, so stream reads racing WaitProcess still see the tail.
func (c *Container) ForgetExec(execID string, grace time.Duration) {
	c.mu.Lock()
	p := c.execs[execID]
	c.mu.Unlock()
	if p == nil {
		return
	}
	drop := func() {
		c.mu.Lock()
		if c.execs[execID] == p {
			delete(c.execs, execID)
		}
		c.mu.Unlock()
	}
	if p.OutputEnded() {
		drop()
		return
	}
	time.AfterFunc(grace, func() {
		p.DrainOutput()
		drop()
	})
}

// Signal sends sig to one process, or to every process of the container when
// execID is "".
func (c *Container) Signal(execID string, sig syscall.Signal) error {
	if execID != "" {
		p, err := c.Process(execID)
		if err != nil {
			return err
		}
		return p.Signal(sig)
	}
	if err := c.init.Signal(sig); err != nil {
		return err
	}
	pids, err := c.lc.Processes()
	if err != nil {
		return nil // the cgroup may already be gone with init
	}
	for _, pid := range pids {
		if pid != c.init.Pid {
			_ = unix.Kill(pid, sig)
		}
	}
	return nil
}

// Pause freezes every process of the container.
func (c *Container) Pause() error {
	if err := c.lc.Pause(); err != nil {
		return fmt.Errorf("pause %s: %w", c.ID, mapLibErr(err))
	}
	return nil
}

// Resume thaws the container.
func (c *Container) Resume() error {
	if err := c.lc.Resume(); err != nil {
		return fmt.Errorf("resume %s: %w", c.ID, mapLibErr(err))
	}
	return nil
}

// Update applies new cgroup resources.
func (c *Container) Update(r *specs.LinuxResources) error {
	if r == nil {
		return fmt.Errorf("resources is empty: %w", errdefs.ErrInvalidArgument)
	}
	cfg := c.lc.Config()
	res, err := resourcesFromSpec(r)
	if err != nil {
		return err
	}
	res.Devices = cfg.Cgroups.Resources.Devices // devices are not updatable here
	cfg.Cgroups.Resources = res
	if err := c.lc.Set(cfg); err != nil {
		return fmt.Errorf("update %s: %w", c.ID, mapLibErr(err))
	}
	return nil
}

func resourcesFromSpec(r *specs.LinuxResources) (*cgroups.Resources, error) {
	spec := &specs.Spec{Root: &specs.Root{Path: "/"}, Linux: &specs.Linux{Resources: r}}
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{CgroupName: "update", Spec: spec})
	if err != nil {
		return nil, fmt.Errorf("resources: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	return cfg.Cgroups.Resources, nil
}

// Stats returns the container's cgroup statistics.
func (c *Container) Stats() (*cgroups.Stats, error) {
	st, err := c.lc.Stats()
	if err != nil {
		return nil, fmt.Errorf("stats %s: %w", c.ID, mapLibErr(err))
	}
	return st.CgroupStats, nil
}

// Remove kills every process, waits for init up to timeout (0: no limit) and
// destroys the container.
func (m *Manager) Remove(ctx context.Context, id string, timeout time.Duration) error {
	c, err := m.Get(id)
	if err != nil {
		return err
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	if _, done := c.init.Status(); !done {
		_ = c.lc.Signal(unix.SIGKILL)
		_ = c.Signal("", unix.SIGKILL)
		if _, err := c.init.Wait(ctx); err != nil {
			return fmt.Errorf("container %s did not stop: %w", id, err)
		}
	}
	c.mu.Lock()
	execs := c.execs
	c.execs = map[string]*Process{}
	if c.stopOOM != nil {
		close(c.stopOOM)
		c.stopOOM = nil
	}
	c.mu.Unlock()
	for _, p := range execs {
		if p != nil {
			p.DrainOutput()
		}
	}
	c.init.DrainOutput()
	if err := c.lc.Destroy(); err != nil {
		return fmt.Errorf("destroy container %s: %w", id, err)
	}
	m.mu.Lock()
	delete(m.containers, id)
	m.mu.Unlock()
	c.log.Info("container removed")
	return nil
}

// RemoveAll removes every container (DestroySandbox).
func (m *Manager) RemoveAll(ctx context.Context) error {
	var errs []error
	for _, id := range m.List() {
		if err := m.Remove(ctx, id, 10*time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func mapLibErr(err error) error {
	switch {
	case errors.Is(err, libcontainer.ErrNotRunning), errors.Is(err, libcontainer.ErrPaused), errors.Is(err, libcontainer.ErrRunning):
		return fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition)
	case errors.Is(err, libcontainer.ErrNotExist):
		return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
	}
	return err
}
