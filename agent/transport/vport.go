package transport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// vportEntryRE matches the device names of virtio-serial ports
// (/sys/class/virtio-ports/vportNpM, /dev/vportNpM).
var vportEntryRE = regexp.MustCompile(`^vport[0-9]{1,4}p[0-9]{1,5}$`)

// maxPortNameLen bounds the sysfs name file we read (the host picks names).
const maxPortNameLen = 256

// vportListener serves one virtio-serial port as a listener of one
// connection at a time.
type vportListener struct {
	path     string // device path after DevDir/name resolution
	interval time.Duration
	log      *slog.Logger

	done      chan struct{}
	closeOnce sync.Once
	// token holds one value while no connection is handed out.
	token chan struct{}
}

// listenVport resolves the port and checks that it is a character device.
func (lc ListenConfig) listenVport(ctx context.Context, spec string) (net.Listener, error) {
	devDir := lc.DevDir
	if devDir == "" {
		devDir = DefaultDevDir
	}
	portsDir := lc.PortsDir
	if portsDir == "" {
		portsDir = DefaultPortsDir
	}
	wait := lc.PortWait
	if wait == 0 {
		wait = DefaultPortWait
	}
	interval := lc.PollInterval
	if interval <= 0 {
		interval = 50 * time.Millisecond
	}
	log := lc.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	var deadline time.Time
	if wait > 0 {
		deadline = time.Now().Add(wait)
	}
	var path string
	for {
		var err error
		path, err = resolveVport(devDir, portsDir, spec)
		if err == nil {
			var fi os.FileInfo
			fi, err = os.Stat(path)
			if err == nil {
				if fi.Mode().Type() != fs.ModeCharDevice|fs.ModeDevice {
					return nil, fmt.Errorf("virtio-serial port %s: %s is not a character device: %w", spec, path, errdefs.ErrInvalidArgument)
				}
				break
			}
		}
		if !errors.Is(err, fs.ErrNotExist) || deadline.IsZero() || time.Now().After(deadline) {
			return nil, fmt.Errorf("virtio-serial port %s: %w", spec, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for virtio-serial port %s: %w", spec, ctx.Err())
		case <-time.After(interval):
		}
	}

	l := &vportListener{
		path:     path,
		interval: interval,
		log:      log.With("port", path),
		done:     make(chan struct{}),
		token:    make(chan struct{}, 1),
	}
	l.token <- struct{}{}
	return l, nil
}

// resolveVport maps "/dev/vportNpM" to devDir/vportNpM and a port name to
// the device whose sysfs name file holds it. A missing name wraps
// fs.ErrNotExist.
func resolveVport(devDir, portsDir, spec string) (string, error) {
	if strings.HasPrefix(spec, "/") {
		base := filepath.Base(spec)
		if filepath.Dir(spec) != "/dev" || !vportEntryRE.MatchString(base) {
			return "", fmt.Errorf("device path %q: want /dev/vportNpM: %w", spec, errdefs.ErrInvalidArgument)
		}
		return filepath.Join(devDir, base), nil
	}
	entries, err := os.ReadDir(portsDir)
	if err != nil {
		return "", fmt.Errorf("listing virtio-serial ports: %w", err)
	}
	for _, e := range entries {
		if !vportEntryRE.MatchString(e.Name()) {
			continue
		}
		name, err := readSmallFile(filepath.Join(portsDir, e.Name(), "name"), maxPortNameLen)
		if err != nil {
			continue // unnamed ports have an empty or missing name file
		}
		if string(bytes.TrimRight(name, "\n")) == spec {
			return filepath.Join(devDir, e.Name()), nil
		}
	}
	return "", fmt.Errorf("no virtio-serial port named %q in %s: %w", spec, portsDir, fs.ErrNotExist)
}

func readSmallFile(path string, limit int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	buf := make([]byte, limit+1)
	n, err := f.Read(buf)
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, fmt.Errorf("%s: longer than %d bytes", path, limit)
	}
	return buf[:n], nil
}

// Accept waits until the previous connection (if any) has been closed, then
// opens the port, waits for the host side to be connected and returns a
// connection over it. It fails only when the listener is closed.
func (l *vportListener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
		return nil, l.closedErr()
	case <-l.token:
	}
	f, err := l.open()
	if err != nil {
		l.token <- struct{}{}
		return nil, err
	}
	l.log.Debug("virtio-serial port connected")
	return &vportConn{File: f, addr: vportAddr(l.path), release: func() { l.token <- struct{}{} }}, nil
}

func (l *vportListener) closedErr() error {
	return &net.OpError{Op: "accept", Net: "vport", Addr: vportAddr(l.path), Err: net.ErrClosed}
}

func (l *vportListener) sleep() bool {
	select {
	case <-l.done:
		return false
	case <-time.After(l.interval):
		return true
	}
}

// open opens the device, retrying while it is missing or busy, and returns
// once the host side is connected.
func (l *vportListener) open() (*os.File, error) {
	var lastErr string
	for {
		select {
		case <-l.done:
			return nil, l.closedErr()
		default:
		}
		// O_NOCTTY: the agent is PID 1 and must never pick up a controlling
		// terminal. O_NONBLOCK: reads and writes go through Go's poller.
		fd, err := unix.Open(l.path, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			if err.Error() != lastErr {
				l.log.Debug("opening virtio-serial port failed, retrying", "err", err)
				lastErr = err.Error()
			}
			if !l.sleep() {
				return nil, l.closedErr()
			}
			continue
		}
		lastErr = ""
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
			unix.Close(fd)
			l.log.Warn("virtio-serial port is not a character device, retrying")
			if !l.sleep() {
				return nil, l.closedErr()
			}
			continue
		}
		switch l.waitHost(fd, &st) {
		case hostConnected:
			return os.NewFile(uintptr(fd), l.path), nil
		case hostReopen:
			unix.Close(fd)
		case hostClosed:
			unix.Close(fd)
			return nil, l.closedErr()
		}
	}
}

type hostState int

const (
	hostConnected hostState = iota
	hostReopen              // the device node went away or changed: open it again
	hostClosed              // the listener was closed
)

// waitHost polls fd until the host end is connected. A virtio-serial port
// reports POLLHUP while no host is attached and stays usable across
// reconnects; a node that disappeared or now names another device is
// re-opened.
func (l *vportListener) waitHost(fd int, st *unix.Stat_t) hostState {
	timeout := int(l.interval / time.Millisecond)
	if timeout < 1 {
		timeout = 1
	}
	for {
		select {
		case <-l.done:
			return hostClosed
		default:
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, timeout)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			l.log.Debug("polling virtio-serial port failed, re-opening", "err", err)
			if !l.sleep() {
				return hostClosed
			}
			return hostReopen
		}
		if n == 0 || pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) == 0 {
			return hostConnected
		}
		// Not connected (yet). Sleep, since poll returns at once on HUP,
		// and re-open if the node no longer is the device we hold.
		if !l.sleep() {
			return hostClosed
		}
		var now unix.Stat_t
		if err := unix.Stat(l.path, &now); err != nil || now.Rdev != st.Rdev || now.Ino != st.Ino || now.Dev != st.Dev {
			return hostReopen
		}
	}
}

// Close stops Accept. A connection already handed out stays open until its
// user closes it.
func (l *vportListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

func (l *vportListener) Addr() net.Addr { return vportAddr(l.path) }

// vportAddr is the net.Addr of a virtio-serial port: its device path.
type vportAddr string

func (vportAddr) Network() string  { return "vport" }
func (a vportAddr) String() string { return string(a) }

// vportConn is a net.Conn over an opened port device.
type vportConn struct {
	*os.File
	addr      vportAddr
	closeOnce sync.Once
	closeErr  error
	release   func()
}

// Read maps the ways a port reports that the host end went away (EOF on
// virtio-serial; EIO, EPIPE or a reset elsewhere) to io.EOF, which servers
// such as ttrpc treat as "client gone, close the connection".
func (c *vportConn) Read(b []byte) (int, error) {
	n, err := c.File.Read(b)
	if err != nil && (errors.Is(err, unix.EIO) || errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET)) {
		err = io.EOF
	}
	return n, err
}

func (c *vportConn) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.File.Close()
		c.release()
	})
	return c.closeErr
}

func (c *vportConn) LocalAddr() net.Addr  { return c.addr }
func (c *vportConn) RemoteAddr() net.Addr { return c.addr }
