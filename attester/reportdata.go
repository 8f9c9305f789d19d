package attester

import (
	"fmt"

	"github.com/containerd/errdefs"
)

// Hardware report-data field sizes.
const (
	// ReportDataSize is the REPORTDATA / REPORT_DATA / challenge size of TDX,
	// SNP, SGX, CSV, CCA and IBM SE.
	ReportDataSize = 64
	// TPMNonceSize is the qualifying-data size the tpm attester quotes with.
	TPMNonceSize = 32
	// DeviceNonceSize is the nonce size of the nvidia device attester.
	DeviceNonceSize = 32
)

// FitReportData fits a report-data digest into tee's hardware field the way
// guest-components' attester for tee does:
//
//   - tdx, snp, sgx, csv, cca, se: zero-padded to 64 bytes; longer is an error
//   - tpm: truncated or zero-padded to 32 bytes
//   - nvidia: the first 32 bytes (zero-padded if shorter)
//   - az-snp-vtpm, az-tdx-vtpm, sample, sampledevice: unchanged
//
// The result never aliases rd.
func FitReportData(tee Tee, rd []byte) ([]byte, error) {
	switch tee {
	case TeeTDX, TeeSNP, TeeSGX, TeeCSV, TeeCCA, TeeSE:
		return PadReportData(rd, ReportDataSize)
	case TeeTPM:
		return FitDigest(rd, TPMNonceSize), nil
	case TeeNvidia:
		return FitDigest(rd, DeviceNonceSize), nil
	case TeeAzSNPvTPM, TeeAzTDXvTPM, TeeSample, TeeSampleDevice:
		return append([]byte{}, rd...), nil
	default:
		return nil, fmt.Errorf("tee %q: no report-data rule: %w", tee, errdefs.ErrInvalidArgument)
	}
}

// PadReportData zero-pads rd to size bytes. rd longer than size is an error
// wrapping errdefs.ErrInvalidArgument.
func PadReportData(rd []byte, size int) ([]byte, error) {
	if len(rd) > size {
		return nil, fmt.Errorf("report data: %d bytes, at most %d allowed: %w", len(rd), size, errdefs.ErrInvalidArgument)
	}
	out := make([]byte, size)
	copy(out, rd)
	return out, nil
}

// FitDigest zero-pads or truncates d to size bytes (guest-components'
// utils::pad). Used for register extends and initdata comparisons.
func FitDigest(d []byte, size int) []byte {
	out := make([]byte, size)
	copy(out, d)
	return out
}
