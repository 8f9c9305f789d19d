package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/agent/policy"
)

// policyGate is the agent's Gate while the policy compiles in the
// background: compiling is the most expensive step of the boot under TCG
// (about half of exec → listening), and nothing needs it before the first
// gated request. Health is not gated, so the shim's first Check is answered
// at once; every gated request waits for the compile, and if it fails no
// gated request ever runs (Failed reports it and the agent stops, as kata
// aborts on a bad policy).
type policyGate struct {
	ready chan struct{}
	eng   *policy.Engine
	err   error
}

// policySource picks the policy text: initdata's policy.rego (measured),
// else the --policy file, else the configured policy_file when it exists,
// else the built-in CoCo default in a guest (allow-all in host mode). A
// --policy file that cannot be read is an error.
func policySource(configured, flagPath, fromInitdata string, vm bool) (text, source string, err error) {
	path := flagPath
	if path == "" {
		path = configured
	}
	data, rerr := os.ReadFile(path)
	switch {
	case fromInitdata != "":
		return fromInitdata, "initdata:policy.rego", nil
	case rerr == nil:
		return string(data), path, nil
	case errors.Is(rerr, fs.ErrNotExist) && flagPath == "":
		if vm {
			return policy.CocoDefaultPolicy(), "builtin:coco-default", nil
		}
		return policy.AllowAllPolicy(), "builtin:allow-all (host mode)", nil
	default:
		return "", "", fmt.Errorf("read policy %s: %w", path, rerr)
	}
}

// startPolicy compiles text in the background and returns its gate.
func startPolicy(log *slog.Logger, text, source string, start time.Time) *policyGate {
	g := &policyGate{ready: make(chan struct{})}
	go func() {
		defer close(g.ready)
		t0 := time.Now()
		eng, err := policy.New(text, policy.Options{Logger: log, Name: source})
		if err != nil {
			g.err = fmt.Errorf("load policy %s: %w", source, err)
			return
		}
		g.eng = eng
		sum := sha256.Sum256([]byte(text))
		log.Info("policy loaded", "source", source, "sha256", hex.EncodeToString(sum[:]),
			"compile_ms", float64(time.Since(t0).Microseconds())/1000,
			"since_start_ms", float64(time.Since(start).Microseconds())/1000)
	}()
	return g
}

// wait blocks until the policy is compiled (or ctx ends).
func (g *policyGate) wait(ctx context.Context) (*policy.Engine, error) {
	select {
	case <-g.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the policy to load: %w", ctx.Err())
	}
	if g.err != nil {
		return nil, fmt.Errorf("no policy: %w: %w", g.err, errdefs.ErrUnavailable)
	}
	return g.eng, nil
}

// Failed delivers the compile error, if any, once the compile is over.
func (g *policyGate) Failed() <-chan error {
	ch := make(chan error, 1)
	go func() {
		<-g.ready
		if g.err != nil {
			ch <- g.err
		}
	}()
	return ch
}

// Allow implements agent.Gate.
func (g *policyGate) Allow(ctx context.Context, method string, req any) error {
	e, err := g.wait(ctx)
	if err != nil {
		return err
	}
	return e.Allow(ctx, method, req)
}

// SetPolicy implements agent.PolicySetter.
func (g *policyGate) SetPolicy(text string) error {
	e, err := g.wait(context.Background())
	if err != nil {
		return err
	}
	return e.SetPolicy(text)
}

// CheckPulledImage is the guest-pull driver's image check.
func (g *policyGate) CheckPulledImage(ctx context.Context, containerID, image, digest string) error {
	e, err := g.wait(ctx)
	if err != nil {
		return err
	}
	return e.CheckPulledImage(ctx, containerID, image, digest)
}
