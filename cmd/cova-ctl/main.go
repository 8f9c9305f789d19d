// Command cova-ctl is a developer client for the Cova agent: it speaks the
// Kata agent ttrpc API (grpc.AgentService and grpc.Health) over any address
// the transport package can dial, one RPC per subcommand, plus "run", which
// drives a whole container life cycle the way the Kata shim does.
//
// It is a debugging tool in the spirit of Kata's agent-ctl, not a runtime:
// it keeps no state between invocations.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	gstatus "google.golang.org/grpc/status"

	"github.com/cova-project/cova/agent/transport"
	"github.com/cova-project/cova/protocols/grpc"
)

// Defaults of the global flags.
const (
	envAddr        = "COVA_AGENT_ADDR"
	defaultAddr    = "unix:///run/cova/agent.sock"
	defaultTimeout = 60 * time.Second
)

// Exit codes of cova-ctl itself; run and wait pass the container's through.
const (
	exitOK    = 0
	exitError = 1
	exitUsage = 2
)

func main() {
	// The ttrpc client logs (through containerd/log) when an answer arrives
	// for a call this CLI already abandoned, e.g. a stream read cancelled
	// after the process exited. That is expected here and must not mix into
	// the container's stderr.
	log.L.Logger.SetOutput(io.Discard)
	a := &app{
		stdin:   os.Stdin,
		stdout:  os.Stdout,
		stderr:  os.Stderr,
		getenv:  os.Getenv,
		stdinFd: -1,
		notify:  signal.Notify,
		stopSig: signal.Stop,
	}
	if term.IsTerminal(int(os.Stdin.Fd())) {
		a.stdinFd = int(os.Stdin.Fd())
	}
	os.Exit(a.main(context.Background(), os.Args[1:]))
}

// app is one invocation of cova-ctl with its environment, injectable for
// tests.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
	// stdinFd is the file descriptor of stdin when it is a terminal, else -1.
	stdinFd int
	// notify and stopSig are signal.Notify and signal.Stop.
	notify  func(chan<- os.Signal, ...os.Signal)
	stopSig func(chan<- os.Signal)
	// killGrace is how long run waits after SIGTERM before SIGKILL; 0 means
	// defaultKillGrace.
	killGrace time.Duration

	timeout time.Duration
	agent   grpc.AgentServiceService
	health  grpc.HealthService
}

// invocation is a parsed command line.
type invocation struct {
	addr    string
	timeout time.Duration
	cmd     *command
	opts    *options
}

// usageError is a command line mistake: exit code 2 and a usage hint.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// exitStatus carries a container's exit status to the process exit code.
type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// rpcError is a failed RPC, printed as "<rpc>: <code>: <message>".
type rpcError struct {
	rpc string
	err error
}

func (e *rpcError) Error() string {
	st, ok := gstatus.FromError(e.err)
	switch {
	case ok:
	case errors.Is(e.err, context.DeadlineExceeded), errors.Is(e.err, context.Canceled):
		st = gstatus.FromContextError(e.err)
	case errors.Is(e.err, ttrpc.ErrClosed):
		st = gstatus.New(codes.Unavailable, e.err.Error())
	default:
		st = gstatus.New(codes.Unknown, e.err.Error())
	}
	return fmt.Sprintf("%s: %s: %s", e.rpc, st.Code(), st.Message())
}

func (e *rpcError) Unwrap() error { return e.err }

// main runs one invocation and returns the process exit code.
func (a *app) main(ctx context.Context, args []string) int {
	inv, err := parseCommandLine(args, a.getenv)
	if errors.Is(err, flag.ErrHelp) {
		if inv != nil && inv.cmd != nil {
			fmt.Fprint(a.stdout, inv.cmd.usage())
		} else {
			fmt.Fprint(a.stdout, usageText())
		}
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(a.stderr, "cova-ctl: %v\n", err)
		if inv != nil && inv.cmd != nil {
			fmt.Fprintf(a.stderr, "usage: %s", inv.cmd.usage())
		} else {
			fmt.Fprintln(a.stderr, "Run 'cova-ctl help' for usage.")
		}
		return exitUsage
	}
	a.timeout = inv.timeout
	err = a.connectAndRun(ctx, inv)
	var es exitStatus
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &es):
		return int(es)
	default:
		fmt.Fprintf(a.stderr, "cova-ctl: %v\n", err)
		return exitError
	}
}

func (a *app) connectAndRun(ctx context.Context, inv *invocation) error {
	if !dialsAA(inv.cmd) && !dialsCDH(inv.cmd) && (a.agent == nil || a.health == nil) {
		dctx, cancel := context.WithTimeout(ctx, inv.timeout)
		conn, err := transport.Dial(dctx, inv.addr)
		cancel()
		if err != nil {
			return fmt.Errorf("connecting to agent: %w", err)
		}
		client := ttrpc.NewClient(conn)
		defer client.Close()
		a.agent = grpc.NewAgentServiceClient(client)
		a.health = grpc.NewHealthClient(client)
	}
	return inv.cmd.run(ctx, a, inv.opts)
}

// parseCommandLine parses global flags, the command name and its flags. On
// error the returned invocation, if not nil, names the command.
func parseCommandLine(args []string, getenv func(string) string) (*invocation, error) {
	inv := &invocation{addr: defaultAddr, timeout: defaultTimeout}
	if v := getenv(envAddr); v != "" {
		inv.addr = v
	}
	fs := flag.NewFlagSet("cova-ctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&inv.addr, "addr", inv.addr, "agent address")
	fs.DurationVar(&inv.timeout, "timeout", inv.timeout, "dial and per-call timeout")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, usagef("%v", err)
	}
	if inv.timeout <= 0 {
		return nil, usagef("--timeout must be positive, got %v", inv.timeout)
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return nil, usagef("missing command")
	}
	name := rest[0]
	if name == "help" {
		if len(rest) > 1 {
			if c := lookupCommand(rest[1]); c != nil {
				inv.cmd = c
			}
		}
		return inv, flag.ErrHelp
	}
	c := lookupCommand(name)
	if c == nil {
		return nil, usagef("unknown command %q", name)
	}
	inv.cmd = c
	inv.opts = &options{}
	cfs := flag.NewFlagSet("cova-ctl "+name, flag.ContinueOnError)
	cfs.SetOutput(io.Discard)
	if c.flags != nil {
		c.flags(cfs, inv.opts)
	}
	if err := cfs.Parse(rest[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return inv, err
		}
		return inv, usagef("%s: %v", name, err)
	}
	inv.opts.args = cfs.Args()
	if c.check != nil {
		if err := c.check(inv.opts); err != nil {
			return inv, usagef("%s: %v", name, err)
		}
	}
	return inv, nil
}

func lookupCommand(name string) *command {
	for i := range commands {
		if commands[i].name == name {
			return &commands[i]
		}
	}
	return nil
}

// usage renders the help of one command.
func (c *command) usage() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cova-ctl %s\n    %s\n", c.synopsis(), c.help)
	if c.flags != nil {
		fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
		c.flags(fs, &options{})
		fs.SetOutput(&b)
		fs.PrintDefaults()
	}
	return b.String()
}

func (c *command) synopsis() string {
	if c.args == "" {
		return c.name
	}
	return c.name + " " + c.args
}

// usageText is the top-level help.
func usageText() string {
	var b strings.Builder
	b.WriteString(`Usage: cova-ctl [--addr ADDR] [--timeout DURATION] COMMAND [FLAGS] [ARGS]

cova-ctl talks to a Cova (or Kata) agent over its ttrpc API.

Global flags:
  --addr ADDR          agent address (default $` + envAddr + ` or ` + defaultAddr + `):
                         unix:///PATH  vsock://CID:PORT  hvsock://UDS_PATH:PORT
                         tcp://HOST:PORT  mock:PATH  remote:PATH
  --timeout DURATION   dial and per-call timeout (default ` + defaultTimeout.String() + `);
                       WaitProcess, GetOOMEvent and the stdio calls have none

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(&b, "  %s\n        %s\n", c.synopsis(), c.help)
	}
	b.WriteString(`
Run 'cova-ctl help COMMAND' for the flags of one command.
RPC errors print as "cova-ctl: <rpc>: <code>: <message>" and exit 1; run, exec and
wait exit with the process's exit status; command line errors exit 2.
`)
	return b.String()
}

// Signals run forwards to the container.
var interruptSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}
