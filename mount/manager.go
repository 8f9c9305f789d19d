package mount

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/mount/dm"
)

// DefaultAllowedRoot is where kata's runtime places every storage.
const DefaultAllowedRoot = "/run/kata-containers"

// Defaults for Options.
const (
	DefaultHotplugTimeout = 3 * time.Second // kata's agent.hotplug_timeout
	DefaultPollInterval   = 10 * time.Millisecond
)

// Driver is a storage driver implemented outside this package, for example
// image_guest_pull (which needs the image puller).
type Driver interface {
	// Setup makes s available at s.MountPoint. The Manager has validated
	// the mount point (clean, absolute, under an allowed root) and the
	// common fields, but has not created anything.
	Setup(ctx context.Context, id string, s Storage) error
	// Teardown undoes Setup once the last user has removed the storage.
	Teardown(ctx context.Context, s Storage) error
}

// Options configures a Manager. Zero values select the defaults.
type Options struct {
	Logger         *slog.Logger
	DevRoot        string        // "/dev"
	SysRoot        string        // "/sys"
	HotplugTimeout time.Duration // DefaultHotplugTimeout
	PollInterval   time.Duration // DefaultPollInterval; how often sysfs is polled for hotplugged devices
	Mounter        Mounter       // SyscallMounter
	// AllowedRoots lists the directories under which mount points (and
	// overlay directories) may live; default [DefaultAllowedRoot].
	AllowedRoots []string
	// Drivers adds drivers by name; names must not shadow built-in ones.
	Drivers map[string]Driver
	// SecureMounter serves blk and scsi storages with driver option
	// encryption_key=ephemeral; nil refuses them (ErrNotImplemented).
	SecureMounter SecureMounter
	// DeviceMapper creates the dm-verity devices of X-kata.dmverity
	// storages; default dm.New (the kernel's device mapper).
	DeviceMapper DeviceMapper
	// Run runs mkfs.ext4 for create_filesystem; default os/exec (PATH,
	// then /usr/sbin, /usr/bin, /sbin, /bin).
	Run Runner
}

// Manager sets up and tears down storages. It is safe for concurrent use.
type Manager struct {
	log            *slog.Logger
	devRoot        string
	sysRoot        string
	hotplugTimeout time.Duration
	pollInterval   time.Duration
	mounter        Mounter
	roots          []string
	extra          map[string]Driver
	secure         SecureMounter
	dm             DeviceMapper
	run            Runner

	mu      sync.Mutex
	entries map[string]*entry
	order   []string // mount points in setup order
}

// entry is one mount point and its users.
type entry struct {
	storage  Storage
	refs     int
	pending  chan struct{} // non-nil while being set up; closed when done
	teardown func(ctx context.Context) error
}

type builtin func(m *Manager, ctx context.Context, id string, s Storage, pl place) (func(context.Context) error, error)

var builtins = map[string]builtin{
	DriverBlk:       (*Manager).setupBlock,
	DriverScsi:      (*Manager).setupBlock,
	DriverVirtioFS:  (*Manager).setupVirtioFS,
	DriverEphemeral: (*Manager).setupEphemeral,
	DriverLocal:     (*Manager).setupLocal,
	DriverOverlayFS: (*Manager).setupOverlay,
}

// New returns a Manager.
func New(o Options) (*Manager, error) {
	m := &Manager{
		log:            o.Logger,
		devRoot:        o.DevRoot,
		sysRoot:        o.SysRoot,
		hotplugTimeout: o.HotplugTimeout,
		pollInterval:   o.PollInterval,
		mounter:        o.Mounter,
		extra:          map[string]Driver{},
		entries:        map[string]*entry{},
		secure:         o.SecureMounter,
		dm:             o.DeviceMapper,
		run:            o.Run,
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.devRoot == "" {
		m.devRoot = "/dev"
	}
	if m.sysRoot == "" {
		m.sysRoot = "/sys"
	}
	if m.hotplugTimeout <= 0 {
		m.hotplugTimeout = DefaultHotplugTimeout
	}
	if m.pollInterval <= 0 {
		m.pollInterval = DefaultPollInterval
	}
	if m.mounter == nil {
		m.mounter = SyscallMounter{}
	}
	if m.dm == nil {
		m.dm = dm.New(m.log)
	}
	if m.run == nil {
		m.run = runTool
	}
	roots := o.AllowedRoots
	if len(roots) == 0 {
		roots = []string{DefaultAllowedRoot}
	}
	for _, r := range roots {
		if !filepath.IsAbs(r) || filepath.Clean(r) != r || r == "/" {
			return nil, fmt.Errorf("allowed root %q must be a clean absolute path other than /: %w", r, errdefs.ErrInvalidArgument)
		}
		m.roots = append(m.roots, r)
	}
	for name, d := range o.Drivers {
		if _, ok := builtins[name]; ok || name == "" || d == nil {
			return nil, fmt.Errorf("driver %q: cannot register: %w", name, errdefs.ErrInvalidArgument)
		}
		m.extra[name] = d
	}
	return m, nil
}

// Handlers returns the supported driver names, sorted (reported in
// GetGuestDetails.agent_details.storage_handlers).
func (m *Manager) Handlers() []string {
	var names []string
	for n := range builtins {
		names = append(names, n)
	}
	for n := range m.extra {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Validate checks s without touching the system: driver, mount point and
// the fields every driver shares. Add performs the same checks, plus the
// driver-specific ones.
func (m *Manager) Validate(s Storage) error {
	_, err := m.validate(s)
	return err
}

func (m *Manager) validate(s Storage) (place, error) {
	if err := checkCommon(s); err != nil {
		return place{}, err
	}
	if _, ok := builtins[s.Driver]; !ok {
		if _, ok := m.extra[s.Driver]; !ok {
			return place{}, fmt.Errorf("driver: storage driver %q is not supported: %w", s.Driver, errdefs.ErrInvalidArgument)
		}
	}
	return locate(m.roots, "mount_point", s.MountPoint)
}

// Add sets up s for the sandbox or container id and returns its mount point.
// A mount point that is already set up gains a user instead (kata shares
// storages between containers); it must then name the same driver, source
// and fstype.
func (m *Manager) Add(ctx context.Context, id string, s Storage) (string, error) {
	pl, err := m.validate(s)
	if err != nil {
		return "", fmt.Errorf("storage %q: %w", s.MountPoint, err)
	}
	mp := pl.abs

	m.mu.Lock()
	for {
		e, ok := m.entries[mp]
		if !ok {
			break
		}
		if e.pending != nil {
			ch := e.pending
			m.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			m.mu.Lock()
			continue
		}
		if e.storage.Driver != s.Driver || e.storage.Source != s.Source || e.storage.Fstype != s.Fstype {
			m.mu.Unlock()
			return "", fmt.Errorf("mount_point: %s is already used by a %s storage of %q: %w", mp, e.storage.Driver, e.storage.Source, errdefs.ErrAlreadyExists)
		}
		// The options pin what is mounted (a dm-verity root hash, an
		// encryption): a user with other options must not inherit a mount
		// set up under different terms.
		if !slices.Equal(e.storage.Options, s.Options) || !slices.Equal(e.storage.DriverOptions, s.DriverOptions) {
			m.mu.Unlock()
			return "", fmt.Errorf("mount_point: %s is already used by a %s storage of %q with other options: %w", mp, e.storage.Driver, e.storage.Source, errdefs.ErrAlreadyExists)
		}
		e.refs++
		refs := e.refs
		m.mu.Unlock()
		m.log.DebugContext(ctx, "storage shared", "id", id, "mount_point", mp, "refs", refs)
		return mp, nil
	}
	e := &entry{storage: s, pending: make(chan struct{})}
	m.entries[mp] = e
	m.mu.Unlock()

	teardown, err := m.setup(ctx, id, s, pl)

	m.mu.Lock()
	defer m.mu.Unlock()
	close(e.pending)
	e.pending = nil
	if err != nil {
		delete(m.entries, mp)
		return "", fmt.Errorf("storage %s (%s): %w", mp, s.Driver, err)
	}
	e.refs = 1
	e.teardown = teardown
	m.order = append(m.order, mp)
	m.log.InfoContext(ctx, "storage added", "id", id, "driver", s.Driver, "mount_point", mp)
	return mp, nil
}

func (m *Manager) setup(ctx context.Context, id string, s Storage, pl place) (func(context.Context) error, error) {
	if d, ok := m.extra[s.Driver]; ok {
		if err := d.Setup(ctx, id, s); err != nil {
			return nil, err
		}
		return func(ctx context.Context) error { return d.Teardown(ctx, s) }, nil
	}
	return builtins[s.Driver](m, ctx, id, s, pl)
}

// Remove drops one user of the storage at mountPoint and tears it down when
// the last user is gone. Shared storages stay until Cleanup.
func (m *Manager) Remove(ctx context.Context, mountPoint string) error {
	m.mu.Lock()
	e, ok := m.entries[mountPoint]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("storage %q: %w", mountPoint, errdefs.ErrNotFound)
	}
	if e.pending != nil {
		m.mu.Unlock()
		return fmt.Errorf("storage %q is still being set up: %w", mountPoint, errdefs.ErrFailedPrecondition)
	}
	if e.refs > 0 {
		e.refs--
	}
	if e.refs > 0 || e.storage.Shared {
		m.mu.Unlock()
		return nil
	}
	delete(m.entries, mountPoint)
	m.order = slices.DeleteFunc(m.order, func(p string) bool { return p == mountPoint })
	m.mu.Unlock()

	if e.teardown != nil {
		if err := e.teardown(ctx); err != nil {
			return fmt.Errorf("removing storage %s: %w", mountPoint, err)
		}
	}
	m.log.InfoContext(ctx, "storage removed", "mount_point", mountPoint)
	return nil
}

// MountPoints returns the mount points currently set up, in setup order.
func (m *Manager) MountPoints() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.order)
}

// Cleanup tears down every storage, most recent first (DestroySandbox). It
// waits for storages still being set up, continues past errors and returns
// them joined.
func (m *Manager) Cleanup(ctx context.Context) error {
	for {
		m.mu.Lock()
		var pending chan struct{}
		for _, e := range m.entries {
			if e.pending != nil {
				pending = e.pending
				break
			}
		}
		if pending == nil {
			break // keep the lock
		}
		m.mu.Unlock()
		select {
		case <-pending:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	order := m.order
	entries := m.entries
	m.order = nil
	m.entries = map[string]*entry{}
	m.mu.Unlock()

	var errs []error
	for i := len(order) - 1; i >= 0; i-- {
		e := entries[order[i]]
		if e == nil || e.teardown == nil {
			continue
		}
		if err := e.teardown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("removing storage %s: %w", order[i], err))
		}
	}
	return errors.Join(errs...)
}
