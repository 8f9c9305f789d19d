package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"github.com/cova-project/cova/protocols/grpc"
)

const (
	// readChunk is the Len of each ReadStdout/ReadStderr request.
	readChunk = 32 << 10
	// defaultKillGrace is the time between the SIGTERM of the first
	// interrupt and the SIGKILL.
	defaultKillGrace = 10 * time.Second
	// drainIdle ends output forwarding after the process has exited and no
	// output arrived for this long (a daemonised child may hold the pipes).
	drainIdle = 2 * time.Second
)

// cmdRun runs one container in a fresh sandbox and exits with its status.
func cmdRun(ctx context.Context, a *app, o *options) error {
	sid := randomID()
	cid := o.id
	if cid == "" {
		cid = sid // the first container of a Kata sandbox has the sandbox's id
	}
	if err := a.createSandbox(ctx, sid, containerHostname); err != nil {
		return err
	}
	created := false
	runErr := a.attach(ctx, cid, cid, o.tty, func(c context.Context) error {
		if err := a.createContainer(c, cid, o); err != nil {
			return err
		}
		created = true
		return a.startContainer(c, cid)
	})

	// Clean up even after an interrupt or a failure.
	cctx := context.WithoutCancel(ctx)
	var cleanupErrs []error
	if created {
		_, err := call(cctx, a, "RemoveContainer", func(c context.Context) (any, error) {
			return a.agent.RemoveContainer(c, &grpc.RemoveContainerRequest{ContainerId: cid})
		})
		if err != nil {
			cleanupErrs = append(cleanupErrs, err)
		}
	}
	if err := a.destroySandbox(cctx); err != nil {
		cleanupErrs = append(cleanupErrs, err)
	}
	var es exitStatus
	if runErr == nil || errors.As(runErr, &es) {
		if len(cleanupErrs) == 0 {
			return runErr
		}
		for _, err := range cleanupErrs {
			fmt.Fprintf(a.stderr, "cova-ctl: %v\n", err)
		}
		if runErr != nil {
			return runErr // keep the container's status
		}
		return exitStatus(exitError)
	}
	for _, err := range cleanupErrs {
		fmt.Fprintf(a.stderr, "cova-ctl: %v\n", err)
	}
	return runErr
}

// attach starts a process with start, forwards its stdio, relays
// interrupts (SIGTERM, then SIGKILL) and returns its exit status as an
// exitStatus (nil for 0).
func (a *app) attach(ctx context.Context, cid, eid string, tty bool, start func(context.Context) error) error {
	sigc := make(chan os.Signal, 4)
	a.notify(sigc, interruptSignals...)
	defer a.stopSig(sigc)

	if err := start(ctx); err != nil {
		return err
	}

	ioCtx, ioCancel := context.WithCancel(ctx)
	defer ioCancel()
	var lastOutput atomic.Int64
	lastOutput.Store(time.Now().UnixNano())

	// Local terminal: raw mode while a tty process runs, and window sizes.
	var winch chan os.Signal
	if tty && a.stdinFd >= 0 {
		if old, err := term.MakeRaw(a.stdinFd); err == nil {
			defer func() { _ = term.Restore(a.stdinFd, old) }()
		}
		winch = make(chan os.Signal, 1)
		a.notify(winch, syscall.SIGWINCH)
		defer a.stopSig(winch)
		a.resizeTTY(ioCtx, cid, eid)
	}

	var pumps sync.WaitGroup
	pump := func(rpc string, read func(context.Context, *grpc.ReadStreamRequest) (*grpc.ReadStreamResponse, error), w io.Writer) {
		defer pumps.Done()
		for {
			r, err := read(ioCtx, &grpc.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: readChunk})
			if err != nil || len(r.GetData()) == 0 {
				return // an error or an empty answer is the end of the stream
			}
			lastOutput.Store(time.Now().UnixNano())
			if _, err := w.Write(r.GetData()); err != nil {
				fmt.Fprintf(a.stderr, "cova-ctl: %s: writing output: %v\n", rpc, err)
				return
			}
		}
	}
	pumps.Add(1)
	go pump("ReadStdout", a.agent.ReadStdout, a.stdout)
	if !tty { // a terminal merges stderr into stdout
		pumps.Add(1)
		go pump("ReadStderr", a.agent.ReadStderr, a.stderr)
	}

	if a.stdinFd < 0 || tty {
		go a.forwardStdin(ioCtx, cid, eid)
	} else {
		// An interactive terminal without --tty: give the process EOF.
		a.closeStdin(ioCtx, cid, eid)
	}

	type waitResult struct {
		status int32
		err    error
	}
	waitc := make(chan waitResult, 1)
	go func() {
		r, err := longCall(ctx, "WaitProcess", func(c context.Context) (*grpc.WaitProcessResponse, error) {
			return a.agent.WaitProcess(c, &grpc.WaitProcessRequest{ContainerId: cid, ExecId: eid})
		})
		waitc <- waitResult{r.GetStatus(), err}
	}()

	grace := a.killGrace
	if grace <= 0 {
		grace = defaultKillGrace
	}
	var (
		res       waitResult
		termSent  bool
		killTimer *time.Timer
		killc     <-chan time.Time
	)
	defer func() {
		if killTimer != nil {
			killTimer.Stop()
		}
	}()
	kill := func(sig syscall.Signal) {
		if err := a.signalProcess(ctx, cid, eid, uint32(sig)); err != nil {
			fmt.Fprintf(a.stderr, "cova-ctl: %v\n", err)
		}
	}
wait:
	for {
		select {
		case res = <-waitc:
			break wait
		case <-sigc:
			if !termSent {
				termSent = true
				kill(unix.SIGTERM)
				killTimer = time.NewTimer(grace)
				killc = killTimer.C
			} else {
				kill(unix.SIGKILL)
			}
		case <-killc:
			kill(unix.SIGKILL)
		case <-winch:
			a.resizeTTY(ioCtx, cid, eid)
		}
	}

	// Let the output drain: until both streams end, or stay idle.
	lastOutput.Store(time.Now().UnixNano())
	drained := make(chan struct{})
	go func() { pumps.Wait(); close(drained) }()
	tick := time.NewTicker(drainIdle / 8)
	defer tick.Stop()
drain:
	for {
		select {
		case <-drained:
			break drain
		case <-tick.C:
			if time.Since(time.Unix(0, lastOutput.Load())) > drainIdle {
				break drain
			}
		}
	}
	ioCancel()

	if res.err != nil {
		return res.err
	}
	return statusToExit(res.status)
}

// forwardStdin copies stdin to the process with WriteStdin, then closes the
// process's stdin.
func (a *app) forwardStdin(ctx context.Context, cid, eid string) {
	buf := make([]byte, readChunk)
	for {
		n, rerr := a.stdin.Read(buf)
		for data := buf[:n]; len(data) > 0; {
			r, err := a.agent.WriteStdin(ctx, &grpc.WriteStreamRequest{ContainerId: cid, ExecId: eid, Data: data})
			if err != nil {
				if ctx.Err() == nil {
					fmt.Fprintf(a.stderr, "cova-ctl: %v\n", &rpcError{rpc: "WriteStdin", err: err})
				}
				return
			}
			w := int(r.GetLen())
			if w <= 0 || w > len(data) {
				fmt.Fprintf(a.stderr, "cova-ctl: WriteStdin: agent accepted %d of %d bytes\n", w, len(data))
				return
			}
			data = data[w:]
		}
		if rerr != nil {
			a.closeStdin(ctx, cid, eid)
			return
		}
	}
}

func (a *app) closeStdin(ctx context.Context, cid, eid string) {
	_, err := call(ctx, a, "CloseStdin", func(c context.Context) (any, error) {
		return a.agent.CloseStdin(c, &grpc.CloseStdinRequest{ContainerId: cid, ExecId: eid})
	})
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(a.stderr, "cova-ctl: %v\n", err)
	}
}

// resizeTTY sends the local terminal's size.
func (a *app) resizeTTY(ctx context.Context, cid, eid string) {
	w, h, err := term.GetSize(a.stdinFd)
	if err != nil || w <= 0 || h <= 0 {
		return
	}
	_, err = call(ctx, a, "TtyWinResize", func(c context.Context) (any, error) {
		return a.agent.TtyWinResize(c, &grpc.TtyWinResizeRequest{ContainerId: cid, ExecId: eid, Row: uint32(h), Column: uint32(w)})
	})
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(a.stderr, "cova-ctl: %v\n", err)
	}
}
