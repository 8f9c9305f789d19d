package aaservice

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/cova-project/cova/internal/rpcutil"

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
	l, err := rpcutil.ListenUnix(context.Background(), p, 0o755)
	if err != nil {
		return nil, fmt.Errorf("aaservice: %w", err)
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

// toStatus maps err to a gRPC status whose message names the rpc.
func toStatus(rpc string, err error) error { return rpcutil.Status(rpc, err) }

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
	if err := rpcutil.Serve(ctx, srv, l); err != nil {
		return fmt.Errorf("aaservice: %w", err)
	}
	return nil
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
