package faults

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/cova-project/cova/protocols/grpc"
)

// wantCode checks an rpc error's gRPC code.
func wantCode(err error, code codes.Code) error {
	if s, _ := status.FromError(err); err == nil || s.Code() != code {
		return fmt.Errorf("want %v, got %v", code, err)
	}
	return nil
}

func agentFaults() []fault {
	return []fault{
		{
			area: "agent", name: "container ignores SIGTERM: RemoveContainer with timeout", want: serves, bound: 30 * time.Second, root: true,
			run: func(ctx context.Context, t *testing.T) error {
				e := StartAgent(t, nil)
				e.Sandbox(ctx, t, "sb")
				e.Run(ctx, t, "stubborn", e.Spec(t, "sh", "-c", `trap "" TERM; echo ready; while :; do sleep 1; done`))
				if _, err := ReadUntil(ctx, e.C, "stubborn", "", "ready"); err != nil {
					return err
				}
				if _, err := e.C.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: "stubborn", Signal: 15}); err != nil {
					return fmt.Errorf("SignalProcess TERM: %w", err)
				}
				// The host's wait is bounded by its own deadline.
				wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				_, err := e.C.WaitProcess(wctx, &pb.WaitProcessRequest{ContainerId: "stubborn"})
				cancel()
				if !errors.Is(err, context.DeadlineExceeded) && wantCode(err, codes.DeadlineExceeded) != nil {
					return fmt.Errorf("WaitProcess of a process that ignored TERM: want the caller's deadline, got %v", err)
				}
				start := time.Now()
				if _, err := e.C.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: "stubborn", Timeout: 5}); err != nil {
					return fmt.Errorf("RemoveContainer: %w", err)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("RemoveContainer took %v, beyond its 5 s timeout", d)
				}
				_, err = e.C.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "stubborn"})
				return wantCode(err, codes.NotFound)
			},
		},
		{
			area: "agent", name: "client disconnects during WaitProcess", want: serves, bound: 30 * time.Second, root: true,
			run: func(ctx context.Context, t *testing.T) error {
				e := StartAgent(t, nil)
				e.Sandbox(ctx, t, "sb")
				e.Run(ctx, t, "c", e.Spec(t, "sleep", "1000"))
				gone, c1, _ := e.Dial(t)
				waited := make(chan error, 1)
				go func() {
					_, err := c1.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "c"})
					waited <- err
				}()
				// Let the wait reach the agent, then drop the connection.
				if _, err := c1.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "c"}); err != nil {
					return err
				}
				_ = gone.Close()
				select {
				case err := <-waited:
					if err == nil {
						return errors.New("WaitProcess on a closed client returned success")
					}
				case <-ctx.Done():
					return fmt.Errorf("WaitProcess on a closed client did not return: %w", ctx.Err())
				}
				return killAndWait(ctx, t, e, "c")
			},
		},
		{
			area: "agent", name: "client disconnects during ReadStdout: no output lost", want: serves, bound: 30 * time.Second, root: true,
			run: func(ctx context.Context, t *testing.T) error {
				e := StartAgent(t, nil)
				e.Sandbox(ctx, t, "sb")
				spec := e.Spec(t, "sh", "-c", `read x; echo "got-$x"; sleep 1000`)
				e.Run(ctx, t, "c", spec)
				gone, c1, _ := e.Dial(t)
				read := make(chan error, 1)
				go func() {
					_, err := c1.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: "c", Len: 4096})
					read <- err
				}()
				if _, err := c1.StatsContainer(ctx, &pb.StatsContainerRequest{ContainerId: "c"}); err != nil {
					return err
				}
				_ = gone.Close()
				if err := <-read; err == nil {
					return errors.New("ReadStdout on a closed client returned data")
				}
				// The output produced after the first reader left reaches the
				// next one. "Left" means the agent saw the disconnect (ttrpc
				// then cancels the pending read, which gives its data back);
				// the protocol has no acknowledgement, so output that races
				// the disconnect itself can still be lost. Give the agent a
				// moment to see it.
				time.Sleep(200 * time.Millisecond)
				if _, err := e.C.WriteStdin(ctx, &pb.WriteStreamRequest{ContainerId: "c", Data: []byte("abc\n")}); err != nil {
					return fmt.Errorf("WriteStdin: %w", err)
				}
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				got, err := ReadUntil(rctx, e.C, "c", "", "got-abc")
				if err != nil {
					return fmt.Errorf("output after a reader left (read %q): %w", got, err)
				}
				return killAndWait(ctx, t, e, "c")
			},
		},
	}
}

// killAndWait shows the agent still serves the container: SIGKILL, then
// WaitProcess reports 137, then RemoveContainer.
func killAndWait(ctx context.Context, t *testing.T, e *Agent, cid string) error {
	_, c2, h2 := e.Dial(t)
	if r, err := h2.Check(ctx, &pb.CheckRequest{}); err != nil || r.Status != pb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health after the disconnect: %v, %v", r, err)
	}
	if _, err := c2.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: cid, Signal: 9}); err != nil {
		return fmt.Errorf("SignalProcess KILL: %w", err)
	}
	w, err := c2.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: cid})
	if err != nil || w.Status != 137 {
		return fmt.Errorf("WaitProcess after KILL: %v, %w", w, err)
	}
	_, err = c2.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: cid, Timeout: 5})
	return err
}
