// Package snp implements the AMD SEV-SNP attester. Evidence is
// {"attestation_report": <report>, "cert_chain": [<entry>…] | null} exactly
// as guest-components' snp attester serializes the sev crate's
// AttestationReport and certificate table, so trustee's SNP verifier can
// re-encode the report to the signed bytes. Reports come from a Source: the
// /dev/sev-guest SNP_GET_EXT_REPORT ioctl (what guest-components uses) or the
// configfs-tsm report interface with provider sev_guest; both are seams so
// tests run on go-sev-guest's fake AMD signer and go-configfs-tsm's fakes.
package snp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/tsm"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
	labi "github.com/google/go-sev-guest/client/linuxabi"
)

// Source obtains a signed attestation report and the host's certificate
// table (nil when the host supplies none).
type Source interface {
	ExtendedReport(ctx context.Context, reportData [64]byte, vmpl uint32) (report, certTable []byte, err error)
}

// Evidence is the snp evidence document.
type Evidence struct {
	AttestationReport *Report     `json:"attestation_report"`
	CertChain         []CertEntry `json:"cert_chain"`
}

// Attester is the snp attester. It implements attester.InitdataBinder
// (HOST_DATA) but not runtime measurement.
type Attester struct {
	src Source
}

// New returns an snp attester reading reports from src.
func New(src Source) *Attester { return &Attester{src: src} }

// Tee implements attester.Attester.
func (a *Attester) Tee() attester.Tee { return attester.TeeSNP }

// Evidence implements attester.Attester: a VMPL 0 extended report whose
// REPORT_DATA is reportData zero-padded to 64 bytes.
func (a *Attester) Evidence(ctx context.Context, reportData []byte) ([]byte, error) {
	ev, err := a.evidence(ctx, reportData)
	if err != nil {
		return nil, err
	}
	return json.Marshal(ev)
}

func (a *Attester) evidence(ctx context.Context, reportData []byte) (*Evidence, error) {
	rd, err := attester.FitReportData(attester.TeeSNP, reportData)
	if err != nil {
		return nil, fmt.Errorf("snp: %w", err)
	}
	var in [64]byte
	copy(in[:], rd)
	raw, certs, err := a.src.ExtendedReport(ctx, in, 0)
	if err != nil {
		return nil, fmt.Errorf("snp: get extended report: %w", err)
	}
	rep, err := ParseReport(raw)
	if err != nil {
		return nil, fmt.Errorf("snp: %w", err)
	}
	if rep.ReportData != in {
		return nil, fmt.Errorf("snp: report carries other REPORT_DATA than requested: %w", errdefs.ErrDataLoss)
	}
	ev := &Evidence{AttestationReport: rep}
	if certs != nil {
		if ev.CertChain, err = ParseCertTable(certs); err != nil {
			return nil, fmt.Errorf("snp: %w", err)
		}
	}
	return ev, nil
}

// HostData returns HOST_DATA from a fresh report with zero report data.
func (a *Attester) HostData(ctx context.Context) ([32]byte, error) {
	raw, _, err := a.src.ExtendedReport(ctx, [64]byte{}, 0)
	if err != nil {
		return [32]byte{}, fmt.Errorf("snp: get report: %w", err)
	}
	rep, err := ParseReport(raw)
	if err != nil {
		return [32]byte{}, fmt.Errorf("snp: %w", err)
	}
	return rep.HostData, nil
}

// BindInitdata implements attester.InitdataBinder: HOST_DATA must equal the
// digest zero-padded or truncated to 32 bytes.
func (a *Attester) BindInitdata(ctx context.Context, digest []byte) error {
	hd, err := a.HostData(ctx)
	if err != nil {
		return err
	}
	if !bytes.Equal(hd[:], attester.FitDigest(digest, 32)) {
		return fmt.Errorf("snp: HOST_DATA %x: %w", hd, attester.ErrInitdataMismatch)
	}
	return nil
}

// Device is the /dev/sev-guest ioctl seam; go-sev-guest's test Device
// satisfies it.
type Device interface {
	Ioctl(command uintptr, argument any) (uintptr, error)
	Close() error
}

// DeviceSource reads extended reports through the SNP_GET_EXT_REPORT ioctl,
// like the sev crate: ask with no certificate buffer, and when the driver
// reports the buffer too small, retry with the size it names.
type DeviceSource struct {
	Open func() (Device, error)
}

// guestRequestInvalidLength is the exitinfo2 the driver reports when the
// certificate buffer is too small (SNP_GUEST_VMM_ERR_INVALID_LEN << 32).
const guestRequestInvalidLength = 0x100000000

// ExtendedReport implements Source.
func (s DeviceSource) ExtendedReport(ctx context.Context, reportData [64]byte, vmpl uint32) ([]byte, []byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	d, err := s.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open sev-guest device: %w", err)
	}
	defer d.Close()
	req := labi.SnpExtendedReportReq{Data: labi.SnpReportReqABI{ReportData: reportData, Vmpl: vmpl}}
	var resp labi.SnpReportRespABI
	ug := labi.SnpUserGuestRequest{ReqData: &req, RespData: &resp}
	res, err := d.Ioctl(labi.IocSnpGetExtendedReport, &ug)
	if err != nil && ug.FwErr == guestRequestInvalidLength && req.CertsLength == 0 {
		// The host names no table size: take a plain report without
		// certificates (as go-sev-guest does).
		return plainReport(d, reportData, vmpl)
	}
	if err != nil && ug.FwErr == guestRequestInvalidLength {
		if req.CertsLength > maxCertTable {
			return nil, nil, fmt.Errorf("SNP_GET_EXT_REPORT: host asks for a %d-byte certificate buffer: %w", req.CertsLength, errdefs.ErrInvalidArgument)
		}
		req.Certs = make([]byte, req.CertsLength)
		ug.FwErr = 0
		res, err = d.Ioctl(labi.IocSnpGetExtendedReport, &ug)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("SNP_GET_EXT_REPORT: %w (firmware error %#x)", err, ug.FwErr)
	}
	if res != 0 {
		return nil, nil, fmt.Errorf("SNP_GET_EXT_REPORT: ES result %d: %w", res, errdefs.ErrUnavailable)
	}
	report := bytes.Clone(resp.Data[:ReportSize])
	if req.Certs == nil || req.CertsLength == 0 {
		return report, nil, nil
	}
	n := min(int(req.CertsLength), len(req.Certs))
	return report, req.Certs[:n], nil
}

func plainReport(d Device, reportData [64]byte, vmpl uint32) ([]byte, []byte, error) {
	var resp labi.SnpReportRespABI
	ug := labi.SnpUserGuestRequest{ReqData: &labi.SnpReportReqABI{ReportData: reportData, Vmpl: vmpl}, RespData: &resp}
	res, err := d.Ioctl(labi.IocSnpGetReport, &ug)
	if err != nil {
		return nil, nil, fmt.Errorf("SNP_GET_REPORT: %w (firmware error %#x)", err, ug.FwErr)
	}
	if res != 0 {
		return nil, nil, fmt.Errorf("SNP_GET_REPORT: ES result %d: %w", res, errdefs.ErrUnavailable)
	}
	return bytes.Clone(resp.Data[:ReportSize]), nil, nil
}

// TSMSource reads extended reports through configfs-tsm (provider sev_guest,
// privlevel = VMPL, certificate table from auxblob).
type TSMSource struct {
	Client configfsi.Client
}

// ExtendedReport implements Source.
func (s TSMSource) ExtendedReport(ctx context.Context, reportData [64]byte, vmpl uint32) ([]byte, []byte, error) {
	lvl := uint(vmpl)
	resp, err := tsm.Get(ctx, s.Client, tsm.Request{Provider: tsm.ProviderSNP, InBlob: reportData[:], PrivLevel: &lvl, AuxBlob: true})
	if err != nil {
		return nil, nil, err
	}
	if len(resp.OutBlob) < ReportSize {
		return nil, nil, fmt.Errorf("tsm outblob: %d bytes, want %d: %w", len(resp.OutBlob), ReportSize, errdefs.ErrDataLoss)
	}
	var certs []byte
	if len(resp.AuxBlob) > 0 {
		certs = resp.AuxBlob
	}
	return resp.OutBlob[:ReportSize], certs, nil
}

// Host paths.
const (
	DevicePath   = "/dev/sev-guest"
	PlatformPath = "/sys/devices/platform/sev-guest"
)

// DefaultSource returns the ioctl source when /dev/sev-guest exists, else
// the configfs-tsm source, else an error wrapping errdefs.ErrNotFound.
func DefaultSource() (Source, error) {
	if _, err := os.Stat(DevicePath); err == nil {
		return DeviceSource{Open: func() (Device, error) { return OpenDevice(DevicePath) }}, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("snp: %w", err)
	}
	c, err := tsm.DefaultClient()
	if err != nil {
		return nil, fmt.Errorf("snp: no %s and %w", DevicePath, err)
	}
	return TSMSource{Client: c}, nil
}
