package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/containerd/ttrpc"

	"github.com/cova-project/cova/agent/transport"
	"github.com/cova-project/cova/protocols/aa"
)

// Attestation Agent commands: they talk to the AA socket in the guest
// (attestation_agent.AttestationAgentService), not to the agent API.

const (
	defaultAAAddr = "unix:///run/confidential-containers/attestation-agent/attestation-agent.sock"
	// maxRuntimeData bounds --runtime-data @FILE (ttrpc messages are at
	// most 4 MiB).
	maxRuntimeData = 1 << 20
)

// aaFlags are the flags of evidence and tee.
type aaFlags struct {
	addr        string
	runtimeData string // HEX or @FILE, as given
	rdHex       []byte // decoded HEX, set by check
	additional  bool
}

// aaFlagsByOpts holds each invocation's aaFlags: options (commands.go) has
// no field for them, so they are found by the options pointer.
var aaFlagsByOpts sync.Map // *options -> *aaFlags

func aaFlagsOf(o *options) *aaFlags {
	v, _ := aaFlagsByOpts.LoadOrStore(o, &aaFlags{})
	return v.(*aaFlags)
}

// dialsAA reports whether c talks to the AA socket itself, so the agent
// connection must not be made for it.
func dialsAA(c *command) bool {
	return c != nil && (c.name == evidenceCommand.name || c.name == teeCommand.name)
}

func aaAddrFlag(fs *flag.FlagSet, f *aaFlags) {
	fs.StringVar(&f.addr, "aa", defaultAAAddr, "Attestation Agent address (unix:///PATH)")
}

var evidenceCommand = command{
	name: "evidence", args: "[--runtime-data HEX|@FILE] [--additional] [--aa ADDR]",
	help: "AA GetEvidence: print the primary TEE's evidence JSON for the runtime data (--additional: GetAdditionalEvidence)",
	flags: func(fs *flag.FlagSet, o *options) {
		f := aaFlagsOf(o)
		fs.StringVar(&f.runtimeData, "runtime-data", "", "report data: hex digits, or @FILE for a file's raw bytes (default empty)")
		fs.BoolVar(&f.additional, "additional", false, "print the additional (device) attesters' evidence instead")
		aaAddrFlag(fs, f)
	},
	check: func(o *options) error {
		if err := noArgs(o); err != nil {
			return err
		}
		f := aaFlagsOf(o)
		if f.runtimeData == "" || strings.HasPrefix(f.runtimeData, "@") {
			if f.runtimeData == "@" {
				return errors.New("--runtime-data @FILE: missing file name")
			}
			return nil
		}
		b, err := hex.DecodeString(strings.TrimPrefix(f.runtimeData, "0x"))
		if err != nil {
			return fmt.Errorf("--runtime-data: not hex (use @FILE for a file): %v", err)
		}
		f.rdHex = b
		return nil
	},
	run: cmdEvidence,
}

var teeCommand = command{
	name: "tee", args: "[--aa ADDR]",
	help:  "AA GetTeeType and GetAdditionalTees: print the primary TEE, then any additional ones",
	flags: func(fs *flag.FlagSet, o *options) { aaAddrFlag(fs, aaFlagsOf(o)) },
	check: noArgs,
	run:   cmdTee,
}

// aaClient dials the AA and returns a client and its closer.
func (a *app) aaClient(ctx context.Context, addr string) (aa.AttestationAgentServiceService, func(), error) {
	dctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	conn, err := transport.Dial(dctx, addr)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to the Attestation Agent at %s: %w", addr, err)
	}
	c := ttrpc.NewClient(conn)
	return aa.NewAttestationAgentServiceClient(c), func() { c.Close() }, nil
}

// runtimeData returns the decoded --runtime-data.
func (f *aaFlags) runtimeDataBytes() ([]byte, error) {
	name, ok := strings.CutPrefix(f.runtimeData, "@")
	if !ok {
		return f.rdHex, nil
	}
	fh, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("--runtime-data: %w", err)
	}
	defer fh.Close()
	b, err := io.ReadAll(io.LimitReader(fh, maxRuntimeData+1))
	if err != nil {
		return nil, fmt.Errorf("--runtime-data: %w", err)
	}
	if len(b) > maxRuntimeData {
		return nil, fmt.Errorf("--runtime-data: %s is larger than %d bytes", name, maxRuntimeData)
	}
	return b, nil
}

func cmdEvidence(ctx context.Context, a *app, o *options) error {
	f := aaFlagsOf(o)
	rd, err := f.runtimeDataBytes()
	if err != nil {
		return err
	}
	c, closeFn, err := a.aaClient(ctx, f.addr)
	if err != nil {
		return err
	}
	defer closeFn()
	var ev []byte
	if f.additional {
		r, err := call(ctx, a, "GetAdditionalEvidence", func(cc context.Context) (*aa.GetEvidenceResponse, error) {
			return c.GetAdditionalEvidence(cc, &aa.GetAdditionalEvidenceRequest{RuntimeData: rd})
		})
		if err != nil {
			return err
		}
		ev = r.GetEvidence()
	} else {
		r, err := call(ctx, a, "GetEvidence", func(cc context.Context) (*aa.GetEvidenceResponse, error) {
			return c.GetEvidence(cc, &aa.GetEvidenceRequest{RuntimeData: rd})
		})
		if err != nil {
			return err
		}
		ev = r.GetEvidence()
	}
	if len(ev) == 0 {
		return nil // no additional attesters
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", ev)
	return err
}

func cmdTee(ctx context.Context, a *app, o *options) error {
	c, closeFn, err := a.aaClient(ctx, aaFlagsOf(o).addr)
	if err != nil {
		return err
	}
	defer closeFn()
	t, err := call(ctx, a, "GetTeeType", func(cc context.Context) (*aa.GetTeeTypeResponse, error) {
		return c.GetTeeType(cc, &aa.GetTeeTypeRequest{})
	})
	if err != nil {
		return err
	}
	add, err := call(ctx, a, "GetAdditionalTees", func(cc context.Context) (*aa.GetAdditionalTeesResponse, error) {
		return c.GetAdditionalTees(cc, &aa.GetAdditionalTeesRequest{})
	})
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintln(a.stdout, t.GetTee()); err != nil {
		return err
	}
	for _, tee := range add.GetAdditionalTees() {
		if _, err := fmt.Fprintln(a.stdout, tee); err != nil {
			return err
		}
	}
	return nil
}
