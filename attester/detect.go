package attester

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/cova-project/cova/attester/tsm"
	"github.com/google/go-configfs-tsm/configfs/configfsi"
)

// Probe reports whether one TEE is present. Probes must be cheap and must not
// change hardware state beyond what detection needs (a configfs-tsm entry is
// created and removed to read its provider).
type Probe func(ctx context.Context) bool

// Probes holds one probe per TEE; a nil probe means "not present". Tests
// build Probes from literals; the agent uses DefaultProbes.
type Probes struct {
	TDX       Probe
	SGX       Probe
	AzTDXvTPM Probe
	AzSNPvTPM Probe
	SNP       Probe
	CSV       Probe
	CCA       Probe
	SE        Probe
	TPM       Probe
	// SampleDevice enables the sampledevice additional attester.
	SampleDevice Probe
	// Nvidia and HygonDCU detect additional device attesters.
	Nvidia   Probe
	HygonDCU Probe
}

// Detect returns the TEEs present, in guest-components' priority order
// (tdx, sgx, az-tdx-vtpm, az-snp-vtpm, snp, csv, cca, se, tpm), always ending
// with sample. The first element is the primary attester's TEE; sample as
// primary means no TEE was found.
func Detect(ctx context.Context, p Probes) []Tee {
	order := []struct {
		tee   Tee
		probe Probe
	}{
		{TeeTDX, p.TDX},
		{TeeSGX, p.SGX},
		{TeeAzTDXvTPM, p.AzTDXvTPM},
		{TeeAzSNPvTPM, p.AzSNPvTPM},
		{TeeSNP, p.SNP},
		{TeeCSV, p.CSV},
		{TeeCCA, p.CCA},
		{TeeSE, p.SE},
		{TeeTPM, p.TPM},
	}
	var out []Tee
	for _, o := range order {
		if o.probe != nil && o.probe(ctx) {
			out = append(out, o.tee)
		}
	}
	return append(out, TeeSample)
}

// DetectAdditional returns the additional (device) attesters present, in
// guest-components' order: nvidia, sampledevice, hygondcu.
func DetectAdditional(ctx context.Context, p Probes) []Tee {
	var out []Tee
	for _, o := range []struct {
		tee   Tee
		probe Probe
	}{{TeeNvidia, p.Nvidia}, {TeeSampleDevice, p.SampleDevice}, {TeeHygonDCU, p.HygonDCU}} {
		if o.probe != nil && o.probe(ctx) {
			out = append(out, o.tee)
		}
	}
	return out
}

// Host paths the default probes look at.
const (
	TDXGuestDevice   = "/dev/tdx_guest"
	SNPGuestPlatform = "/sys/devices/platform/sev-guest"
	SEGuestFlag      = "/sys/firmware/uv/prot_virt_guest"
)

// TPMDevices are the TPM character devices the tpm attester considers, in
// order, when AA_TPM_DEVICE is not set.
var TPMDevices = []string{"/dev/tpm0", "/dev/tpm1", "/dev/tpm2"}

// Env looks up an environment variable (os.LookupEnv in the agent).
type Env func(key string) (string, bool)

// AzureProbe reads the Azure paravisor's HCL report from the vTPM and
// returns the TEE its hardware report type names (TeeAzSNPvTPM or
// TeeAzTDXvTPM). Any error (no TPM, no HCL report NV index, a report that
// does not parse) means "not an Azure confidential VM".
type AzureProbe func(ctx context.Context) (Tee, error)

// AzureProbes turns one AzureProbe into the az-tdx-vtpm and az-snp-vtpm
// probes. The vTPM is read once, on the first probe that runs, however
// often the probes are called.
func AzureProbes(probe AzureProbe, log *slog.Logger) (azTDX, azSNP Probe) {
	if probe == nil {
		return nil, nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var (
		once sync.Once
		tee  Tee
	)
	get := func(ctx context.Context) Tee {
		once.Do(func() {
			t, err := probe(ctx)
			if err != nil {
				log.Debug("no Azure vTPM HCL report", "error", err)
				return
			}
			tee = t
		})
		return tee
	}
	return func(ctx context.Context) bool { return get(ctx) == TeeAzTDXvTPM },
		func(ctx context.Context) bool { return get(ctx) == TeeAzSNPvTPM }
}

// DefaultProbes returns the probes for the real machine: configfs-tsm
// providers (client may be nil when configfs-tsm is absent), device nodes and
// sysfs flags, the Azure paravisor's HCL report through azure (nil: Azure is
// not probed), and the AA_TPM_DEVICE / ENABLE_SAMPLE_DEVICE environment.
// SGX, CSV and device attesters other than sampledevice are not probed yet.
func DefaultProbes(client configfsi.Client, env Env, azure AzureProbe, log *slog.Logger) Probes {
	if env == nil {
		env = os.LookupEnv
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	azTDX, azSNP := AzureProbes(azure, log)
	return Probes{
		AzTDXvTPM: azTDX,
		AzSNPvTPM: azSNP,
		TDX: func(context.Context) bool {
			return tsm.ProviderIs(client, tsm.ProviderTDX) || exists(TDXGuestDevice)
		},
		SNP: func(context.Context) bool { return exists(SNPGuestPlatform) },
		CCA: func(context.Context) bool {
			return runtime.GOARCH == "arm64" && tsm.ProviderIs(client, tsm.ProviderCCA)
		},
		SE: func(context.Context) bool {
			b, err := os.ReadFile(SEGuestFlag)
			return runtime.GOARCH == "s390x" && err == nil && strings.TrimSpace(string(b)) == "1"
		},
		TPM: func(context.Context) bool {
			dev, ok := TPMDevice(env)
			if ok {
				log.Warn("TPM detected; it is not bound to a TEE", "device", dev)
			}
			return ok
		},
		SampleDevice: func(context.Context) bool {
			_, ok := env("ENABLE_SAMPLE_DEVICE")
			return ok
		},
	}
}

// TPMDevice returns the TPM device the tpm attester uses: AA_TPM_DEVICE when
// set (and present), else the first present of TPMDevices. An unparsable
// AA_TPM_AK_HANDLE also disables the tpm attester, as upstream.
func TPMDevice(env Env) (string, bool) {
	if h, ok := env("AA_TPM_AK_HANDLE"); ok {
		if _, err := ParseAKHandle(h); err != nil {
			return "", false
		}
	}
	if dev, ok := env("AA_TPM_DEVICE"); ok {
		return dev, exists(dev)
	}
	for _, dev := range TPMDevices {
		if exists(dev) {
			return dev, true
		}
	}
	return "", false
}

// DefaultAKHandle is the persistent handle of the tpm attester's AK.
const DefaultAKHandle uint32 = 0x81010002

// ParseAKHandle parses AA_TPM_AK_HANDLE: hex with an optional 0x prefix.
func ParseAKHandle(s string) (uint32, error) {
	v, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 32)
	if err != nil {
		return 0, err
	}
	return uint32(v), nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
