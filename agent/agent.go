// Package agent implements the Kata agent API (ttrpc services
// grpc.AgentService and grpc.Health) on top of Cova's rooms: containers,
// storage drivers, CopyFile, networking and guest operations.
//
// This package is the API edge: it validates every field of every request
// (the host is the adversary), converts wire messages to domain types, and
// maps domain errors (containerd errdefs classes) to gRPC codes. A panic in a
// handler is recovered and answered with INTERNAL: the agent is PID 1 and
// must never die.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cova-project/cova/internal/rpcutil"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/agent/container"
	"github.com/cova-project/cova/agent/copyfile"
	"github.com/cova-project/cova/agent/network"
	"github.com/cova-project/cova/agent/policy"
	"github.com/cova-project/cova/mount"
	pb "github.com/cova-project/cova/protocols/grpc"
)

// Version is the agent version, set at link time.
var Version = "0.1.0-dev"

// APIVersion is the Kata agent API version reported by Health.Version.
const APIVersion = "0.0.1"

// Gate decides whether a request may run. The policy engine implements it;
// the default allows everything.
type Gate interface {
	Allow(ctx context.Context, method string, req any) error
}

// PolicySetter is implemented by gates that accept a new policy (SetPolicy).
type PolicySetter interface {
	SetPolicy(text string) error
}

// ErrDenyDrain, matched with errors.Is on a Gate's error, denies a stream
// read without failing it: the agent answers with empty data (EOF) and
// drains the stream so the process never blocks on a full pipe.
var ErrDenyDrain = policy.ErrDenyDrain

// drainFlag travels in the request context from the gate to the handler.
type drainFlag struct{ set bool }

type drainKey struct{}

func drainRequested(ctx context.Context) bool {
	f, _ := ctx.Value(drainKey{}).(*drainFlag)
	return f != nil && f.set
}

// AllowAll is the Gate used when no policy is configured.
type AllowAll struct{}

// Allow implements Gate.
func (AllowAll) Allow(context.Context, string, any) error { return nil }

// Options wires an Agent.
type Options struct {
	Logger *slog.Logger
	// VM is true when the agent is PID 1 in a guest: only then may it change
	// the machine (clock, CPUs, swap, power).
	VM bool
	// Root is the Kata guest root, "/run/kata-containers".
	Root string
	// CgroupParent, when set, prefixes every container cgroup path (relative
	// paths nest under the agent's own cgroup: host mode uses this).
	CgroupParent string
	// RootfsPrefixes limits OCI.Root.Path; empty allows any absolute path
	// (development only).
	RootfsPrefixes []string
	// MountSourcePrefixes, when set, confines OCI mounts: bind mount
	// sources must lie under one of these directories (or a storage mount
	// point of the same request) and other mounts must be pseudo
	// filesystems (proc, sysfs, tmpfs, ...). Empty allows any mount
	// (development only); the agent sets [Root] as PID 1.
	MountSourcePrefixes []string

	Containers *container.Manager
	Storage    *mount.Manager
	Copier     *copyfile.Copier
	// Network is nil when network rpcs must be refused (host mode).
	Network *network.Manager
	Gate    Gate
	// PowerOff is called after DestroySandbox in a VM.
	PowerOff func()
	// Ready, when set, blocks container rpcs until the system is ready for
	// containers (cgroups mounted); its error fails them.
	Ready func(context.Context) error
	// Measure, when set, records a runtime measurement event (the AA's
	// ExtendRuntimeMeasurement) before a container or exec starts; an error
	// fails the rpc, so nothing runs unmeasured.
	Measure func(ctx context.Context, operation, content string) error
	// Unseal, when set, turns a sealed secret ("sealed.…") into its
	// plaintext (the CDH). Env values of containers and execs that are sealed
	// are unsealed before anything starts; a failure fails the rpc.
	Unseal func(ctx context.Context, sealed string) ([]byte, error)
	// ExecGrace is how long an exited exec's unread output is kept after
	// WaitProcess (default 5 s).
	ExecGrace time.Duration
	// TrustedStore, when set, moves the image layer store onto the block
	// device major:minor as an encrypted volume with an ephemeral key
	// (Kata's /dev/trusted_store: the host offers a disk so that large
	// images do not fill the guest's RAM; the guest encrypts it). Without
	// it, a /dev/trusted_store device is refused.
	TrustedStore func(ctx context.Context, major, minor uint32) error
	// ExtraMetrics, when set, appends Prometheus text of other rooms (the
	// image puller) to GetMetrics.
	ExtraMetrics func(w io.Writer)
}

// Agent serves the Kata agent API.
type Agent struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	sandbox *sandbox

	started  time.Time
	rpcCount sync.Map // method -> *atomic.Uint64
	rpcErrs  atomic.Uint64
	panics   atomic.Uint64

	// createdEnv holds, per created container, its env as the host sent it
	// (sealed values still sealed), digested for the StartContainer
	// measurement: container id -> []envDigest.
	createdEnv sync.Map
}

// New checks opts and returns an Agent.
func New(opts Options) (*Agent, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Containers == nil || opts.Storage == nil || opts.Copier == nil {
		return nil, fmt.Errorf("agent needs container, storage and copyfile managers: %w", errdefs.ErrInvalidArgument)
	}
	if opts.Root == "" {
		opts.Root = "/run/kata-containers"
	}
	if opts.Gate == nil {
		opts.Gate = AllowAll{}
	}
	if opts.ExecGrace == 0 {
		opts.ExecGrace = 5 * time.Second
	}
	return &Agent{opts: opts, log: opts.Logger, started: time.Now()}, nil
}

// Register adds the agent's services to a ttrpc server.
func (a *Agent) Register(s *ttrpc.Server) {
	pb.RegisterAgentServiceService(s, &service{a: a})
	pb.RegisterHealthService(s, &health{a: a})
}

// NewServer returns a ttrpc server with the agent registered and the
// recovery, logging and policy interceptor installed.
func (a *Agent) NewServer() (*ttrpc.Server, error) {
	s, err := ttrpc.NewServer(ttrpc.WithUnaryServerInterceptor(a.intercept))
	if err != nil {
		return nil, fmt.Errorf("ttrpc server: %w", err)
	}
	a.Register(s)
	return s, nil
}

// Serve serves on l until ctx is cancelled.
func (a *Agent) Serve(ctx context.Context, l net.Listener) error {
	s, err := a.NewServer()
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = s.Shutdown(sctx)
	}()
	err = s.Serve(ctx, l)
	if errors.Is(err, ttrpc.ErrServerClosed) || ctx.Err() != nil {
		return nil
	}
	return err
}

// ungated methods are never checked by the policy (as in kata).
var ungated = map[string]bool{"/grpc.Health/Check": true, "/grpc.Health/Version": true}

// intercept recovers panics, consults the gate, counts and logs each call,
// and maps errors to gRPC status codes.
func (a *Agent) intercept(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (resp any, err error) {
	start := time.Now()
	name := info.FullMethod
	rpc := name[strings.LastIndex(name, "/")+1:]
	defer func() {
		if r := recover(); r != nil {
			a.panics.Add(1)
			a.log.Error("panic in rpc handler", "rpc", rpc, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "%s: internal error (recovered panic)", rpc)
		}
		a.count(rpc)
		if err != nil {
			a.rpcErrs.Add(1)
			err = toStatus(rpc, err)
			a.log.Info("rpc failed", "rpc", rpc, "err", err, "ms", time.Since(start).Milliseconds())
		}
	}()
	gated := !ungated[name]
	drain := &drainFlag{}
	ctx = context.WithValue(ctx, drainKey{}, drain)
	resp, err = method(ctx, func(req any) error {
		if err := unmarshal(req); err != nil {
			return fmt.Errorf("decode request: %w: %w", err, errdefs.ErrInvalidArgument)
		}
		if !gated {
			return nil
		}
		err := a.opts.Gate.Allow(ctx, rpc, req)
		if err != nil && errors.Is(err, ErrDenyDrain) && (rpc == "ReadStdout" || rpc == "ReadStderr") {
			drain.set = true
			return nil
		}
		return err
	})
	return resp, err
}

func (a *Agent) count(rpc string) {
	v, _ := a.rpcCount.LoadOrStore(rpc, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

// toStatus maps an error to a gRPC status whose message names the rpc (a
// status from the policy gate passes through).
func toStatus(rpc string, err error) error { return rpcutil.Status(rpc, err) }

// invalid returns an INVALID_ARGUMENT error naming the field.
func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// unimplemented answers an rpc Cova does not provide.
func unimplemented(rpc string) error {
	return fmt.Errorf("%s is not implemented by cova-agent: %w", rpc, errdefs.ErrNotImplemented)
}

// hostModeRefusal is returned for rpcs that would change the machine the
// agent runs on when it is not PID 1 in a VM.
func hostModeRefusal(what string) error {
	return fmt.Errorf("refusing to %s: the agent is not PID 1 in a VM (host mode): %w", what, errdefs.ErrFailedPrecondition)
}

func processRSS() uint64 {
	data, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, rss uint64
	_, _ = fmt.Sscan(string(data), &size, &rss)
	return rss * uint64(os.Getpagesize())
}
