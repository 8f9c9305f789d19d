// Package tdx implements the Intel TDX attester: evidence
// {"cc_eventlog": "<b64>" | null, "quote": "<b64 TD quote>"} as
// guest-components' tdx attester produces it, with the quote from
// configfs-tsm (provider tdx_guest) and cc_eventlog assembled from the CCEL
// ACPI table and the AAEL. It owns the runtime measurement registers (RTMRs
// through the kernel's sysfs measurement files, SHA-384, PCR 17 → RTMR3) and
// checks initdata against MRCONFIGID. Every hardware access goes through a
// seam in Config so tests run on go-configfs-tsm's fakes.
package tdx

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	"github.com/cova-project/cova/attester/tsm"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
)

// Host paths.
const (
	// MeasurementsDir is the kernel (>= 6.16) TDX measurement sysfs directory.
	MeasurementsDir = "/sys/devices/virtual/misc/tdx_guest/measurements"
	// GuestDevice is the TDX guest device (TDREPORT ioctl).
	GuestDevice = "/dev/tdx_guest"
	// CCELPath is the CC event log ACPI table data.
	CCELPath = "/sys/firmware/acpi/tables/data/CCEL"
)

// Sizes and TDREPORT offsets.
const (
	RegisterSize     = 48
	TDReportSize     = 1024
	mrConfigIDOffset = 576
	rtmrOffset       = 720
)

// Files is the measurement sysfs seam: names are relative to MeasurementsDir
// ("mrconfigid", "rtmr3:sha384").
type Files interface {
	ReadFile(name string) ([]byte, error)
	WriteFile(name string, data []byte) error
}

// DirFiles serves Files from a directory (the sysfs one in production).
type DirFiles string

// ReadFile implements Files.
func (d DirFiles) ReadFile(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join(string(d), name))
}

// WriteFile implements Files. sysfs attributes exist; nothing is created.
func (d DirFiles) WriteFile(name string, data []byte) error {
	f, err := os.OpenFile(filepath.Join(string(d), name), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Config holds the attester's seams.
type Config struct {
	// TSM is the configfs-tsm client quotes come from.
	TSM configfsi.Client
	// Measurements is the measurement sysfs; nil when the kernel lacks it.
	Measurements Files
	// TDReport returns the 1024-byte TDREPORT for reportData
	// (TDX_CMD_GET_REPORT0); nil when /dev/tdx_guest is absent.
	TDReport func(ctx context.Context, reportData [64]byte) ([]byte, error)
	// ReadFile reads the CCEL and AAEL; os.ReadFile when nil.
	ReadFile func(name string) ([]byte, error)
	// CCELPath and AAELPath locate the event logs; CCELPath and
	// eventlog.DefaultPath when empty.
	CCELPath string
	AAELPath string
}

// DefaultConfig returns the seams for the real machine. lookupEnv reads
// AAEL_PATH (os.LookupEnv when nil).
func DefaultConfig(lookupEnv func(string) (string, bool)) Config {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	cfg := Config{CCELPath: CCELPath, AAELPath: eventlog.DefaultPath}
	if p, ok := lookupEnv(eventlog.PathEnv); ok && p != "" {
		cfg.AAELPath = p
	}
	if c, err := tsm.DefaultClient(); err == nil {
		cfg.TSM = c
	}
	if st, err := os.Stat(MeasurementsDir); err == nil && st.IsDir() {
		cfg.Measurements = DirFiles(MeasurementsDir)
	}
	if _, err := os.Stat(GuestDevice); err == nil {
		cfg.TDReport = func(ctx context.Context, rd [64]byte) ([]byte, error) {
			return GetTDReport(ctx, GuestDevice, rd)
		}
	}
	return cfg
}

// Evidence is the tdx evidence document.
type Evidence struct {
	CCEventlog *string `json:"cc_eventlog"`
	Quote      string  `json:"quote"`
}

// Attester is the tdx attester. It implements attester.RuntimeMeasurer and
// attester.InitdataBinder.
type Attester struct {
	cfg Config
}

// New returns a tdx attester.
func New(cfg Config) *Attester {
	if cfg.ReadFile == nil {
		cfg.ReadFile = os.ReadFile
	}
	if cfg.CCELPath == "" {
		cfg.CCELPath = CCELPath
	}
	if cfg.AAELPath == "" {
		cfg.AAELPath = eventlog.DefaultPath
	}
	return &Attester{cfg: cfg}
}

// Tee implements attester.Attester.
func (a *Attester) Tee() attester.Tee { return attester.TeeTDX }

// Evidence implements attester.Attester: a TD quote whose REPORTDATA is
// reportData zero-padded to 64 bytes, and the CC event log.
func (a *Attester) Evidence(ctx context.Context, reportData []byte) ([]byte, error) {
	rd, err := attester.FitReportData(attester.TeeTDX, reportData)
	if err != nil {
		return nil, fmt.Errorf("tdx: %w", err)
	}
	if a.cfg.TSM == nil {
		return nil, fmt.Errorf("tdx: quote: no configfs-tsm: %w", errdefs.ErrNotImplemented)
	}
	resp, err := tsm.Get(ctx, a.cfg.TSM, tsm.Request{Provider: tsm.ProviderTDX, InBlob: rd})
	if err != nil {
		return nil, fmt.Errorf("tdx: quote: %w", err)
	}
	ev := Evidence{Quote: base64.StdEncoding.EncodeToString(resp.OutBlob)}
	el, err := a.CCEventlog()
	if err != nil {
		return nil, err
	}
	if el != nil {
		s := base64.StdEncoding.EncodeToString(el)
		ev.CCEventlog = &s
	}
	return json.Marshal(ev)
}

// CCEventlog returns the cc_eventlog bytes (nil when there is neither a
// CCEL nor an AAEL).
func (a *Attester) CCEventlog() ([]byte, error) {
	ccel, err := a.readOptional(a.cfg.CCELPath)
	if err != nil {
		return nil, err
	}
	aael, err := a.readOptional(a.cfg.AAELPath)
	if err != nil {
		return nil, err
	}
	el, err := eventlog.CCEventLog(ccel, aael)
	if err != nil {
		return nil, fmt.Errorf("tdx: cc_eventlog: %w", err)
	}
	return el, nil
}

// readOptional returns nil for a missing file and a non-nil slice otherwise.
func (a *Attester) readOptional(name string) ([]byte, error) {
	b, err := a.cfg.ReadFile(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tdx: read %s: %w", name, err)
	}
	if b == nil {
		b = []byte{}
	}
	return b, nil
}

// Register implements attester.RuntimeMeasurer: the CC measurement register
// for a PCR (1,7→1; 2–6→2; 8–15→3; else 4). RTMR index = register − 1.
func (a *Attester) Register(pcr uint64) uint32 {
	switch {
	case pcr == 1 || pcr == 7:
		return 1
	case pcr >= 2 && pcr <= 6:
		return 2
	case pcr >= 8 && pcr <= 15:
		return 3
	}
	return 4
}

// HashAlg implements attester.RuntimeMeasurer.
func (a *Attester) HashAlg() crypto.Hash { return crypto.SHA384 }

func rtmrFile(i uint32) string { return fmt.Sprintf("rtmr%d:sha384", i) }

// Extend implements attester.RuntimeMeasurer through the sysfs RTMR file.
// Without the sysfs interface runtime measurement is not supported.
func (a *Attester) Extend(ctx context.Context, pcr uint64, digest []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if a.cfg.Measurements == nil {
		return fmt.Errorf("tdx: extend RTMR: no measurement sysfs (kernel < 6.16): %w", attester.ErrNotSupported)
	}
	rtmr := a.Register(pcr) - 1
	if err := a.cfg.Measurements.WriteFile(rtmrFile(rtmr), attester.FitDigest(digest, RegisterSize)); err != nil {
		return fmt.Errorf("tdx: extend RTMR%d: %w", rtmr, err)
	}
	return nil
}

// Measurement implements attester.RuntimeMeasurer: the RTMR value from sysfs,
// or from a TDREPORT when sysfs is absent.
func (a *Attester) Measurement(ctx context.Context, pcr uint64) ([]byte, error) {
	rtmr := a.Register(pcr) - 1
	if a.cfg.Measurements != nil {
		b, err := a.cfg.Measurements.ReadFile(rtmrFile(rtmr))
		if err != nil {
			return nil, fmt.Errorf("tdx: read RTMR%d: %w", rtmr, err)
		}
		if len(b) != RegisterSize {
			return nil, fmt.Errorf("tdx: RTMR%d is %d bytes: %w", rtmr, len(b), errdefs.ErrDataLoss)
		}
		return b, nil
	}
	rep, err := a.tdReport(ctx)
	if err != nil {
		return nil, err
	}
	off := rtmrOffset + RegisterSize*int(rtmr)
	return bytes.Clone(rep[off : off+RegisterSize]), nil
}

func (a *Attester) tdReport(ctx context.Context) ([]byte, error) {
	if a.cfg.TDReport == nil {
		return nil, fmt.Errorf("tdx: TDREPORT: no %s: %w", GuestDevice, errdefs.ErrNotImplemented)
	}
	rep, err := a.cfg.TDReport(ctx, [64]byte{})
	if err != nil {
		return nil, fmt.Errorf("tdx: TDREPORT: %w", err)
	}
	if len(rep) != TDReportSize {
		return nil, fmt.Errorf("tdx: TDREPORT is %d bytes: %w", len(rep), errdefs.ErrDataLoss)
	}
	return rep, nil
}

// MRConfigID returns MRCONFIGID from sysfs or a TDREPORT.
func (a *Attester) MRConfigID(ctx context.Context) ([]byte, error) {
	if a.cfg.Measurements != nil {
		b, err := a.cfg.Measurements.ReadFile("mrconfigid")
		if err != nil {
			return nil, fmt.Errorf("tdx: read MRCONFIGID: %w", err)
		}
		return b, nil
	}
	rep, err := a.tdReport(ctx)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(rep[mrConfigIDOffset : mrConfigIDOffset+RegisterSize]), nil
}

// BindInitdata implements attester.InitdataBinder: MRCONFIGID must equal the
// digest zero-padded or truncated to 48 bytes.
func (a *Attester) BindInitdata(ctx context.Context, digest []byte) error {
	got, err := a.MRConfigID(ctx)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, attester.FitDigest(digest, RegisterSize)) {
		return fmt.Errorf("tdx: MRCONFIGID %x: %w", got, attester.ErrInitdataMismatch)
	}
	return nil
}
