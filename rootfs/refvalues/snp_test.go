package refvalues

import (
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
)

// The vectors are virtee/sev-snp-measure's (tests/test_guest.py, commit
// 8f2b337e), computed with its fixtures: the last 4 KiB of edk2-stable202405
// OVMF builds (testdata/README.md). Kernel and initrd are empty files
// (/dev/null there), vCPU type EPYC-v4.
const ovmfAmdSevHash = "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"

func loadOVMF(t *testing.T, name string) *OVMF {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	o, err := ParseOVMF(b)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestSNPOVMFHash(t *testing.T) {
	o := loadOVMF(t, "ovmf_AmdSev_suffix.bin")
	g, err := NewGCTX(nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.NormalPages(o.GPA(), o.Data); err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(g.LD()); got != ovmfAmdSevHash {
		t.Fatalf("OVMF pages digest %s, want %s", got, ovmfAmdSevHash)
	}
}

func TestSNPLaunchDigestVectors(t *testing.T) {
	empty := NewSEVHashes(nil, nil, "")
	withCmdline := NewSEVHashes(nil, nil, "console=ttyS0 loglevel=7")
	tests := []struct {
		name     string
		ovmf     string
		seed     string
		vcpus    int
		features uint64
		hashes   *SEVHashes
		want     string
	}{
		{"seeded default", "ovmf_AmdSev_suffix.bin", ovmfAmdSevHash, 1, 0x21, &empty,
			"329c8ce0972ae52343b64d34a434a86f245dfd74f5ed7aae15d22efc78fb9683632b9b50e4e1d7fa41179ef98a7ef198"},
		{"seeded snp only", "ovmf_AmdSev_suffix.bin", ovmfAmdSevHash, 1, 0x1, &empty,
			"ddc5224521617a536ee7ce9dd6224d1b58a8d4fda1c741f3ac99fc4bfa04ba6e9fc98646d4a07a9079397fa3852819b5"},
		{"cmdline default", "ovmf_AmdSev_suffix.bin", "", 1, 0x21, &withCmdline,
			"803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"},
		{"cmdline snp only", "ovmf_AmdSev_suffix.bin", "", 1, 0x1, &withCmdline,
			"6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"},
		{"no kernel default", "ovmf_AmdSev_suffix.bin", "", 1, 0x21, nil,
			"e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b"},
		{"no kernel snp only", "ovmf_AmdSev_suffix.bin", "", 1, 0x1, nil,
			"19358ba9a7615534a9a1e2f0dfc29384dcd4dcb7062ff9c6013b26869a5fc6ecabe033c48dd6f6db5d6d76e7c5df632d"},
		{"4 vcpus default", "ovmf_AmdSev_suffix.bin", "", 4, 0x21, &empty,
			"4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942"},
		{"4 vcpus snp only", "ovmf_AmdSev_suffix.bin", "", 4, 0x1, &empty,
			"5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"},
		{"OvmfX64 no kernel default", "ovmf_OvmfX64_suffix.bin", "", 1, 0x21, nil,
			"28797ae0afaba4005a81e629acebfb59e6687949d6be44007cd5506823b0dd66f146aaae26ff291eed7b493d8a64c385"},
		{"OvmfX64 no kernel snp only", "ovmf_OvmfX64_suffix.bin", "", 1, 0x1, nil,
			"da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := SNPParams{OVMF: loadOVMF(t, tc.ovmf), VCPUs: tc.vcpus, VCPUSig: VCPUSigs["EPYC-v4"], GuestFeatures: tc.features, Hashes: tc.hashes}
			if tc.seed != "" {
				p.OVMFHash, _ = hex.DecodeString(tc.seed)
			}
			got, err := SNPLaunchDigest(p)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tc.want {
				t.Fatalf("launch digest %x, want %s", got, tc.want)
			}
		})
	}
}

func TestSNPLaunchDigestErrors(t *testing.T) {
	empty := NewSEVHashes(nil, nil, "")
	tests := []struct {
		name string
		p    SNPParams
	}{
		{"kernel with OvmfX64", SNPParams{OVMF: loadOVMF(t, "ovmf_OvmfX64_suffix.bin"), VCPUs: 1, Hashes: &empty}},
		{"zero vcpus", SNPParams{OVMF: loadOVMF(t, "ovmf_AmdSev_suffix.bin")}},
		{"short seed", SNPParams{OVMF: loadOVMF(t, "ovmf_AmdSev_suffix.bin"), VCPUs: 1, OVMFHash: []byte{1}}},
		{"nil OVMF", SNPParams{VCPUs: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := SNPLaunchDigest(tc.p); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("err = %v, want invalid argument", err)
			}
		})
	}
}

func TestParseOVMFBad(t *testing.T) {
	good, err := os.ReadFile(filepath.Join("testdata", "ovmf_AmdSev_suffix.bin"))
	if err != nil {
		t.Fatal(err)
	}
	corrupt := func(off int, b byte) []byte {
		c := append([]byte(nil), good...)
		c[len(c)+off] = b
		return c
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"not pages", good[:100]},
		{"footer table size too big", corrupt(-50, 0xff)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseOVMF(tc.data); err == nil {
				t.Fatal("ParseOVMF accepted a bad image")
			}
		})
	}
	// No footer GUID: parses, no sections (a plain firmware).
	o, err := ParseOVMF(make([]byte, 4096))
	if err != nil || len(o.Sections) != 0 {
		t.Fatalf("blank image: %v, %d sections", err, len(o.Sections))
	}
}

func TestCPUSig(t *testing.T) {
	for name, want := range map[string]uint32{"EPYC-v4": 0x800f12, "EPYC-Milan": 0xa00f11, "EPYC-Genoa": 0xa10f10, "EPYC-Turin": 0xb00f00} {
		if got := VCPUSigs[name]; got != want {
			t.Errorf("%s: %#x, want %#x", name, got, want)
		}
	}
}

func TestSNPLaunchDigestFiles(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := SNPLaunchDigestFiles(SNPInputs{OVMF: filepath.Join("testdata", "ovmf_AmdSev_suffix.bin"), VCPUs: 4, GuestFeatures: 0x1}, empty, empty, "")
	if err != nil {
		t.Fatal(err)
	}
	if want := "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"; hex.EncodeToString(got) != want {
		t.Fatalf("got %x, want %s", got, want)
	}
	// Non-empty kernel and initrd, 3 Genoa vCPUs: computed with
	// sev-snp-measure's calc_launch_digest at the same commit (not one of
	// its published vectors).
	kernel, initrd := filepath.Join(dir, "kernel"), filepath.Join(dir, "initrd")
	if err := os.WriteFile(kernel, []byte("kernel bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, []byte("initrd bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err = SNPLaunchDigestFiles(SNPInputs{OVMF: filepath.Join("testdata", "ovmf_AmdSev_suffix.bin"), VCPUs: 3, VCPUType: "EPYC-Genoa"}, kernel, initrd, "console=ttyS0 panic=-1")
	if err != nil {
		t.Fatal(err)
	}
	if want := "7db462b95ab729b1fe2fd54b93083059db8bc2aa69caaeb0ae53eec0b99247876449d7cf019f5bf59f9a3172c7e1db78"; hex.EncodeToString(got) != want {
		t.Fatalf("got %x, want %s", got, want)
	}
	if _, err := SNPLaunchDigestFiles(SNPInputs{OVMF: filepath.Join("testdata", "ovmf_AmdSev_suffix.bin"), VCPUType: "Skylake"}, empty, empty, ""); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("unknown vcpu type: %v", err)
	}
}
