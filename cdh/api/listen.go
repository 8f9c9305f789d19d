package api

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"runtime/debug"
	"strings"

	"github.com/cova-project/cova/internal/rpcutil"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Where upstream's CDH listens.
const (
	DefaultSocket = "/run/confidential-containers/cdh.sock"
	DefaultAddr   = "unix://" + DefaultSocket
)

// SocketPath returns the file system path of a socket address: "" (the
// default), "unix:///abs/path" or an absolute path.
func SocketPath(addr string) (string, error) {
	if addr == "" {
		return DefaultSocket, nil
	}
	p := addr
	if rest, ok := strings.CutPrefix(addr, "unix://"); ok {
		p = rest
	} else if strings.Contains(addr, "://") {
		return "", fmt.Errorf("cdh api: address %q: want unix:///PATH: %w", clip(addr), errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("cdh api: address %q: socket path must be absolute: %w", clip(addr), errdefs.ErrInvalidArgument)
	}
	return filepath.Clean(p), nil
}

// Listen listens on the unix socket at path (see SocketPath; "" is
// DefaultSocket). It creates missing parent directories 0700, removes a
// stale socket (one nobody answers on) but refuses to replace a live one or
// anything that is not a socket, and makes the socket 0600 so that only
// root may connect. Closing the listener removes the socket.
func Listen(ctx context.Context, path string) (net.Listener, error) {
	p, err := SocketPath(path)
	if err != nil {
		return nil, err
	}
	l, err := rpcutil.ListenUnix(ctx, p, 0o700)
	if err != nil {
		return nil, fmt.Errorf("cdh api: %w", err)
	}
	return l, nil
}

// NewTTRPCServer returns a ttrpc server with the services registered and an
// interceptor that answers an undecodable request INVALID_ARGUMENT and
// recovers any panic outside the handlers.
func (s *Server) NewTTRPCServer() (*ttrpc.Server, error) {
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(s.intercept))
	if err != nil {
		return nil, fmt.Errorf("cdh api: ttrpc server: %w", err)
	}
	s.Register(srv)
	return srv, nil
}

func (s *Server) intercept(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (resp any, err error) {
	rpc := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in CDH rpc", "rpc", rpc, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "%s: internal error", rpc)
		}
	}()
	return method(ctx, func(req any) error {
		if err := unmarshal(req); err != nil {
			s.log.Info("CDH rpc failed", "rpc", rpc, "err", err)
			return status.Errorf(codes.InvalidArgument, "%s: decode request: %v", rpc, err)
		}
		return nil
	})
}

// Serve serves on l until ctx is done, then shuts down (waiting up to 2 s
// for calls in flight) and closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	srv, err := s.NewTTRPCServer()
	if err != nil {
		l.Close()
		return err
	}
	if err := rpcutil.Serve(ctx, srv, l); err != nil {
		return fmt.Errorf("cdh api: %w", err)
	}
	return nil
}

// ListenAndServe listens on path (see Listen) and serves until ctx is done.
func (s *Server) ListenAndServe(ctx context.Context, path string) error {
	l, err := Listen(ctx, path)
	if err != nil {
		return err
	}
	return s.Serve(ctx, l)
}

// Start listens on path (see Listen) and serves in the background until ctx
// is done; it returns once the socket accepts connections. Serving errors
// are logged.
func (s *Server) Start(ctx context.Context, path string) error {
	l, err := Listen(ctx, path)
	if err != nil {
		return err
	}
	go func() {
		if err := s.Serve(ctx, l); err != nil {
			s.log.Error("CDH API stopped", "err", err)
		}
	}()
	s.log.Info("CDH API listening", "socket", l.Addr().String())
	return nil
}
