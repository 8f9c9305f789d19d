package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/opencontainers/runtime-spec/specs-go"
)

// MeasurementDomain is the AAEL domain of the agent's own events
// (docs/measurements.md describes the vocabulary).
const MeasurementDomain = "github.com/cova-project/cova"

// envDigest is an environment variable as measured: its name and the
// sha256 of its value as the host sent it, never the value. A sealed value
// is digested sealed: the digest of an unsealed secret would let anyone who
// sees the event log test guesses of a low-entropy secret.
type envDigest struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// processEvent is the content of a StartContainer or ExecProcess event.
type processEvent struct {
	ContainerID string      `json:"container_id"`
	ExecID      string      `json:"exec_id,omitempty"`
	Args        []string    `json:"args"`
	Env         []envDigest `json:"env"`
	Cwd         string      `json:"cwd"`
	UID         uint32      `json:"uid"`
	GID         uint32      `json:"gid"`
	Terminal    bool        `json:"terminal"`
	Root        string      `json:"root,omitempty"`
}

func envDigests(env []string) []envDigest {
	out := make([]envDigest, 0, len(env))
	for _, e := range env {
		name, value, _ := strings.Cut(e, "=")
		sum := sha256.Sum256([]byte(value))
		out = append(out, envDigest{Name: name, SHA256: hex.EncodeToString(sum[:])})
	}
	return out
}

// measureProcess records what is about to run. The content is compact JSON
// (one line, as the event log requires).
// env is the process's env as received, digested (envDigests).
func (a *Agent) measureProcess(ctx context.Context, op, cid, eid, root string, p *specs.Process, env []envDigest) error {
	if a.opts.Measure == nil || p == nil {
		return nil
	}
	ev := processEvent{
		ContainerID: cid, ExecID: eid, Args: p.Args, Env: env, Cwd: p.Cwd,
		UID: p.User.UID, GID: p.User.GID, Terminal: p.Terminal, Root: root,
	}
	if ev.Args == nil {
		ev.Args = []string{}
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode %s measurement: %w", op, err)
	}
	if err := a.opts.Measure(ctx, op, string(b)); err != nil {
		return fmt.Errorf("record %s measurement (nothing was started): %w", op, err)
	}
	return nil
}
