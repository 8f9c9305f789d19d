package refvalues

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cova-project/cova/attester/tpm"
	"github.com/cova-project/cova/test/swtpm"
)

func doc(alg string) []byte {
	return []byte("version = \"0.1.0\"\nalgorithm = \"" + alg + "\"\n\n[data]\n\"aa.toml\" = '''\n[eventlog_config]\nenable_eventlog = true\n'''\n")
}

func TestFromInitdata(t *testing.T) {
	tests := []struct {
		alg    string
		digest func([]byte) []byte
	}{
		{"sha256", func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }},
		{"sha384", func(b []byte) []byte { s := sha512.Sum384(b); return s[:] }},
		{"sha512", func(b []byte) []byte { s := sha512.Sum512(b); return s[:] }},
	}
	for _, tc := range tests {
		t.Run(tc.alg, func(t *testing.T) {
			b := doc(tc.alg)
			id, err := FromInitdata(b)
			if err != nil {
				t.Fatal(err)
			}
			d := tc.digest(b)
			if !bytes.Equal(id.Digest, d) || id.Algorithm != tc.alg {
				t.Fatalf("digest %x (%s), want %x over the exact bytes", id.Digest, id.Algorithm, d)
			}
			// HOST_DATA: the first 32 bytes; MRCONFIGID: 48, zero padded.
			if len(id.HostData) != 32 || !bytes.Equal(id.HostData, d[:32]) {
				t.Errorf("HOST_DATA %x", id.HostData)
			}
			wantCfg := make([]byte, 48)
			copy(wantCfg, d)
			if !bytes.Equal(id.MRConfigID, wantCfg) {
				t.Errorf("MRCONFIGID %x, want %x", id.MRConfigID, wantCfg)
			}
			if tc.alg != "sha256" {
				if id.PCR8 != nil {
					t.Errorf("PCR 8 %x for a %s document; the guest cannot bind it", id.PCR8, tc.alg)
				}
				return
			}
			want := sha256.Sum256(append(make([]byte, 32), d...))
			if !bytes.Equal(id.PCR8, want[:]) {
				t.Errorf("PCR 8 %x, want %x", id.PCR8, want)
			}
		})
	}
}

func TestFromInitdataInvalid(t *testing.T) {
	for name, b := range map[string][]byte{
		"bad version":   bytes.Replace(doc("sha256"), []byte("0.1.0"), []byte("0.2.0"), 1),
		"bad algorithm": doc("sha-256"),
		"not toml":      []byte("version = "),
		"no data":       []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n"),
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := FromInitdata(b); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("err = %v, want invalid argument", err)
			}
		})
	}
}

// TestPCR8MatchesSWTPM extends a real swtpm's PCR 8 with the tpm
// attester's BindInitdata (what the agent does at boot) and compares.
func TestPCR8MatchesSWTPM(t *testing.T) {
	dial := swtpm.Start(t)
	id, err := FromInitdata(doc("sha256"))
	if err != nil {
		t.Fatal(err)
	}
	a := tpm.New(tpm.Config{Open: func() (transport.TPMCloser, error) {
		c, err := dial()
		if err != nil {
			return nil, err
		}
		return tpm.StreamTransport(c), nil
	}})
	ctx := context.Background()
	if err := a.BindInitdata(ctx, id.Digest); err != nil {
		t.Fatal(err)
	}
	got, err := a.Measurement(ctx, InitdataPCR)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, id.PCR8) {
		t.Fatalf("swtpm PCR 8 = %x, refvalues predicts %x", got, id.PCR8)
	}
}

// PCRs read after a SeaBIOS direct boot of the Debian cloud kernel in test/vm
// (QEMU 7.2 q35, SeaBIOS 1.16.2, 512 MiB).
var bootPCRs = map[int]string{
	0:  "e21b703ee69c77476bccb43ec0336a9a1b2914b378944f7b00a10214ca8fea93",
	1:  "85af72fcfeedb1db195fbf081e0cc9cb43b1efca9d98396710a2c7a3ce34fa80",
	2:  "22c81553ac1b2c475f081ba0149354f68ff6123ac1bae1742006f894d2269241",
	3:  "e21b703ee69c77476bccb43ec0336a9a1b2914b378944f7b00a10214ca8fea93",
	4:  "1eb9aa21337cc1fa31ce5f56900d7bf59b9dda366823095aed06544caa2557ca",
	5:  "e21b703ee69c77476bccb43ec0336a9a1b2914b378944f7b00a10214ca8fea93",
	6:  "e21b703ee69c77476bccb43ec0336a9a1b2914b378944f7b00a10214ca8fea93",
	7:  "e21b703ee69c77476bccb43ec0336a9a1b2914b378944f7b00a10214ca8fea93",
	10: "b5484f4f571061220b432d7d6e44f95c9252d6ddf8db81de663b571c751d2ef2",
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSeaBIOSPCRs(t *testing.T) {
	if got := hex.EncodeToString(SeaBIOSSeparatorPCR()); got != bootPCRs[0] {
		t.Fatalf("separator PCR %s, want %s", got, bootPCRs[0])
	}
	early := make([][]byte, 10)
	for i := range 8 {
		early[i] = unhex(t, bootPCRs[i])
	}
	early[8], early[9] = make([]byte, 32), make([]byte, 32)
	p10, err := IMABootAggregatePCR(early)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(p10) != bootPCRs[10] {
		t.Fatalf("IMA PCR 10 %x, the boot gave %s", p10, bootPCRs[10])
	}
	if _, err := IMABootAggregatePCR(early[:9]); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("9 PCRs: %v", err)
	}
}

func TestCompute(t *testing.T) {
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	if err := os.WriteFile(kernel, []byte("kernel bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, []byte("initrd bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	firmware := map[int][]byte{1: unhex(t, bootPCRs[1]), 2: unhex(t, bootPCRs[2]), 4: unhex(t, bootPCRs[4])}
	v, err := Compute(Inputs{Kernel: kernel, Initrd: initrd, Cmdline: "console=ttyS0", Initdata: doc("sha256"), Firmware: FirmwareSeaBIOS, TPMPCRs: firmware})
	if err != nil {
		t.Fatal(err)
	}
	s := v.Sample()
	h := func(b string) string { d := sha256.Sum256([]byte(b)); return hex.EncodeToString(d[:]) }
	h384 := func(b string) string { d := sha512.Sum384([]byte(b)); return hex.EncodeToString(d[:]) }
	id, _ := FromInitdata(doc("sha256"))
	want := map[string]string{
		"kernel_sha256": h("kernel bytes"), "kernel_sha384": h384("kernel bytes"),
		"initrd_sha256": h("initrd bytes"), "initrd_sha384": h384("initrd bytes"),
		"cmdline_sha256": h("console=ttyS0"), "cmdline_sha384": h384("console=ttyS0"),
		"init_data_digest": hex.EncodeToString(id.Digest),
		"snp_init_data":    hex.EncodeToString(id.HostData),
		"tdx_init_data":    hex.EncodeToString(id.MRConfigID),
		"tpm_init_data":    hex.EncodeToString(id.PCR8),
		"tpm_pcr08":        hex.EncodeToString(id.PCR8),
	}
	for i, p := range bootPCRs {
		want[TPMPCRName(i)] = p
	}
	for k, w := range want {
		if got := s[k]; len(got) != 1 || got[0] != w {
			t.Errorf("%s = %v, want [%s]", k, got, w)
		}
	}
	if len(s) != len(want) {
		t.Errorf("sample has %d names, want %d: %v", len(s), len(want), s)
	}

	// The RVPS message carries the same provenance.
	msg, err := v.RVPSMessage()
	if err != nil {
		t.Fatal(err)
	}
	var m Message
	if err := json.Unmarshal(msg, &m); err != nil || m.Version != "0.1.0" || m.Type != "sample" {
		t.Fatalf("message %s: %v", msg, err)
	}
	raw, err := base64.StdEncoding.DecodeString(m.Payload)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string][]string
	if err := json.Unmarshal(raw, &back); err != nil || len(back) != len(s) || back["tpm_pcr08"][0] != want["tpm_pcr08"] {
		t.Fatalf("payload %s: %v", raw, err)
	}
}

func TestComputeErrors(t *testing.T) {
	tests := []struct {
		name string
		in   Inputs
		want string
	}{
		{"missing kernel", Inputs{Kernel: "/nonexistent/vmlinuz"}, "kernel"},
		{"pcr out of range", Inputs{TPMPCRs: map[int][]byte{24: make([]byte, 32)}}, "out of range"},
		{"pcr not sha256", Inputs{TPMPCRs: map[int][]byte{1: make([]byte, 20)}}, "SHA-256"},
		{"pcr 8 disagrees with initdata", Inputs{Initdata: doc("sha256"), TPMPCRs: map[int][]byte{8: make([]byte, 32)}}, "initdata binding"},
		{"pcr 0 disagrees with seabios", Inputs{Firmware: FirmwareSeaBIOS, TPMPCRs: map[int][]byte{0: make([]byte, 32)}}, "SeaBIOS"},
		{"unknown firmware", Inputs{Firmware: "ovmf"}, "firmware"},
		{"snp without kernel", Inputs{SNP: &SNPInputs{OVMF: "x"}}, "kernel and initrd"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compute(tc.in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestComputeSeaBIOSWithoutFirmwarePCRs(t *testing.T) {
	v, err := Compute(Inputs{Firmware: FirmwareSeaBIOS})
	if err != nil {
		t.Fatal(err)
	}
	s := v.Sample()
	for _, i := range SeaBIOSSeparatorOnlyPCRs {
		if s[TPMPCRName(i)][0] != bootPCRs[0] {
			t.Errorf("PCR %d missing or wrong: %v", i, s[TPMPCRName(i)])
		}
	}
	if _, ok := s["tpm_pcr10"]; ok {
		t.Error("PCR 10 predicted without PCRs 1, 2 and 4")
	}
}
