// Package azvtpm holds what the Azure confidential VM attesters
// (az-snp-vtpm, az-tdx-vtpm) share: the paravisor (HCL) vTPM protocol — write
// the report data to NV index 0x01400002, read the regenerated HCL report
// from NV index 0x01400001, quote the SHA-256 PCRs 0–23 with the attestation
// key at persistent handle 0x81000003 — the HCL report layout, the vTPM PCR
// runtime measurement and initdata binding (PCR 8), detection of the HCL
// report type, and the Azure IMDS client (THIM certificates, TD quote
// service). The TPM is reached through a go-tpm transport opened per
// operation, as in attester/tpm, so tests drive swtpm; IMDS is reached over
// an injectable HTTP client.
package azvtpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/tpm"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// vTPM handles of the Azure paravisor.
const (
	// HCLReportIndex holds the HCL report.
	HCLReportIndex uint32 = 0x01400001
	// ReportDataIndex is where the guest writes its report data; the
	// paravisor then regenerates the HCL report with it as "user-data".
	ReportDataIndex uint32 = 0x01400002
	// AKHandle is the persistent handle of the vTPM attestation key.
	AKHandle uint32 = 0x81000003
	// InitdataPCR is the PCR initdata digests are extended into.
	InitdataPCR = 8
	// MaxReportData is the largest report data a quote can carry as
	// qualifying data (TPM2B_DATA).
	MaxReportData = 64
	// DefaultReportDelay is how long the paravisor is given to regenerate
	// the HCL report after the report data is written (the crate sleeps 3 s
	// so it does not read a stale report).
	DefaultReportDelay = 3 * time.Second
)

// TPM devices tried by DefaultOpener, in order.
var TPMDevices = []string{"/dev/tpmrm0", "/dev/tpm0"}

// Opener opens the vTPM for one operation.
type Opener func() (transport.TPMCloser, error)

// DefaultOpener opens the kernel's TPM resource manager (/dev/tpmrm0), or
// the raw /dev/tpm0 when the resource manager is absent.
func DefaultOpener() (transport.TPMCloser, error) {
	var errs []error
	for _, dev := range TPMDevices {
		t, err := linuxtpm.Open(dev)
		if err == nil {
			return t, nil
		}
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("vtpm: no TPM device: %w: %w", err, errdefs.ErrNotFound)
	}
	return nil, fmt.Errorf("vtpm: open: %w", errors.Join(errs...))
}

// VTPM is the Azure paravisor's vTPM. It implements
// attester.RuntimeMeasurer (SHA-256 PCRs, identity register mapping) and
// attester.InitdataBinder (extend PCR 8), so the attesters embed it.
type VTPM struct {
	open  Opener
	delay time.Duration
	m     *tpm.Attester
}

// New returns the vTPM reached through open (DefaultOpener when nil).
// reportDelay is the wait after writing the report data (negative means
// DefaultReportDelay; tests pass 0).
func New(open Opener, reportDelay time.Duration) *VTPM {
	if open == nil {
		open = DefaultOpener
	}
	if reportDelay < 0 {
		reportDelay = DefaultReportDelay
	}
	return &VTPM{open: open, delay: reportDelay, m: tpm.New(tpm.Config{Open: open, AKHandle: AKHandle})}
}

func (v *VTPM) connect(ctx context.Context) (transport.TPMCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t, err := v.open()
	if err != nil {
		return nil, fmt.Errorf("vtpm: open: %w", err)
	}
	return tpm.WithRetry(t), nil
}

var owner = tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}

// nvPublic returns the public area and name of an NV index; found is false
// when the TPM has no such index.
func nvPublic(t transport.TPM, index uint32) (pub *tpm2.TPMSNVPublic, name tpm2.TPM2BName, found bool, err error) {
	rsp, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, tpm2.TPM2BName{}, false, nil
		}
		return nil, tpm2.TPM2BName{}, false, fmt.Errorf("vtpm: read public of NV index %#x: %w", index, err)
	}
	p, err := rsp.NVPublic.Contents()
	if err != nil {
		return nil, tpm2.TPM2BName{}, false, fmt.Errorf("vtpm: NV index %#x public area: %w", index, err)
	}
	return p, rsp.NVName, true, nil
}

// ReadHCLReport reads the current HCL report (NV index 0x01400001, owner
// authorization) without refreshing it.
func (v *VTPM) ReadHCLReport(ctx context.Context) ([]byte, error) {
	t, err := v.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	return readNV(t, HCLReportIndex)
}

// maxHCLReport bounds the NV index size accepted for the HCL report.
const maxHCLReport = 1 << 16

func readNV(t transport.TPM, index uint32) ([]byte, error) {
	pub, name, found, err := nvPublic(t, index)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("vtpm: NV index %#x: not defined: %w", index, errdefs.ErrNotFound)
	}
	size := int(pub.DataSize)
	if size == 0 || size > maxHCLReport {
		return nil, fmt.Errorf("vtpm: NV index %#x: size %d: %w", index, size, errdefs.ErrFailedPrecondition)
	}
	chunk := nvBufferMax(t)
	out := make([]byte, 0, size)
	for len(out) < size {
		n := min(chunk, size-len(out))
		rsp, err := tpm2.NVRead{
			AuthHandle: owner,
			NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(index), Name: name},
			Size:       uint16(n),
			Offset:     uint16(len(out)),
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("vtpm: read NV index %#x at %d: %w", index, len(out), err)
		}
		if len(rsp.Data.Buffer) != n {
			return nil, fmt.Errorf("vtpm: read NV index %#x: got %d bytes, asked %d: %w", index, len(rsp.Data.Buffer), n, errdefs.ErrDataLoss)
		}
		out = append(out, rsp.Data.Buffer...)
	}
	return out, nil
}

// nvBufferMax returns TPM_PT_NV_BUFFER_MAX (512 when it cannot be read, a
// size every TPM 2.0 supports).
func nvBufferMax(t transport.TPM) int {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTNVBufferMax), PropertyCount: 1}.Execute(t)
	if err != nil {
		return 512
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil || len(props.TPMProperty) == 0 || props.TPMProperty[0].Property != tpm2.TPMPTNVBufferMax {
		return 512
	}
	if v := int(props.TPMProperty[0].Value); v >= 64 && v <= 4096 {
		return v
	}
	return 512
}

// checkReportData validates report data for the vTPM: 1..64 bytes (the
// quote's qualifying data; an empty NV index cannot be defined).
func checkReportData(rd []byte) error {
	if len(rd) == 0 || len(rd) > MaxReportData {
		return fmt.Errorf("report data: %d bytes, want 1..%d: %w", len(rd), MaxReportData, errdefs.ErrInvalidArgument)
	}
	return nil
}

// HCLReportWithReportData writes reportData to NV index 0x01400002
// (defining it with owner read/write and the data's size, redefining it
// when its size differs), waits for the paravisor to regenerate the HCL
// report, and reads it.
func (v *VTPM) HCLReportWithReportData(ctx context.Context, reportData []byte) ([]byte, error) {
	if err := checkReportData(reportData); err != nil {
		return nil, err
	}
	t, err := v.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if err := writeReportData(t, reportData); err != nil {
		return nil, err
	}
	if v.delay > 0 {
		timer := time.NewTimer(v.delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-timer.C:
		}
	}
	return readNV(t, HCLReportIndex)
}

func writeReportData(t transport.TPM, data []byte) error {
	idx := tpm2.TPMHandle(ReportDataIndex)
	pub, name, found, err := nvPublic(t, ReportDataIndex)
	if err != nil {
		return err
	}
	if found && int(pub.DataSize) != len(data) {
		if _, err := (tpm2.NVUndefineSpace{AuthHandle: owner, NVIndex: tpm2.NamedHandle{Handle: idx, Name: name}}).Execute(t); err != nil {
			return fmt.Errorf("vtpm: undefine NV index %#x: %w", ReportDataIndex, err)
		}
		found = false
	}
	if !found {
		def := tpm2.TPMSNVPublic{
			NVIndex:    idx,
			NameAlg:    tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, NT: tpm2.TPMNTOrdinary},
			DataSize:   uint16(len(data)),
		}
		if _, err := (tpm2.NVDefineSpace{AuthHandle: owner, PublicInfo: tpm2.New2B(def)}).Execute(t); err != nil {
			return fmt.Errorf("vtpm: define NV index %#x: %w", ReportDataIndex, err)
		}
		if _, name, _, err = nvPublic(t, ReportDataIndex); err != nil {
			return err
		}
	}
	if _, err := (tpm2.NVWrite{
		AuthHandle: owner,
		NVIndex:    tpm2.NamedHandle{Handle: idx, Name: name},
		Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data},
	}).Execute(t); err != nil {
		return fmt.Errorf("vtpm: write report data to NV index %#x: %w", ReportDataIndex, err)
	}
	return nil
}

// Quote is the tpm_quote object of the Azure evidence: the raw RSASSA
// signature, the marshalled TPMS_ATTEST and the 24 SHA-256 PCR values, all
// lowercase hex (serde_with's Hex).
type Quote struct {
	Signature string   `json:"signature"`
	Message   string   `json:"message"`
	PCRs      []string `json:"pcrs"`
}

// quoteRetries bounds attempts when a PCR changes between quote and read.
const quoteRetries = 3

// Quote quotes the SHA-256 PCRs 0–23 with the AK at 0x81000003 (the key's
// own scheme, which must be RSASSA), qualifying data = reportData, and
// reads the PCR values the quote covers.
func (v *VTPM) Quote(ctx context.Context, reportData []byte) (*Quote, error) {
	if len(reportData) > MaxReportData {
		return nil, fmt.Errorf("report data: %d bytes, at most %d: %w", len(reportData), MaxReportData, errdefs.ErrInvalidArgument)
	}
	t, err := v.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	ak := tpm2.TPMHandle(AKHandle)
	pub, err := tpm2.ReadPublic{ObjectHandle: ak}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("vtpm: read AK %#x: %w", AKHandle, err)
	}
	for range quoteRetries {
		q, err := tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: ak, Name: pub.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: reportData},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      tpm.AllPCRs(),
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("vtpm: quote with AK %#x: %w", AKHandle, err)
		}
		if q.Signature.SigAlg != tpm2.TPMAlgRSASSA {
			return nil, fmt.Errorf("vtpm: quote signature algorithm %v, want RSASSA: %w", q.Signature.SigAlg, errdefs.ErrFailedPrecondition)
		}
		sig, err := q.Signature.Signature.RSASSA()
		if err != nil {
			return nil, fmt.Errorf("vtpm: quote signature: %w", err)
		}
		pcrs, err := tpm.ReadPCRs(t)
		if err != nil {
			return nil, err
		}
		msg := q.Quoted.Bytes()
		if ok, err := tpm.QuoteMatchesPCRs(msg, pcrs); err != nil {
			return nil, err
		} else if !ok {
			continue // a PCR moved between quote and read; quote again
		}
		out := &Quote{Signature: hex.EncodeToString(sig.Sig.Buffer), Message: hex.EncodeToString(msg)}
		for _, p := range pcrs {
			out.PCRs = append(out.PCRs, hex.EncodeToString(p))
		}
		return out, nil
	}
	return nil, fmt.Errorf("vtpm: PCRs kept changing during the quote: %w", errdefs.ErrAborted)
}

// Register implements attester.RuntimeMeasurer: the PCR index itself.
func (v *VTPM) Register(pcr uint64) uint32 { return uint32(pcr) }

// HashAlg implements attester.RuntimeMeasurer: SHA-256.
func (v *VTPM) HashAlg() crypto.Hash { return crypto.SHA256 }

// Extend implements attester.RuntimeMeasurer: extends SHA-256 PCR pcr
// (0..23) with digest, which must be 32 bytes.
func (v *VTPM) Extend(ctx context.Context, pcr uint64, digest []byte) error {
	if len(digest) != sha256.Size {
		return fmt.Errorf("vtpm: digest is %d bytes, want a 32-byte sha256 digest: %w", len(digest), errdefs.ErrInvalidArgument)
	}
	return v.m.Extend(ctx, pcr, digest)
}

// Measurement implements attester.RuntimeMeasurer: the SHA-256 PCR value.
func (v *VTPM) Measurement(ctx context.Context, pcr uint64) ([]byte, error) {
	return v.m.Measurement(ctx, pcr)
}

// BindInitdata implements attester.InitdataBinder: extends PCR 8 with the
// 32-byte digest; the verifier expects PCR 8 = SHA-256(0^32 || digest).
func (v *VTPM) BindInitdata(ctx context.Context, digest []byte) error {
	return v.m.BindInitdata(ctx, digest)
}

// DetectReportType reads the HCL report and returns its hardware report
// type. It is the detection probe for both Azure attesters: a missing TPM
// or NV index, or a report that does not parse, is an error (not Azure).
func (v *VTPM) DetectReportType(ctx context.Context) (ReportType, error) {
	b, err := v.ReadHCLReport(ctx)
	if err != nil {
		return 0, err
	}
	r, err := ParseHCLReport(b)
	if err != nil {
		return 0, err
	}
	return r.Type, nil
}

// CheckUserData reports whether the HCL report carries reportData as the
// leading bytes of its user-data (what trustee's v2 check requires).
func CheckUserData(r *HCLReport, reportData []byte) error {
	ud, err := r.UserData()
	if err != nil {
		return err
	}
	if len(ud) < len(reportData) || !bytes.Equal(ud[:len(reportData)], reportData) {
		return fmt.Errorf("hcl report: user-data does not carry the report data (stale report?): %w", errdefs.ErrFailedPrecondition)
	}
	return nil
}

var (
	_ attester.RuntimeMeasurer = (*VTPM)(nil)
	_ attester.InitdataBinder  = (*VTPM)(nil)
)

// DetectTee is an attester.AzureProbe: the Azure TEE the HCL report's
// hardware report type names.
func (v *VTPM) DetectTee(ctx context.Context) (attester.Tee, error) {
	t, err := v.DetectReportType(ctx)
	if err != nil {
		return "", err
	}
	if t == ReportTypeTDX {
		return attester.TeeAzTDXvTPM, nil
	}
	return attester.TeeAzSNPvTPM, nil
}
