// Package dm is a minimal device-mapper client: it creates, loads, resumes,
// queries and removes mapped devices through ioctls on /dev/mapper/control,
// the way libdevmapper does, without cgo or udev. The guest has no udev, so
// the client makes the /dev/mapper/<name> node itself. Target builders turn
// rootfs/verity parameters into a verity target, a key into a crypt
// target (optionally authenticated, over an integrity target that keeps its
// tags); parameters that hold key material are never logged or put into
// errors and are loaded with DM_SECURE_DATA_FLAG so the kernel wipes its
// copies.
package dm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// DefaultControlPath is the device-mapper control node.
const DefaultControlPath = "/dev/mapper/control"

// SectorSize is the unit of target starts and lengths.
const SectorSize = 512

// Target is one line of a device-mapper table.
type Target struct {
	Start, Length uint64 // in 512-byte sectors
	Type          string // "verity", "crypt", "linear", ...
	Params        string
	// Secret marks Params as key material: it is redacted in String,
	// LogValue and errors, and loaded with DM_SECURE_DATA_FLAG.
	Secret bool
}

// String is the table line with secret parameters redacted.
func (t Target) String() string {
	p := t.Params
	if t.Secret {
		p = "<redacted>"
	}
	return fmt.Sprintf("%d %d %s %s", t.Start, t.Length, t.Type, p)
}

// describe renders targets for logs and errors, secrets redacted (a
// []Target handed to a JSON log handler would be marshalled field by
// field, key included).
func describe(targets []Target) []string {
	out := make([]string, len(targets))
	for i, t := range targets {
		out[i] = t.String()
	}
	return out
}

// LogValue keeps secret parameters out of logs.
func (t Target) LogValue() slog.Value { return slog.StringValue(t.String()) }

// DeviceInfo is what DM_DEV_STATUS reports.
type DeviceInfo struct {
	Name, UUID    string
	Major, Minor  uint32
	OpenCount     int32
	TargetCount   uint32
	EventNr       uint32
	ReadOnly      bool
	Suspended     bool
	ActiveTable   bool
	InactiveTable bool
	KernelVersion [3]uint32
}

// Control is an open device-mapper control node.
type Control interface {
	// Ioctl issues one dm ioctl with buf as struct dm_ioctl and its data;
	// the kernel writes its answer into buf.
	Ioctl(req uint, buf []byte) error
	Close() error
}

// Client talks to the kernel's device mapper. The zero value is not usable;
// call New.
type Client struct {
	controlPath string
	devDir      string
	log         *slog.Logger
	open        func(path string) (Control, error)
	mknod       func(path string, mode uint32, dev int) error
}

// Option configures a Client.
type Option func(*Client)

// WithControlPath replaces /dev/mapper/control.
func WithControlPath(p string) Option { return func(c *Client) { c.controlPath = p } }

// WithDevDir replaces /dev as the directory whose mapper/ subdirectory gets
// the device nodes.
func WithDevDir(d string) Option { return func(c *Client) { c.devDir = d } }

// WithOpener replaces opening the control node (tests use a fake kernel).
func WithOpener(open func(path string) (Control, error)) Option {
	return func(c *Client) { c.open = open }
}

// WithMknod replaces unix.Mknod for the device nodes.
func WithMknod(mknod func(path string, mode uint32, dev int) error) Option {
	return func(c *Client) { c.mknod = mknod }
}

// New returns a Client logging to log (nil discards).
func New(log *slog.Logger, opts ...Option) *Client {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{controlPath: DefaultControlPath, devDir: "/dev", log: log, open: openControl, mknod: unix.Mknod}
	for _, o := range opts {
		o(c)
	}
	return c
}

type fileControl struct{ f *os.File }

func openControl(path string) (Control, error) {
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return fileControl{f}, nil
}

func (c fileControl) Ioctl(req uint, buf []byte) error {
	rc, err := c.f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(unsafe.Pointer(&buf[0])))
	}); err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

func (c fileControl) Close() error { return c.f.Close() }

// validName checks a device name or UUID against the characters
// libdevmapper leaves unmangled, so names are safe in paths and logs.
func validName(field, v string, maxLen int, allowEmpty bool) error {
	if v == "" {
		if allowEmpty {
			return nil
		}
		return fmt.Errorf("%s: must not be empty: %w", field, errdefs.ErrInvalidArgument)
	}
	if len(v) > maxLen || v == "." || v == ".." {
		return fmt.Errorf("%s %q: must be 1 to %d characters and not . or ..: %w", field, v, maxLen, errdefs.ErrInvalidArgument)
	}
	for _, r := range v {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("#+-.:=@_", r)
		if !ok {
			return fmt.Errorf("%s %q: only letters, digits and #+-.:=@_ are allowed: %w", field, v, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

func validTargets(targets []Target) error {
	if len(targets) == 0 {
		return fmt.Errorf("targets: at least one is needed: %w", errdefs.ErrInvalidArgument)
	}
	var next uint64
	for i, t := range targets {
		if t.Type == "" || len(t.Type) >= maxTypeNameLen || strings.ContainsAny(t.Type, " \t\n\x00") {
			return fmt.Errorf("targets[%d].type %q: 1 to %d characters without blanks: %w", i, t.Type, maxTypeNameLen-1, errdefs.ErrInvalidArgument)
		}
		if t.Length == 0 {
			return fmt.Errorf("targets[%d].length: must not be 0: %w", i, errdefs.ErrInvalidArgument)
		}
		if t.Start != next {
			return fmt.Errorf("targets[%d].start %d: targets must be contiguous from 0 (expected %d): %w", i, t.Start, next, errdefs.ErrInvalidArgument)
		}
		if t.Start+t.Length < t.Start {
			return fmt.Errorf("targets[%d].length: overflows: %w", i, errdefs.ErrInvalidArgument)
		}
		if strings.ContainsAny(t.Params, "\x00\n") {
			return fmt.Errorf("targets[%d].params: must not contain NUL or newline: %w", i, errdefs.ErrInvalidArgument)
		}
		next = t.Start + t.Length
	}
	return nil
}

// classError prints the errno once but matches both it and an errdefs
// class with errors.Is.
type classError struct {
	msg        string
	err, class error
}

func (e *classError) Error() string   { return e.msg + ": " + e.err.Error() }
func (e *classError) Unwrap() []error { return []error{e.err, e.class} }

// classify wraps an ioctl errno with the errdefs class callers map to gRPC
// codes.
func classify(op, name string, err error) error {
	var class error
	switch {
	case errors.Is(err, unix.ENXIO), errors.Is(err, unix.ENOENT):
		class = errdefs.ErrNotFound
	case errors.Is(err, unix.EEXIST), errors.Is(err, unix.EBUSY) && op == "create":
		class = errdefs.ErrAlreadyExists
	case errors.Is(err, unix.EBUSY):
		class = errdefs.ErrFailedPrecondition
	case errors.Is(err, unix.EINVAL):
		class = errdefs.ErrInvalidArgument
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		class = errdefs.ErrPermissionDenied
	default:
		return fmt.Errorf("device-mapper %s %q: %w", op, name, err)
	}
	return &classError{msg: fmt.Sprintf("device-mapper %s %q", op, name), err: err, class: class}
}

// do opens the control node, runs fn and closes it.
func (c *Client) do(ctx context.Context, fn func(Control) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	ctl, err := c.open(c.controlPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("opening %s (is dm-mod loaded?): %w: %w", c.controlPath, err, errdefs.ErrNotFound)
		}
		return fmt.Errorf("opening %s: %w", c.controlPath, err)
	}
	defer ctl.Close()
	return fn(ctl)
}

// simple issues an ioctl that carries only the header and returns the
// answer's header.
func simple(ctl Control, cmd uint, h header) (header, error) {
	h.Version = [3]uint32{versionMajor, 0, 0}
	h.DataSize = ioctlSize
	h.DataStart = ioctlSize
	buf := make([]byte, ioctlSize)
	if err := h.marshal(buf); err != nil {
		return header{}, err
	}
	if err := ctl.Ioctl(ioctlRequest(cmd), buf); err != nil {
		return header{}, err
	}
	return unmarshalHeader(buf)
}

// Version returns the kernel's device-mapper interface version.
func (c *Client) Version(ctx context.Context) ([3]uint32, error) {
	var v [3]uint32
	err := c.do(ctx, func(ctl Control) error {
		h, err := simple(ctl, cmdVersion, header{})
		if err != nil {
			return classify("version", "", err)
		}
		v = h.Version
		return nil
	})
	return v, err
}

// CreateDevice creates the mapped device name, loads targets as its table
// (read-only if readOnly), activates it and makes its node; it returns the
// node's path (<devdir>/mapper/<name>). On failure nothing is left behind.
func (c *Client) CreateDevice(ctx context.Context, name, uuid string, targets []Target, readOnly bool) (string, error) {
	if err := validName("name", name, nameLen-1, false); err != nil {
		return "", err
	}
	if err := validName("uuid", uuid, uuidLen-1, true); err != nil {
		return "", err
	}
	if err := validTargets(targets); err != nil {
		return "", err
	}
	var path string
	err := c.do(ctx, func(ctl Control) error {
		h, err := simple(ctl, cmdDevCreate, header{Name: name, UUID: uuid})
		if err != nil {
			return classify("create", name, err)
		}
		major, minor := unix.Major(h.Dev), unix.Minor(h.Dev)
		c.log.DebugContext(ctx, "dm device created", "name", name, "major", major, "minor", minor)
		undo := func(cause error) error {
			if _, rerr := simple(ctl, cmdDevRemove, header{Name: name}); rerr != nil {
				c.log.WarnContext(ctx, "dm: removing a half-made device failed", "name", name, "error", rerr)
			}
			return cause
		}
		if err := ctx.Err(); err != nil {
			return undo(err)
		}
		flags := uint32(0)
		secret := false
		for _, t := range targets {
			secret = secret || t.Secret
		}
		if readOnly {
			flags |= flagReadOnly
		}
		if secret {
			flags |= flagSecureData
		}
		buf, err := marshalLoad(header{Version: [3]uint32{versionMajor, 0, 0}, Name: name, Flags: flags}, targets)
		if err != nil {
			return undo(err)
		}
		err = ctl.Ioctl(ioctlRequest(cmdTableLoad), buf)
		if secret {
			clear(buf)
		}
		if err != nil {
			return undo(fmt.Errorf("%w (table %q; the kernel log names the reason)", classify("table load", name, err), describe(targets)))
		}
		if _, err := simple(ctl, cmdDevSuspend, header{Name: name}); err != nil {
			return undo(classify("resume", name, err))
		}
		p, err := c.makeNode(name, major, minor)
		if err != nil {
			return undo(err)
		}
		path = p
		c.log.InfoContext(ctx, "dm device active", "name", name, "path", p, "targets", describe(targets), "read_only", readOnly)
		return nil
	})
	return path, err
}

// makeNode creates <devdir>/mapper/<name> as a block node for major:minor,
// replacing a stale node of the same name.
func (c *Client) makeNode(name string, major, minor uint32) (string, error) {
	dir := filepath.Join(c.devDir, "mapper")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating %s: %w", dir, err)
	}
	p := filepath.Join(dir, name)
	dev := unix.Mkdev(major, minor)
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err == nil {
		if st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == dev {
			return p, nil
		}
		if err := os.Remove(p); err != nil {
			return "", fmt.Errorf("removing stale %s: %w", p, err)
		}
	}
	if err := c.mknod(p, unix.S_IFBLK|0o600, int(dev)); err != nil {
		return "", fmt.Errorf("mknod %s: %w", p, err)
	}
	return p, nil
}

// RemoveDevice removes the mapped device and its node. A device still open
// (mounted) fails with errdefs.ErrFailedPrecondition; a missing one with
// errdefs.ErrNotFound.
func (c *Client) RemoveDevice(ctx context.Context, name string) error {
	if err := validName("name", name, nameLen-1, false); err != nil {
		return err
	}
	return c.do(ctx, func(ctl Control) error {
		if _, err := simple(ctl, cmdDevRemove, header{Name: name}); err != nil {
			return classify("remove", name, err)
		}
		p := filepath.Join(c.devDir, "mapper", name)
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing %s: %w", p, err)
		}
		c.log.InfoContext(ctx, "dm device removed", "name", name)
		return nil
	})
}

// Info returns the state of the device name (DM_DEV_STATUS).
func (c *Client) Info(ctx context.Context, name string) (DeviceInfo, error) {
	if err := validName("name", name, nameLen-1, false); err != nil {
		return DeviceInfo{}, err
	}
	var info DeviceInfo
	err := c.do(ctx, func(ctl Control) error {
		h, err := simple(ctl, cmdDevStatus, header{Name: name})
		if err != nil {
			return classify("status", name, err)
		}
		info = infoFrom(h)
		return nil
	})
	return info, err
}

func infoFrom(h header) DeviceInfo {
	return DeviceInfo{
		Name: h.Name, UUID: h.UUID,
		Major: unix.Major(h.Dev), Minor: unix.Minor(h.Dev),
		OpenCount: h.OpenCount, TargetCount: h.TargetCount, EventNr: h.EventNr,
		ReadOnly:      h.Flags&flagReadOnly != 0,
		Suspended:     h.Flags&flagSuspend != 0,
		ActiveTable:   h.Flags&flagActivePresent != 0,
		InactiveTable: h.Flags&flagInactivePresent != 0,
		KernelVersion: h.Version,
	}
}

// maxStatusBuffer bounds the answer buffer of Status and Table.
const maxStatusBuffer = 1 << 20

// Status returns each target's status line (DM_TABLE_STATUS), e.g. "V" for
// a verity target that has seen no corruption and "C" for one that has.
func (c *Client) Status(ctx context.Context, name string) (DeviceInfo, []TargetStatus, error) {
	return c.tableStatus(ctx, name, 0)
}

// Table returns the active table (DM_TABLE_STATUS with
// DM_STATUS_TABLE_FLAG). A crypt target's line holds its key in hex: treat
// the result as secret.
func (c *Client) Table(ctx context.Context, name string) (DeviceInfo, []TargetStatus, error) {
	return c.tableStatus(ctx, name, flagStatusTable|flagSecureData)
}

func (c *Client) tableStatus(ctx context.Context, name string, flags uint32) (DeviceInfo, []TargetStatus, error) {
	if err := validName("name", name, nameLen-1, false); err != nil {
		return DeviceInfo{}, nil, err
	}
	var info DeviceInfo
	var targets []TargetStatus
	err := c.do(ctx, func(ctl Control) error {
		for size := 16 << 10; size <= maxStatusBuffer; size *= 2 {
			buf := make([]byte, size)
			h := header{Version: [3]uint32{versionMajor, 0, 0}, DataSize: uint32(size), DataStart: ioctlSize, Name: name, Flags: flags}
			if err := h.marshal(buf); err != nil {
				return err
			}
			if err := ctl.Ioctl(ioctlRequest(cmdTableStatus), buf); err != nil {
				return classify("table status", name, err)
			}
			out, ts, err := unmarshalStatus(buf)
			if flags&flagSecureData != 0 {
				clear(buf)
			}
			if err != nil {
				return err
			}
			if out.Flags&flagBufferFull != 0 {
				continue
			}
			info, targets = infoFrom(out), ts
			return nil
		}
		return fmt.Errorf("device-mapper table status %q: answer larger than %d bytes: %w", name, maxStatusBuffer, errdefs.ErrResourceExhausted)
	})
	return info, targets, err
}

// Remover is what RemoveBusy needs of a Client.
type Remover interface {
	RemoveDevice(ctx context.Context, name string) error
}

// Busy-device retries, as libdevmapper's: a device whose file system was
// just unmounted can stay busy for a moment (the last reference, from a
// container's mount namespace being torn down, goes asynchronously).
const (
	// BusyAttempts is how often RemoveBusy tries.
	BusyAttempts = 25
	// BusyBackoff is RemoveBusy's default pause between attempts.
	BusyBackoff = 200 * time.Millisecond
)

// RemoveBusy removes the device name, retrying while the kernel says it is
// busy (25 attempts, backoff apart; BusyBackoff when 0) or until ctx ends.
// retries counts the attempts after the first.
func RemoveBusy(ctx context.Context, r Remover, name string, backoff time.Duration) (retries int, err error) {
	if backoff <= 0 {
		backoff = BusyBackoff
	}
	for i := 0; i < BusyAttempts; i++ {
		if err = r.RemoveDevice(ctx, name); err == nil || !errors.Is(err, unix.EBUSY) {
			return i, err
		}
		if i == BusyAttempts-1 {
			break
		}
		select {
		case <-ctx.Done():
			return i, fmt.Errorf("%w (gave up: %w)", err, ctx.Err())
		case <-time.After(backoff):
		}
	}
	return BusyAttempts - 1, err
}
