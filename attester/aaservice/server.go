package aaservice

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	"github.com/cova-project/cova/protocols/aa"
)

// Where upstream's AA listens.
const (
	DefaultSocket = "/run/confidential-containers/attestation-agent/attestation-agent.sock"
	DefaultAddr   = "unix://" + DefaultSocket
)

// SocketPath returns the file system path of a unix socket address:
// "unix:///abs/path" or an absolute path.
func SocketPath(addr string) (string, error) {
	p := addr
	if rest, ok := strings.CutPrefix(addr, "unix://"); ok {
		p = rest
	} else if strings.Contains(addr, "://") {
		return "", fmt.Errorf("address %q: want unix:///PATH: %w", addr, errdefs.ErrInvalidArgument)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("address %q: socket path must be absolute: %w", addr, errdefs.ErrInvalidArgument)
	}
	return filepath.Clean(p), nil
}

// Listen listens on the unix socket addr (see SocketPath): it creates the
// parent directories (0755, as upstream), replaces a stale socket (but
// refuses to remove anything that is not a socket) and makes the socket
// 0600, so only root may connect.
func Listen(addr string) (net.Listener, error) {
	p, err := SocketPath(addr)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, fmt.Errorf("aaservice: create socket directory: %w", err)
	}
	if fi, err := os.Lstat(p); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("aaservice: %s exists and is not a socket: %w", p, errdefs.ErrAlreadyExists)
		}
		if err := os.Remove(p); err != nil {
			return nil, fmt.Errorf("aaservice: remove stale socket: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("aaservice: %w", err)
	}
	l, err := net.Listen("unix", p)
	if err != nil {
		return nil, fmt.Errorf("aaservice: listen: %w", err)
	}
	// The socket is created with the umask's mode (0755 under the usual
	// 022, which already denies others a connect); tighten it at once.
	if err := os.Chmod(p, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("aaservice: chmod socket: %w", err)
	}
	return l, nil
}

// NewServer returns a ttrpc server with the service registered and an
// interceptor that recovers panics, logs failures and maps errors to gRPC
// status codes (errdefs classes; context errors; anything else INTERNAL).
func (s *Service) NewServer() (*ttrpc.Server, error) {
	srv, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(s.intercept))
	if err != nil {
		return nil, fmt.Errorf("aaservice: ttrpc server: %w", err)
	}
	aa.RegisterAttestationAgentServiceService(srv, s)
	return srv, nil
}

func (s *Service) intercept(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (resp any, err error) {
	start := time.Now()
	rpc := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
	defer func() {
		if r := recover(); r != nil {
			s.log.Error("panic in AA rpc", "rpc", rpc, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "%s: internal error", rpc)
			return
		}
		if err != nil {
			err = toStatus(rpc, err)
			s.log.Info("AA rpc failed", "rpc", rpc, "err", err, "ms", time.Since(start).Milliseconds())
		}
	}()
	return method(ctx, func(req any) error {
		if err := unmarshal(req); err != nil {
			return fmt.Errorf("decode request: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		return nil
	})
}

// codeOf maps the outermost errdefs class (or context error) of err to a
// gRPC code; errors without a class are INTERNAL.
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

// toStatus maps err to a gRPC status whose message names the rpc. A status
// error passes through.
func toStatus(rpc string, err error) error {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return err
	}
	c, ok := codeOf[errdefs.Resolve(err)]
	if !ok {
		c = codes.Internal
	}
	return status.Error(c, rpc+": "+err.Error())
}

// Serve listens on addr (see Listen) and serves until ctx is done, then
// shuts the server down and removes the socket.
func (s *Service) Serve(ctx context.Context, addr string) error {
	l, err := Listen(addr)
	if err != nil {
		return err
	}
	return s.ServeListener(ctx, l)
}

// ServeListener serves on l until ctx is done; l is closed when it returns.
// A unix socket listener removes its socket file on close.
func (s *Service) ServeListener(ctx context.Context, l net.Listener) error {
	srv, err := s.NewServer()
	if err != nil {
		l.Close()
		return err
	}
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
	err = srv.Serve(ctx, l)
	if errors.Is(err, ttrpc.ErrServerClosed) || ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("aaservice: serve: %w", err)
}

// StartOptions configures Start.
type StartOptions struct {
	// Primary and Additional are the attesters (see Detect).
	Primary    attester.Attester
	Additional []attester.Attester
	// Config is the AA configuration (ParseConfig of initdata's aa.toml);
	// the zero value behaves as DefaultConfig.
	Config Config
	// EventLogPath and WALPath locate the event log; eventlog's defaults
	// when empty.
	EventLogPath, WALPath string
	// Addr is where to listen; DefaultAddr when empty.
	Addr string
	// Tokens serves GetToken (the KBS client); nil answers UNIMPLEMENTED.
	Tokens TokenGetter
	// Logger is discarded when nil.
	Logger *slog.Logger
}

// Start is the agent's in-process AA: it opens the event log when
// Config.Eventlog.Enable is set and the primary attester has measurement
// registers (a crash-recovery failure is an error: the caller must not
// serve), listens on Addr, and serves in the background until ctx is done,
// then closes the event log. It returns once the socket accepts
// connections.
func Start(ctx context.Context, o StartOptions) (*Service, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pcr, err := o.Config.Eventlog.eventlogPCR(o.Primary.Tee())
	if err != nil {
		return nil, fmt.Errorf("aaservice: %w", err)
	}
	if pcr != o.Config.Eventlog.InitPCR && o.Config.Eventlog.Enable {
		log.Info("event log on PCR 23: PCRs 17-22 need locality 4 on a TPM", "tee", o.Primary.Tee().String())
	}
	o.Config.Eventlog.InitPCR = pcr
	var elog *eventlog.Log
	if o.Config.Eventlog.Enable {
		if m, err := attester.AsRuntimeMeasurer(o.Primary); err != nil {
			log.Warn("event log enabled but the TEE has no measurement registers", "err", err)
		} else {
			elog, err = eventlog.Open(ctx, eventlog.Config{
				Path: o.EventLogPath, WALPath: o.WALPath, DefaultPCR: o.Config.Eventlog.InitPCR,
				Measurer: m, Logger: log,
			})
			if err != nil {
				return nil, fmt.Errorf("aaservice: %w", err)
			}
		}
	}
	closeLog := func() {
		if elog != nil {
			_ = elog.Close()
		}
	}
	s, err := New(Options{
		Primary: o.Primary, Additional: o.Additional, EventLog: elog,
		EventLogEnabled: o.Config.Eventlog.Enable, InitPCR: o.Config.Eventlog.InitPCR, Logger: log,
		Tokens: o.Tokens,
	})
	if err != nil {
		closeLog()
		return nil, err
	}
	addr := o.Addr
	if addr == "" {
		addr = DefaultAddr
	}
	l, err := Listen(addr)
	if err != nil {
		closeLog()
		return nil, err
	}
	go func() {
		defer closeLog()
		if err := s.ServeListener(ctx, l); err != nil {
			log.Error("AA API stopped", "err", err)
		}
	}()
	log.Info("AA API listening", "addr", addr, "tee", o.Primary.Tee().String(), "eventlog", elog != nil)
	return s, nil
}
