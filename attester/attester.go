// Package attester defines how Cova obtains hardware evidence from the TEE it
// runs in: the Attester interface and its optional capabilities (runtime
// measurement registers, initdata binding), the TEE names guest-components and
// trustee use on the wire, TEE detection in the reference order, and the rules
// by which each TEE fits a report-data digest into its hardware field.
//
// Implementations live in subpackages (attester/sample, attester/snp,
// attester/tdx, attester/tpm, attester/azsnpvtpm, attester/aztdxvtpm,
// attester/cca, attester/se); each produces evidence JSON byte-compatible with
// the Rust guest-components attester of the same name, so trustee's verifiers
// accept it unchanged. Hardware is always reached through small seams (a
// configfs-tsm client, a device opener, a TPM transport) so tests drive fakes.
package attester

import (
	"context"
	"crypto"
	"errors"
	"fmt"

	"github.com/containerd/errdefs"
)

// Tee names a trusted execution environment (or attestable device) exactly as
// kbs-types serializes it: the value of GetTeeType, the "tee" of a KBS
// request, and the keys of the additional-evidence map.
type Tee string

// TEE names. The spelling is the wire format; do not change it.
const (
	TeeTDX          Tee = "tdx"
	TeeSGX          Tee = "sgx"
	TeeSNP          Tee = "snp"
	TeeSEV          Tee = "sev" // legacy pre-SNP SEV(-ES); older kbs-types only
	TeeAzSNPvTPM    Tee = "az-snp-vtpm"
	TeeAzTDXvTPM    Tee = "az-tdx-vtpm"
	TeeCCA          Tee = "cca"
	TeeCSV          Tee = "csv"
	TeeSE           Tee = "se"
	TeeTPM          Tee = "tpm"
	TeeSample       Tee = "sample"
	TeeSampleDevice Tee = "sampledevice"
	TeeNvidia       Tee = "nvidia"
	TeeHygonDCU     Tee = "hygondcu"
	TeeDPU          Tee = "dpu"
)

var knownTees = map[Tee]bool{
	TeeTDX: true, TeeSGX: true, TeeSNP: true, TeeSEV: true, TeeAzSNPvTPM: true,
	TeeAzTDXvTPM: true, TeeCCA: true, TeeCSV: true, TeeSE: true, TeeTPM: true,
	TeeSample: true, TeeSampleDevice: true, TeeNvidia: true, TeeHygonDCU: true,
	TeeDPU: true,
}

// String returns the wire name.
func (t Tee) String() string { return string(t) }

// ParseTee returns the Tee for a wire name, or an error wrapping
// errdefs.ErrInvalidArgument for a name kbs-types does not know.
func ParseTee(s string) (Tee, error) {
	t := Tee(s)
	if !knownTees[t] {
		return "", fmt.Errorf("tee %q: unknown TEE name: %w", s, errdefs.ErrInvalidArgument)
	}
	return t, nil
}

// Attester produces evidence for one TEE.
type Attester interface {
	// Tee names the TEE whose evidence this attester produces.
	Tee() Tee
	// Evidence returns the TEE's evidence binding reportData, as the JSON
	// text guest-components' attester of the same TEE produces. reportData is
	// the digest the caller wants bound (not yet fitted; the attester applies
	// FitReportData's rule itself).
	Evidence(ctx context.Context, reportData []byte) ([]byte, error)
}

// RuntimeMeasurer is implemented by attesters that own an extendable
// measurement register (TDX RTMRs, vTPM PCRs). Registers are addressed by PCR
// index as in the AA API; the attester maps them to its hardware registers.
type RuntimeMeasurer interface {
	// Extend extends the register that pcr maps to with digest. The digest
	// is zero-padded or truncated to the register size.
	Extend(ctx context.Context, pcr uint64, digest []byte) error
	// Measurement returns the current value of the register pcr maps to.
	Measurement(ctx context.Context, pcr uint64) ([]byte, error)
	// Register maps pcr to the confidential-computing measurement register
	// index written into event log entries (guest-components' pcr_to_ccmr).
	Register(pcr uint64) uint32
	// HashAlg is the event log digest algorithm and the register's hash
	// (guest-components' ccel_hash_algorithm).
	HashAlg() crypto.Hash
}

// InitdataBinder is implemented by attesters that can check or establish the
// binding of an initdata digest to hardware: TDX compares MRCONFIGID, SNP
// compares HOST_DATA, vTPM platforms extend PCR 8. Attesters without it do not
// support initdata binding.
type InitdataBinder interface {
	// BindInitdata checks (or establishes) the binding of digest. A digest
	// that does not match the hardware value yields an error wrapping
	// ErrInitdataMismatch.
	BindInitdata(ctx context.Context, digest []byte) error
}

// ErrInitdataMismatch reports that the hardware-bound initdata value differs
// from the digest of the initdata the guest received. The agent must refuse
// to serve.
var ErrInitdataMismatch = fmt.Errorf("initdata digest does not match the value bound at launch: %w", errdefs.ErrFailedPrecondition)

// ErrNotSupported reports that an attester lacks an optional capability.
var ErrNotSupported = fmt.Errorf("not supported by this attester: %w", errdefs.ErrNotImplemented)

// BindInitdata binds digest with a when it supports initdata binding. bound
// reports whether a supports it; an unsupported attester is not an error.
func BindInitdata(ctx context.Context, a Attester, digest []byte) (bound bool, err error) {
	b, ok := a.(InitdataBinder)
	if !ok {
		return false, nil
	}
	if len(digest) == 0 {
		return false, fmt.Errorf("initdata digest: empty: %w", errdefs.ErrInvalidArgument)
	}
	if err := b.BindInitdata(ctx, digest); err != nil {
		return false, fmt.Errorf("%s: bind initdata: %w", a.Tee(), err)
	}
	return true, nil
}

// AsRuntimeMeasurer returns a's runtime measurement capability, or
// ErrNotSupported.
func AsRuntimeMeasurer(a Attester) (RuntimeMeasurer, error) {
	m, ok := a.(RuntimeMeasurer)
	if !ok {
		return nil, fmt.Errorf("%s: runtime measurement: %w", a.Tee(), ErrNotSupported)
	}
	return m, nil
}

// IsMismatch reports whether err is an initdata mismatch.
func IsMismatch(err error) bool { return errors.Is(err, ErrInitdataMismatch) }
