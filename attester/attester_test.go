package attester

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containerd/errdefs"
)

func TestFitReportData(t *testing.T) {
	d48 := bytes.Repeat([]byte{0xab}, 48)
	d64 := bytes.Repeat([]byte{0xcd}, 64)
	d65 := bytes.Repeat([]byte{0xef}, 65)
	pad := func(b []byte, n int) []byte { o := make([]byte, n); copy(o, b); return o }
	for _, tc := range []struct {
		name    string
		tee     Tee
		in      []byte
		want    []byte
		wantErr error
	}{
		{"tdx-pads-48-to-64", TeeTDX, d48, pad(d48, 64), nil},
		{"snp-keeps-64", TeeSNP, d64, d64, nil},
		{"snp-rejects-65", TeeSNP, d65, nil, errdefs.ErrInvalidArgument},
		{"cca-pads-empty", TeeCCA, nil, make([]byte, 64), nil},
		{"se-rejects-65", TeeSE, d65, nil, errdefs.ErrInvalidArgument},
		{"tpm-truncates-48-to-32", TeeTPM, d48, d48[:32], nil},
		{"tpm-pads-16-to-32", TeeTPM, d48[:16], pad(d48[:16], 32), nil},
		{"nvidia-first-32", TeeNvidia, d64, d64[:32], nil},
		{"azure-as-given", TeeAzSNPvTPM, d48, d48, nil},
		{"sample-as-given", TeeSample, d65, d65, nil},
		{"unknown-tee", Tee("foo"), d48, nil, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FitReportData(tc.tee, tc.in)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %x, want %x", got, tc.want)
			}
			if len(got) > 0 && len(tc.in) > 0 && &got[0] == &tc.in[0] {
				t.Fatal("result aliases the input")
			}
		})
	}
}

func TestParseTee(t *testing.T) {
	for _, name := range []string{"tdx", "snp", "az-snp-vtpm", "az-tdx-vtpm", "cca", "se", "tpm", "sample", "sampledevice", "sev"} {
		t.Run(name, func(t *testing.T) {
			got, err := ParseTee(name)
			if err != nil || got.String() != name {
				t.Fatalf("ParseTee(%q) = %q, %v", name, got, err)
			}
		})
	}
	t.Run("azsnpvtpm-old-spelling", func(t *testing.T) {
		if _, err := ParseTee("azsnpvtpm"); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("err = %v", err)
		}
	})
}

func yes(context.Context) bool { return true }
func no(context.Context) bool  { return false }

func TestDetectOrder(t *testing.T) {
	all := Probes{TDX: yes, SGX: yes, AzTDXvTPM: yes, AzSNPvTPM: yes, SNP: yes, CSV: yes, CCA: yes, SE: yes, TPM: yes}
	for _, tc := range []struct {
		name string
		p    Probes
		want []Tee
	}{
		{"nothing", Probes{}, []Tee{TeeSample}},
		{"all-false", Probes{TDX: no, SNP: no, TPM: no}, []Tee{TeeSample}},
		{"everything", all, []Tee{TeeTDX, TeeSGX, TeeAzTDXvTPM, TeeAzSNPvTPM, TeeSNP, TeeCSV, TeeCCA, TeeSE, TeeTPM, TeeSample}},
		{"azure-snp-before-snp", Probes{SNP: yes, AzSNPvTPM: yes}, []Tee{TeeAzSNPvTPM, TeeSNP, TeeSample}},
		{"tpm-after-cca", Probes{TPM: yes, CCA: yes}, []Tee{TeeCCA, TeeTPM, TeeSample}},
		{"tpm-alone", Probes{TPM: yes}, []Tee{TeeTPM, TeeSample}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Detect(context.Background(), tc.p); !slices.Equal(got, tc.want) {
				t.Fatalf("Detect = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDetectAdditional(t *testing.T) {
	got := DetectAdditional(context.Background(), Probes{SampleDevice: yes, HygonDCU: yes, Nvidia: no})
	if want := []Tee{TeeSampleDevice, TeeHygonDCU}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func mapEnv(m map[string]string) Env {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestDefaultProbesEnv(t *testing.T) {
	dev := filepath.Join(t.TempDir(), "tpm")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		env        map[string]string
		wantTPM    bool
		wantDevice bool
	}{
		{"tpm-from-env", map[string]string{"AA_TPM_DEVICE": dev}, true, false},
		{"tpm-env-missing-device", map[string]string{"AA_TPM_DEVICE": dev + "-nope"}, false, false},
		{"bad-ak-handle", map[string]string{"AA_TPM_DEVICE": dev, "AA_TPM_AK_HANDLE": "zz"}, false, false},
		{"good-ak-handle", map[string]string{"AA_TPM_DEVICE": dev, "AA_TPM_AK_HANDLE": "0x81000003"}, true, false},
		{"sample-device-empty-value", map[string]string{"ENABLE_SAMPLE_DEVICE": "", "AA_TPM_DEVICE": dev + "-nope"}, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultProbes(nil, mapEnv(tc.env), nil, nil)
			if got := p.TPM(context.Background()); got != tc.wantTPM {
				t.Fatalf("TPM probe = %v, want %v", got, tc.wantTPM)
			}
			if got := p.SampleDevice(context.Background()); got != tc.wantDevice {
				t.Fatalf("SampleDevice probe = %v, want %v", got, tc.wantDevice)
			}
			if p.TDX(context.Background()) && !exists(TDXGuestDevice) {
				t.Fatal("TDX probe true without configfs-tsm client and device")
			}
		})
	}
}

func TestParseAKHandle(t *testing.T) {
	for in, want := range map[string]uint32{"0x81010002": DefaultAKHandle, "81000003": 0x81000003} {
		if got, err := ParseAKHandle(in); err != nil || got != want {
			t.Fatalf("ParseAKHandle(%q) = %#x, %v", in, got, err)
		}
	}
	if _, err := ParseAKHandle("0x1ffffffff"); err == nil {
		t.Fatal("33-bit handle accepted")
	}
}

type fakeBinder struct {
	want []byte
}

func (fakeBinder) Tee() Tee { return TeeSNP }
func (fakeBinder) Evidence(context.Context, []byte) ([]byte, error) {
	return nil, nil
}
func (f fakeBinder) BindInitdata(_ context.Context, d []byte) error {
	if !bytes.Equal(FitDigest(d, 32), f.want) {
		return fmt.Errorf("host data: %w", ErrInitdataMismatch)
	}
	return nil
}

type plain struct{}

func (plain) Tee() Tee                                         { return TeeSample }
func (plain) Evidence(context.Context, []byte) ([]byte, error) { return nil, nil }

func TestBindInitdata(t *testing.T) {
	good := bytes.Repeat([]byte{1}, 32)
	for _, tc := range []struct {
		name      string
		a         Attester
		digest    []byte
		wantBound bool
		wantErr   error
	}{
		{"match", fakeBinder{good}, good, true, nil},
		{"mismatch", fakeBinder{good}, bytes.Repeat([]byte{2}, 32), false, ErrInitdataMismatch},
		{"unsupported", plain{}, good, false, nil},
		{"empty-digest", fakeBinder{good}, nil, false, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bound, err := BindInitdata(context.Background(), tc.a, tc.digest)
			if bound != tc.wantBound || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("BindInitdata = %v, %v; want %v, %v", bound, err, tc.wantBound, tc.wantErr)
			}
			if tc.wantErr == ErrInitdataMismatch && (!IsMismatch(err) || !errors.Is(err, errdefs.ErrFailedPrecondition)) {
				t.Fatalf("mismatch not classified: %v", err)
			}
		})
	}
}

type measurer struct{ plain }

func (measurer) Extend(context.Context, uint64, []byte) error        { return nil }
func (measurer) Measurement(context.Context, uint64) ([]byte, error) { return nil, nil }
func (measurer) Register(uint64) uint32                              { return 17 }
func (measurer) HashAlg() crypto.Hash                                { return crypto.SHA256 }

func TestAsRuntimeMeasurer(t *testing.T) {
	if _, err := AsRuntimeMeasurer(plain{}); !errors.Is(err, ErrNotSupported) || !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Fatalf("plain: err = %v", err)
	}
	if m, err := AsRuntimeMeasurer(measurer{}); err != nil || m.Register(17) != 17 {
		t.Fatalf("measurer: %v, %v", m, err)
	}
}

func TestAzureProbes(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		tee        Tee
		err        error
		wantTDX    bool
		wantSNP    bool
		wantDetect []Tee
	}{
		{"az-snp", TeeAzSNPvTPM, nil, false, true, []Tee{TeeAzSNPvTPM, TeeSNP, TeeSample}},
		{"az-tdx", TeeAzTDXvTPM, nil, true, false, []Tee{TeeAzTDXvTPM, TeeSNP, TeeSample}},
		{"no-hcl-report", "", errors.New("NV index 0x1400001: not defined"), false, false, []Tee{TeeSNP, TeeSample}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			tdx, snp := AzureProbes(func(context.Context) (Tee, error) { calls++; return tc.tee, tc.err }, nil)
			if tdx(ctx) != tc.wantTDX || snp(ctx) != tc.wantSNP || tdx(ctx) != tc.wantTDX {
				t.Fatal("probe results")
			}
			got := Detect(ctx, Probes{AzTDXvTPM: tdx, AzSNPvTPM: snp, SNP: yes})
			if !slices.Equal(got, tc.wantDetect) {
				t.Fatalf("Detect = %v, want %v", got, tc.wantDetect)
			}
			if calls != 1 {
				t.Fatalf("vTPM read %d times, want once", calls)
			}
		})
	}
	if tdx, snp := AzureProbes(nil, nil); tdx != nil || snp != nil {
		t.Fatal("nil AzureProbe must give nil probes")
	}
	p := DefaultProbes(nil, mapEnv(nil), func(context.Context) (Tee, error) { return TeeAzTDXvTPM, nil }, nil)
	if !p.AzTDXvTPM(ctx) || p.AzSNPvTPM(ctx) {
		t.Fatal("DefaultProbes does not use the Azure probe")
	}
}
