// Package transport opens the byte streams the agent's ttrpc API runs over.
//
// On the guest side, Listen turns a parsed agent address (config.Addr) into a
// net.Listener: AF_VSOCK in production, a unix socket for development, and two
// test transports, TCP and a virtio-serial port. On the host side, Dial opens
// a connection to an agent the way Kata's runtime does: vsock://, hvsock://
// (the hybrid vsock of Cloud Hypervisor and Firecracker), unix://, tcp://, and
// the plain unix socket schemes mock: and remote:.
//
// The package only moves bytes; it knows nothing about ttrpc.
package transport

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/agent/config"
	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// Default locations of virtio-serial ports.
const (
	DefaultDevDir   = "/dev"
	DefaultPortsDir = "/sys/class/virtio-ports"
)

// DefaultPortWait bounds how long Listen waits for a named virtio-serial port
// to show up in sysfs (ports are announced by the host after the driver has
// probed, so they can appear a little after the module is loaded).
const DefaultPortWait = 10 * time.Second

// ListenConfig holds the knobs of Listen. The zero value listens on the real
// devices with the defaults above and discards logs.
type ListenConfig struct {
	// DevDir replaces /dev when opening a virtio-serial port device: the
	// address vport:/dev/vport2p1 opens DevDir/vport2p1. Tests point it at a
	// directory of fake devices.
	DevDir string
	// PortsDir replaces /sys/class/virtio-ports when a port is given by name.
	PortsDir string
	// PortWait bounds the wait for a named port to appear; 0 means
	// DefaultPortWait, a negative value means do not wait.
	PortWait time.Duration
	// PollInterval is how often a closed virtio-serial port is checked for a
	// host connection; 0 means 50ms.
	PollInterval time.Duration
	// Logger receives transport events (port re-opens). nil discards them.
	Logger *slog.Logger
}

// Listen listens on addr with the default ListenConfig.
func Listen(ctx context.Context, addr config.Addr) (net.Listener, error) {
	return ListenConfig{}.Listen(ctx, addr)
}

// Listen opens a listener for addr:
//
//   - vsock: an AF_VSOCK listener on the port; CID -1 (any) binds every local
//     CID, any other CID binds that one only.
//   - unix: a unix socket with mode 0600. A stale socket file at the path is
//     removed first; any other kind of file there is an error. Abstract names
//     (a leading '@') have no file.
//   - tcp: a TCP listener (test transport).
//   - vport: a virtio-serial port (test transport). A port is one byte stream,
//     so the listener hands out one connection at a time over the opened
//     device and re-opens the device for the next one once the server has
//     closed the previous connection (for example after the host side went
//     away).
func (lc ListenConfig) Listen(ctx context.Context, addr config.Addr) (net.Listener, error) {
	switch addr.Scheme {
	case config.SchemeVsock:
		return listenVsock(addr)
	case config.SchemeUnix:
		return listenUnix(ctx, addr.Path)
	case config.SchemeTCP:
		var nlc net.ListenConfig
		hp := net.JoinHostPort(addr.Host, strconv.FormatUint(uint64(addr.Port), 10))
		l, err := nlc.Listen(ctx, "tcp", hp)
		if err != nil {
			return nil, fmt.Errorf("listening on tcp %s: %w", hp, err)
		}
		return l, nil
	case config.SchemeVport:
		return lc.listenVport(ctx, addr.Path)
	}
	return nil, fmt.Errorf("listening on %q: unsupported address scheme %q: %w", addr.String(), addr.Scheme, errdefs.ErrInvalidArgument)
}

func listenVsock(addr config.Addr) (net.Listener, error) {
	var (
		l   *vsock.Listener
		err error
	)
	if addr.CID == config.CIDAny {
		l, err = vsock.Listen(addr.Port, nil)
	} else {
		l, err = vsock.ListenContextID(addr.CID, addr.Port, nil)
	}
	if err != nil {
		if IsVsockUnsupported(err) {
			err = fmt.Errorf("%w (%w)", err, errdefs.ErrNotImplemented)
		}
		return nil, fmt.Errorf("listening on %s: %w", addr.String(), err)
	}
	return l, nil
}

// IsVsockUnsupported reports whether err says that this kernel has no usable
// AF_VSOCK (no vsock module or no transport): EAFNOSUPPORT, ENODEV,
// EADDRNOTAVAIL for an unknown local CID, or ENOTSUP.
func IsVsockUnsupported(err error) bool {
	return errors.Is(err, unix.EAFNOSUPPORT) || errors.Is(err, unix.ENODEV) ||
		errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EADDRNOTAVAIL)
}

// listenUnix binds a unix socket at path (or an abstract name "@...").
func listenUnix(ctx context.Context, path string) (net.Listener, error) {
	if path == "" {
		return nil, fmt.Errorf("listening on unix socket: empty path: %w", errdefs.ErrInvalidArgument)
	}
	abstract := path[0] == '@'
	if !abstract {
		if err := removeStaleSocket(path); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, fmt.Errorf("creating directory for unix socket %s: %w", path, err)
		}
	}
	nlc := net.ListenConfig{
		// fchmod on the socket before bind makes the bound file 0600 from
		// the start (Linux takes the node's mode from the socket inode, minus
		// the umask), so there is no window with looser permissions.
		Control: func(_, _ string, c syscall.RawConn) error {
			if abstract {
				return nil
			}
			var ferr error
			if err := c.Control(func(fd uintptr) { ferr = unix.Fchmod(int(fd), 0o600) }); err != nil {
				return err
			}
			return ferr
		},
	}
	l, err := nlc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on unix socket %s: %w", path, err)
	}
	if !abstract {
		if err := os.Chmod(path, 0o600); err != nil {
			l.Close()
			return nil, fmt.Errorf("setting mode of unix socket %s: %w", path, err)
		}
	}
	return l, nil
}

// removeStaleSocket removes path if it is a socket, does nothing if it does
// not exist, and refuses anything else.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking unix socket path %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("unix socket path %s exists and is not a socket (%s): %w", path, fi.Mode().Type(), errdefs.ErrAlreadyExists)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale unix socket %s: %w", path, err)
	}
	return nil
}
