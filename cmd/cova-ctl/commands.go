package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cova-project/cova/protocols/grpc"
)

// copyChunkSize is the CopyFile data size per request, as the Kata shim
// sends (ttrpc messages are limited to 4 MiB).
const copyChunkSize = 1 << 20

// options holds the flags and arguments of every command; each command
// registers the flags it uses.
type options struct {
	id, execID    string
	hostname      string
	rootfs        string
	image         string // guest pull instead of rootfs
	guestRoot     string // the agent's Kata root (mount points of pulled images)
	tty           bool
	detach        bool
	signal        string
	removeTimeout uint
	uid, gid      int
	env           envList // extra KEY=VALUE for the container process
	args          []string
	signalNum     uint32 // parsed from signal by check
}

// command is one subcommand.
type command struct {
	name  string
	args  string // synopsis after the name
	help  string
	flags func(*flag.FlagSet, *options)
	check func(*options) error
	run   func(context.Context, *app, *options) error
}

// Flag helpers, so every command spells its flags the same way.
func idFlag(fs *flag.FlagSet, o *options) { fs.StringVar(&o.id, "id", "", "container id (required)") }
func execIDFlag(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.execID, "exec-id", "", "exec id (\"\" = the container's init process)")
}
func ttyFlag(fs *flag.FlagSet, o *options) {
	fs.BoolVar(&o.tty, "tty", false, "allocate a terminal for the process")
}
func idOnly(fs *flag.FlagSet, o *options) { idFlag(fs, o) }

func needID(o *options) error {
	if o.id == "" {
		return errors.New("--id is required")
	}
	return noArgs(o)
}

func noArgs(o *options) error {
	if len(o.args) > 0 {
		return fmt.Errorf("unexpected arguments %q", o.args)
	}
	return nil
}

func needCmd(o *options) error {
	if len(o.args) == 0 {
		return errors.New("missing command to run (after --)")
	}
	return nil
}

// commands is the table of subcommands, in help order.
var commands = []command{
	{name: "check", help: "Health.Check: print the serving status (SERVING)", check: noArgs, run: cmdCheck},
	{name: "version", help: "Health.Version: print the agent and API versions", check: noArgs, run: cmdVersion},
	{name: "guest-details", help: "GetGuestDetails: print the guest's capabilities as JSON", check: noArgs, run: cmdGuestDetails},
	{
		name: "create-sandbox", args: "[--id ID] [--hostname NAME]",
		help: "CreateSandbox (a random id is made up and printed when --id is empty)",
		flags: func(fs *flag.FlagSet, o *options) {
			fs.StringVar(&o.id, "id", "", "sandbox id (default: random)")
			fs.StringVar(&o.hostname, "hostname", "cova", "sandbox host name")
		},
		check: noArgs, run: cmdCreateSandbox,
	},
	{name: "destroy-sandbox", help: "DestroySandbox (the agent then shuts the guest down)", check: noArgs, run: cmdDestroySandbox},
	{
		name: "create-container", args: "--id ID --rootfs DIR [--tty] -- CMD [ARG...]",
		help:  "CreateContainer with a default runc spec for the guest directory DIR",
		flags: func(fs *flag.FlagSet, o *options) { idFlag(fs, o); rootfsFlag(fs, o); ttyFlag(fs, o) },
		check: func(o *options) error {
			if o.id == "" {
				return errors.New("--id is required")
			}
			if o.rootfs == "" {
				return errors.New("--rootfs is required")
			}
			return needCmd(o)
		},
		run: cmdCreateContainer,
	},
	{name: "start", args: "--id ID", help: "StartContainer", flags: idOnly, check: needID, run: cmdStart},
	{
		name: "exec", args: "--id ID --exec-id EID [--tty] [--detach] -- CMD [ARG...]",
		help: "ExecProcess, then forward stdio and exit with its status (--detach: only start it)",
		flags: func(fs *flag.FlagSet, o *options) {
			idFlag(fs, o)
			fs.StringVar(&o.execID, "exec-id", "", "exec id (required)")
			ttyFlag(fs, o)
			fs.BoolVar(&o.detach, "detach", false, "do not attach stdio or wait")
		},
		check: func(o *options) error {
			if o.id == "" || o.execID == "" {
				return errors.New("--id and --exec-id are required")
			}
			return needCmd(o)
		},
		run: cmdExec,
	},
	{
		name: "wait", args: "--id ID [--exec-id EID]", help: "WaitProcess: exit with the process's exit status",
		flags: func(fs *flag.FlagSet, o *options) { idFlag(fs, o); execIDFlag(fs, o) },
		check: needID, run: cmdWait,
	},
	{
		name: "signal", args: "--id ID [--exec-id EID] --signal N", help: "SignalProcess (N: number or name such as TERM)",
		flags: func(fs *flag.FlagSet, o *options) {
			idFlag(fs, o)
			fs.StringVar(&o.execID, "exec-id", "", "exec id (\"\" = every process of the container)")
			fs.StringVar(&o.signal, "signal", "", "signal number or name (required)")
		},
		check: func(o *options) error {
			if err := needID(o); err != nil {
				return err
			}
			if o.signal == "" {
				return errors.New("--signal is required")
			}
			n, err := parseSignal(o.signal)
			if err != nil {
				return err
			}
			o.signalNum = n
			return nil
		},
		run: cmdSignal,
	},
	{
		name: "remove", args: "--id ID [--timeout SECONDS]", help: "RemoveContainer (timeout 0: the agent waits without limit)",
		flags: func(fs *flag.FlagSet, o *options) {
			idFlag(fs, o)
			fs.UintVar(&o.removeTimeout, "timeout", 0, "seconds the agent waits for the container to stop")
		},
		check: func(o *options) error {
			if o.removeTimeout > 1<<31 {
				return errors.New("--timeout is too large")
			}
			return needID(o)
		},
		run: cmdRemove,
	},
	{name: "stats", args: "--id ID", help: "StatsContainer: print cgroup and network statistics as JSON", flags: idOnly, check: needID, run: cmdStats},
	{name: "pause", args: "--id ID", help: "PauseContainer", flags: idOnly, check: needID, run: cmdPause},
	{name: "resume", args: "--id ID", help: "ResumeContainer", flags: idOnly, check: needID, run: cmdResume},
	{name: "list-interfaces", help: "ListInterfaces: print the guest's interfaces as JSON", check: noArgs, run: cmdListInterfaces},
	{name: "list-routes", help: "ListRoutes: print the guest's routes as JSON", check: noArgs, run: cmdListRoutes},
	{name: "metrics", help: "GetMetrics: print the Prometheus text", check: noArgs, run: cmdMetrics},
	{name: "oom-event", help: "GetOOMEvent: wait for an OOM kill and print the container id", check: noArgs, run: cmdOOMEvent},
	{
		name: "copy-file", args: "[--uid N] [--gid N] LOCAL REMOTE",
		help: "CopyFile: copy a local file, directory or symlink to REMOTE in the guest (1 MiB chunks)",
		flags: func(fs *flag.FlagSet, o *options) {
			fs.IntVar(&o.uid, "uid", 0, "owner uid in the guest")
			fs.IntVar(&o.gid, "gid", 0, "owner gid in the guest")
		},
		check: func(o *options) error {
			if len(o.args) != 2 {
				return errors.New("want LOCAL and REMOTE")
			}
			if o.uid < 0 || o.uid > 1<<31-1 || o.gid < 0 || o.gid > 1<<31-1 {
				return errors.New("--uid and --gid must be in 0..2147483647")
			}
			return nil
		},
		run: cmdCopyFile,
	},
	{name: "set-time", help: "SetGuestDateTime: set the guest clock to this machine's time", check: noArgs, run: cmdSetTime},
	{
		name: "run", args: "(--rootfs DIR | --image REF [--guest-root DIR]) [--tty] [--id ID] -- CMD [ARG...]",
		help: "run CMD in a new sandbox (Create/Start, forward stdio, Wait, Remove, DestroySandbox) and exit with its status;\n" +
			"--image makes the guest pull REF (image_guest_pull storage) instead of using a rootfs directory",
		flags: func(fs *flag.FlagSet, o *options) {
			rootfsFlag(fs, o)
			fs.StringVar(&o.image, "image", "", "image reference the guest pulls (instead of --rootfs)")
			fs.StringVar(&o.guestRoot, "guest-root", defaultGuestRoot(), "the agent's Kata root, where pulled rootfs are mounted ($COVA_GUEST_ROOT)")
			ttyFlag(fs, o)
			fs.StringVar(&o.id, "id", "", "container id (default: the random sandbox id)")
		},
		check: func(o *options) error {
			if (o.rootfs == "") == (o.image == "") {
				return errors.New("exactly one of --rootfs and --image is required")
			}
			return needCmd(o)
		},
		run: cmdRun,
	},
	evidenceCommand,
	teeCommand,
	pullCommand,
	resourceCommand,
	unsealCommand,
	secureMountCommand,
}

// defaultGuestRoot is where a Kata agent keeps container state in the guest.
func defaultGuestRoot() string {
	if v := os.Getenv("COVA_GUEST_ROOT"); v != "" {
		return v
	}
	return "/run/kata-containers"
}

func rootfsFlag(fs *flag.FlagSet, o *options) {
	fs.StringVar(&o.rootfs, "rootfs", "", "root file system directory in the guest (required)")
	fs.Var(&o.env, "env", "KEY=VALUE added to the container's environment (repeatable; a value may be a sealed secret)")
}

// envList is a repeatable KEY=VALUE flag.
type envList []string

func (e *envList) String() string { return strings.Join(*e, ",") }

func (e *envList) Set(v string) error {
	if k, _, ok := strings.Cut(v, "="); !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	*e = append(*e, v)
	return nil
}

// parseSignal reads "15", "TERM", "SIGTERM" or "sigterm".
func parseSignal(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		if n == 0 || n > 64 {
			return 0, fmt.Errorf("--signal %s: want 1..64", s)
		}
		return uint32(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	n := unix.SignalNum(name)
	if n == 0 {
		return 0, fmt.Errorf("--signal %s: unknown signal", s)
	}
	return uint32(n), nil
}

// randomID makes a 64-hex-digit id like the ones Kata's runtime gets.
func randomID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// callCtx bounds one unary call by the global timeout.
func (a *app) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, a.timeout)
}

// call runs one unary RPC under the global timeout and names it on error.
func call[T any](ctx context.Context, a *app, rpc string, f func(context.Context) (T, error)) (T, error) {
	cctx, cancel := a.callCtx(ctx)
	defer cancel()
	r, err := f(cctx)
	if err != nil {
		var zero T
		return zero, &rpcError{rpc: rpc, err: err}
	}
	return r, nil
}

// longCall runs an RPC without a timeout (long polls).
func longCall[T any](ctx context.Context, rpc string, f func(context.Context) (T, error)) (T, error) {
	r, err := f(ctx)
	if err != nil {
		var zero T
		return zero, &rpcError{rpc: rpc, err: err}
	}
	return r, nil
}

// printJSON prints a response as indented protobuf JSON.
func (a *app) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encoding response: %w", err)
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", b)
	return err
}

func cmdCheck(ctx context.Context, a *app, _ *options) error {
	r, err := call(ctx, a, "Check", func(c context.Context) (*grpc.HealthCheckResponse, error) {
		return a.health.Check(c, &grpc.CheckRequest{})
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(a.stdout, r.GetStatus().String())
	return err
}

func cmdVersion(ctx context.Context, a *app, _ *options) error {
	r, err := call(ctx, a, "Version", func(c context.Context) (*grpc.VersionCheckResponse, error) {
		return a.health.Version(c, &grpc.CheckRequest{})
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(a.stdout, "agent version: %s\nAPI version: %s\n", r.GetAgentVersion(), r.GetGrpcVersion())
	return err
}

func cmdGuestDetails(ctx context.Context, a *app, _ *options) error {
	r, err := call(ctx, a, "GetGuestDetails", func(c context.Context) (*grpc.GuestDetailsResponse, error) {
		return a.agent.GetGuestDetails(c, &grpc.GuestDetailsRequest{MemBlockSize: true, MemHotplugProbe: true})
	})
	if err != nil {
		return err
	}
	return a.printJSON(r)
}

func cmdCreateSandbox(ctx context.Context, a *app, o *options) error {
	id := o.id
	if id == "" {
		id = randomID()
	}
	if err := a.createSandbox(ctx, id, o.hostname); err != nil {
		return err
	}
	_, err := fmt.Fprintln(a.stdout, id)
	return err
}

func (a *app) createSandbox(ctx context.Context, id, hostname string) error {
	_, err := call(ctx, a, "CreateSandbox", func(c context.Context) (any, error) {
		return a.agent.CreateSandbox(c, &grpc.CreateSandboxRequest{SandboxId: id, Hostname: hostname})
	})
	return err
}

func cmdDestroySandbox(ctx context.Context, a *app, _ *options) error {
	return a.destroySandbox(ctx)
}

func (a *app) destroySandbox(ctx context.Context) error {
	_, err := call(ctx, a, "DestroySandbox", func(c context.Context) (any, error) {
		return a.agent.DestroySandbox(c, &grpc.DestroySandboxRequest{})
	})
	return err
}

func cmdCreateContainer(ctx context.Context, a *app, o *options) error {
	return a.createContainer(ctx, o.id, o)
}

// createContainer creates id from o's rootfs directory, or from o's image,
// which the guest pulls into a rootfs under o.guestRoot.
func (a *app) createContainer(ctx context.Context, id string, o *options) error {
	rootfs := o.rootfs
	var storages []*grpc.Storage
	if o.image != "" {
		rootfs = path.Join(o.guestRoot, id, "rootfs")
		storages = []*grpc.Storage{{
			Driver:        "image_guest_pull",
			DriverOptions: []string{`image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}`},
			Source:        o.image,
			Fstype:        "overlay",
			MountPoint:    rootfs,
		}}
	}
	spec, err := buildSpec(rootfs, o.args, o.tty)
	if err != nil {
		return err
	}
	spec.Process.Env = append(spec.Process.Env, o.env...)
	wire, err := toWireSpec(spec)
	if err != nil {
		return err
	}
	_, err = call(ctx, a, "CreateContainer", func(c context.Context) (any, error) {
		return a.agent.CreateContainer(c, &grpc.CreateContainerRequest{ContainerId: id, ExecId: id, OCI: wire, Storages: storages})
	})
	return err
}

func cmdStart(ctx context.Context, a *app, o *options) error { return a.startContainer(ctx, o.id) }

func (a *app) startContainer(ctx context.Context, id string) error {
	_, err := call(ctx, a, "StartContainer", func(c context.Context) (any, error) {
		return a.agent.StartContainer(c, &grpc.StartContainerRequest{ContainerId: id})
	})
	return err
}

func cmdExec(ctx context.Context, a *app, o *options) error {
	proc, err := buildProcess(o.args, o.tty)
	if err != nil {
		return err
	}
	req := &grpc.ExecProcessRequest{ContainerId: o.id, ExecId: o.execID, Process: proc}
	if o.detach {
		_, err := call(ctx, a, "ExecProcess", func(c context.Context) (any, error) { return a.agent.ExecProcess(c, req) })
		return err
	}
	return a.attach(ctx, o.id, o.execID, o.tty, func(c context.Context) error {
		_, err := call(c, a, "ExecProcess", func(c context.Context) (any, error) { return a.agent.ExecProcess(c, req) })
		return err
	})
}

func cmdWait(ctx context.Context, a *app, o *options) error {
	r, err := longCall(ctx, "WaitProcess", func(c context.Context) (*grpc.WaitProcessResponse, error) {
		return a.agent.WaitProcess(c, &grpc.WaitProcessRequest{ContainerId: o.id, ExecId: o.execID})
	})
	if err != nil {
		return err
	}
	return statusToExit(r.GetStatus())
}

// statusToExit maps a WaitProcess status to the exit of cova-ctl.
func statusToExit(st int32) error {
	if st == 0 {
		return nil
	}
	if st < 0 || st > 255 {
		return exitStatus(255)
	}
	return exitStatus(st)
}

func cmdSignal(ctx context.Context, a *app, o *options) error {
	return a.signalProcess(ctx, o.id, o.execID, o.signalNum)
}

func (a *app) signalProcess(ctx context.Context, id, execID string, sig uint32) error {
	_, err := call(ctx, a, "SignalProcess", func(c context.Context) (any, error) {
		return a.agent.SignalProcess(c, &grpc.SignalProcessRequest{ContainerId: id, ExecId: execID, Signal: sig})
	})
	return err
}

func cmdRemove(ctx context.Context, a *app, o *options) error {
	req := &grpc.RemoveContainerRequest{ContainerId: o.id, Timeout: uint32(o.removeTimeout)}
	f := func(c context.Context) (any, error) { return a.agent.RemoveContainer(c, req) }
	if o.removeTimeout == 0 {
		_, err := longCall(ctx, "RemoveContainer", f)
		return err
	}
	// The agent may take the whole removal timeout; allow --timeout on top.
	cctx, cancel := context.WithTimeout(ctx, time.Duration(o.removeTimeout)*time.Second+a.timeout)
	defer cancel()
	_, err := longCall(cctx, "RemoveContainer", f)
	return err
}

func cmdStats(ctx context.Context, a *app, o *options) error {
	r, err := call(ctx, a, "StatsContainer", func(c context.Context) (*grpc.StatsContainerResponse, error) {
		return a.agent.StatsContainer(c, &grpc.StatsContainerRequest{ContainerId: o.id})
	})
	if err != nil {
		return err
	}
	return a.printJSON(r)
}

func cmdPause(ctx context.Context, a *app, o *options) error {
	_, err := call(ctx, a, "PauseContainer", func(c context.Context) (any, error) {
		return a.agent.PauseContainer(c, &grpc.PauseContainerRequest{ContainerId: o.id})
	})
	return err
}

func cmdResume(ctx context.Context, a *app, o *options) error {
	_, err := call(ctx, a, "ResumeContainer", func(c context.Context) (any, error) {
		return a.agent.ResumeContainer(c, &grpc.ResumeContainerRequest{ContainerId: o.id})
	})
	return err
}

func cmdListInterfaces(ctx context.Context, a *app, _ *options) error {
	r, err := call(ctx, a, "ListInterfaces", func(c context.Context) (*grpc.Interfaces, error) {
		return a.agent.ListInterfaces(c, &grpc.ListInterfacesRequest{})
	})
	if err != nil {
		return err
	}
	return a.printJSON(r)
}

func cmdListRoutes(ctx context.Context, a *app, _ *options) error {
	r, err := call(ctx, a, "ListRoutes", func(c context.Context) (*grpc.Routes, error) {
		return a.agent.ListRoutes(c, &grpc.ListRoutesRequest{})
	})
	if err != nil {
		return err
	}
	return a.printJSON(r)
}

func cmdMetrics(ctx context.Context, a *app, _ *options) error {
	r, err := call(ctx, a, "GetMetrics", func(c context.Context) (*grpc.Metrics, error) {
		return a.agent.GetMetrics(c, &grpc.GetMetricsRequest{})
	})
	if err != nil {
		return err
	}
	_, err = io.WriteString(a.stdout, r.GetMetrics())
	return err
}

func cmdOOMEvent(ctx context.Context, a *app, _ *options) error {
	r, err := longCall(ctx, "GetOOMEvent", func(c context.Context) (*grpc.OOMEvent, error) {
		return a.agent.GetOOMEvent(c, &grpc.GetOOMEventRequest{})
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(a.stdout, r.GetContainerId())
	return err
}

func cmdSetTime(ctx context.Context, a *app, _ *options) error {
	now := time.Now()
	_, err := call(ctx, a, "SetGuestDateTime", func(c context.Context) (any, error) {
		return a.agent.SetGuestDateTime(c, &grpc.SetGuestDateTimeRequest{Sec: now.Unix(), Usec: int64(now.Nanosecond() / 1000)})
	})
	return err
}

// cmdCopyFile sends a regular file in chunks, or a directory or symlink in
// one request. FileMode carries the S_IFMT type bits, as the Kata shim sends
// lstat's st_mode.
func cmdCopyFile(ctx context.Context, a *app, o *options) error {
	local, remote := o.args[0], o.args[1]
	fi, err := os.Lstat(local)
	if err != nil {
		return fmt.Errorf("copy-file: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("copy-file: %s: no stat data", local)
	}
	newReq := func(size, off int64, data []byte) *grpc.CopyFileRequest {
		return &grpc.CopyFileRequest{
			Path:     remote,
			FileSize: size,
			FileMode: st.Mode,
			DirMode:  0o755,
			Uid:      int32(o.uid),
			Gid:      int32(o.gid),
			Offset:   off,
			Data:     data,
		}
	}
	send := func(req *grpc.CopyFileRequest) error {
		_, err := call(ctx, a, "CopyFile", func(c context.Context) (any, error) { return a.agent.CopyFile(c, req) })
		return err
	}
	switch fi.Mode().Type() {
	case fs.ModeDir:
		return send(newReq(0, 0, nil))
	case fs.ModeSymlink:
		target, err := os.Readlink(local)
		if err != nil {
			return fmt.Errorf("copy-file: %w", err)
		}
		return send(newReq(int64(len(target)), 0, []byte(target)))
	case 0:
	default:
		return fmt.Errorf("copy-file: %s is not a regular file, directory or symlink", local)
	}
	f, err := os.Open(local)
	if err != nil {
		return fmt.Errorf("copy-file: %w", err)
	}
	defer f.Close()
	size := fi.Size()
	buf := make([]byte, copyChunkSize)
	for off := int64(0); ; {
		n, err := io.ReadFull(f, buf)
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("copy-file: reading %s: %w", local, err)
		}
		if off+int64(n) > size {
			return fmt.Errorf("copy-file: %s grew while being copied", local)
		}
		if err := send(newReq(size, off, buf[:n])); err != nil {
			return err
		}
		off += int64(n)
		if n < len(buf) || off == size {
			if off != size {
				return fmt.Errorf("copy-file: %s shrank while being copied", local)
			}
			return nil
		}
	}
}
