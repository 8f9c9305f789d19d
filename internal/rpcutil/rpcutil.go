// Package rpcutil holds what every ttrpc server of Cova shares (the agent
// API, the Attestation Agent, the Confidential Data Hub): the mapping of
// errdefs error classes to gRPC status codes, a unix-socket listener that
// will not steal a live socket, and a serve loop that shuts down with its
// context.
package rpcutil

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// codeOf maps the outermost errdefs class (or context error) of an error to
// a gRPC code.
var codeOf = map[error]codes.Code{
	errdefs.ErrInvalidArgument:    codes.InvalidArgument,
	errdefs.ErrNotFound:           codes.NotFound,
	errdefs.ErrAlreadyExists:      codes.AlreadyExists,
	errdefs.ErrPermissionDenied:   codes.PermissionDenied,
	errdefs.ErrResourceExhausted:  codes.ResourceExhausted,
	errdefs.ErrFailedPrecondition: codes.FailedPrecondition,
	errdefs.ErrConflict:           codes.FailedPrecondition,
	errdefs.ErrNotModified:        codes.FailedPrecondition,
	errdefs.ErrAborted:            codes.Aborted,
	errdefs.ErrOutOfRange:         codes.OutOfRange,
	errdefs.ErrNotImplemented:     codes.Unimplemented,
	errdefs.ErrInternal:           codes.Internal,
	errdefs.ErrUnavailable:        codes.Unavailable,
	errdefs.ErrDataLoss:           codes.DataLoss,
	errdefs.ErrUnauthenticated:    codes.Unauthenticated,
	context.DeadlineExceeded:      codes.DeadlineExceeded,
	context.Canceled:              codes.Canceled,
}

// Code is the gRPC code of err: its outermost errdefs class or context
// error; INTERNAL for an error without one.
func Code(err error) codes.Code {
	if c, ok := codeOf[errdefs.Resolve(err)]; ok {
		return c
	}
	return codes.Internal
}

// Status maps err to a gRPC status whose message names the rpc. A status
// error (other than UNKNOWN) passes through unchanged.
func Status(rpc string, err error) error {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return err
	}
	return status.Error(Code(err), rpc+": "+err.Error())
}

// ListenUnix listens on the unix socket at the absolute path p: missing
// parent directories are created with dirMode, a stale socket (one nobody
// answers on) is removed, but a live one or anything that is not a socket
// is refused (ErrAlreadyExists); the socket is made 0600 at once so that
// only root may connect. Closing the listener removes the socket.
func ListenUnix(ctx context.Context, p string, dirMode fs.FileMode) (net.Listener, error) {
	if !filepath.IsAbs(p) {
		return nil, fmt.Errorf("socket %q: path must be absolute: %w", p, errdefs.ErrInvalidArgument)
	}
	if err := os.MkdirAll(filepath.Dir(p), dirMode); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if fi, err := os.Lstat(p); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket: %w", p, errdefs.ErrAlreadyExists)
		}
		d := net.Dialer{Timeout: time.Second}
		if c, err := d.DialContext(ctx, "unix", p); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another server is listening: %w", p, errdefs.ErrAlreadyExists)
		}
		if err := os.Remove(p); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "unix", p)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return l, nil
}

// Serve serves srv on l until ctx is done, then shuts srv down (waiting up
// to 2 s for calls in flight); l is closed when it returns. A shutdown is
// not an error.
func Serve(ctx context.Context, srv *ttrpc.Server, l net.Listener) error {
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
		case <-stop:
		}
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	err := srv.Serve(ctx, l)
	if errors.Is(err, ttrpc.ErrServerClosed) || ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("serve: %w", err)
}
