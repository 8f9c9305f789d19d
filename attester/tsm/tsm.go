// Package tsm obtains attestation reports through the Linux configfs-tsm
// report interface (/sys/kernel/config/tsm/report) the way guest-components
// does: create a fresh entry, check its provider, write the in-blob, read the
// out-blob (and aux-blob), refuse a report whose generation shows another
// writer raced us, and remove the entry. The configfs tree is reached only
// through a configfsi.Client, so tests run on go-configfs-tsm's faketsm.
package tsm

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"
)

// Provider names as the kernel writes them to the provider attribute
// (without the trailing newline).
const (
	ProviderTDX = "tdx_guest"
	ProviderSNP = "sev_guest"
	ProviderCCA = "arm_cca_guest"
)

// Request is one report request.
type Request struct {
	// Provider is the provider the entry must report; anything else is an
	// error wrapping errdefs.ErrFailedPrecondition.
	Provider string
	// InBlob is written to the inblob attribute; it must not be empty.
	InBlob []byte
	// PrivLevel, when set, is written to the privlevel attribute (SNP VMPL).
	PrivLevel *uint
	// AuxBlob requests the auxblob attribute (SNP certificate table).
	AuxBlob bool
}

// Response is a report.
type Response struct {
	OutBlob []byte
	AuxBlob []byte
}

// DefaultClient returns the real configfs-tsm client, or an error wrapping
// errdefs.ErrNotFound when the kernel has no configfs-tsm report subsystem.
func DefaultClient() (configfsi.Client, error) {
	c, err := linuxtsm.MakeClient()
	if err != nil {
		return nil, fmt.Errorf("configfs-tsm report subsystem: %v: %w", err, errdefs.ErrNotFound)
	}
	return c, nil
}

// Get creates a report entry, checks its provider, and returns its blobs.
func Get(ctx context.Context, c configfsi.Client, req Request) (resp *Response, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(req.InBlob) == 0 {
		return nil, fmt.Errorf("tsm report: inblob: empty: %w", errdefs.ErrInvalidArgument)
	}
	r, err := report.CreateOpenReport(c)
	if err != nil {
		return nil, fmt.Errorf("tsm report: create entry: %w", err)
	}
	defer func() {
		if derr := r.Destroy(); derr != nil && err == nil {
			err = fmt.Errorf("tsm report: remove entry: %w", derr)
		}
	}()
	got, err := r.ReadOption("provider")
	if err != nil {
		return nil, fmt.Errorf("tsm report: read provider: %w", err)
	}
	if p := strings.TrimSuffix(string(got), "\n"); p != req.Provider {
		return nil, fmt.Errorf("tsm report: provider is %q, want %q: %w", p, req.Provider, errdefs.ErrFailedPrecondition)
	}
	r.InBlob = req.InBlob
	r.GetAuxBlob = req.AuxBlob
	if req.PrivLevel != nil {
		r.Privilege = &report.Privilege{Level: *req.PrivLevel}
	}
	out, err := r.Get()
	if err != nil {
		if g := report.GetGenerationErr(err); g != nil {
			return nil, fmt.Errorf("tsm report: another writer used the entry (generation %d, want %d): %w", g.Got, g.Want, errdefs.ErrAborted)
		}
		return nil, fmt.Errorf("tsm report: %w", err)
	}
	if len(out.OutBlob) == 0 {
		return nil, fmt.Errorf("tsm report: empty outblob: %w", errdefs.ErrUnavailable)
	}
	return &Response{OutBlob: out.OutBlob, AuxBlob: out.AuxBlob}, nil
}

// ProviderIs reports whether a fresh report entry names provider. Any error
// (no configfs-tsm, another provider) is a plain false.
func ProviderIs(c configfsi.Client, provider string) bool {
	if c == nil {
		return false
	}
	r, err := report.CreateOpenReport(c)
	if err != nil {
		return false
	}
	got, err := r.ReadOption("provider")
	derr := r.Destroy()
	return errors.Join(err, derr) == nil && strings.TrimSuffix(string(got), "\n") == provider
}
