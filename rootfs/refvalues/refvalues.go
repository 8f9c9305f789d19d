// Package refvalues computes, from the artifacts of a Cova guest (kernel,
// initrd, kernel command line, initdata document, firmware), the reference
// values a verifier compares evidence against, and encodes them the way
// trustee's Reference Value Provider Service (RVPS) ingests them: a "sample"
// provenance, a JSON object mapping each reference value name to a list of
// accepted values, optionally wrapped in an RVPS message
// {"version":"0.1.0","type":"sample","payload":"<base64 of the provenance>"}.
//
// Names. Where trustee's policies query a value, its name is used:
// snp_launch_measurement (input.snp.measurement) and tpm_pcrNN (two digits,
// as the default policy's tpm_pcr11 against the tpm claim pcr11). Trustee
// has no reference value for the initdata binding fields: its verifiers
// check them against the init-data the guest sends and expose them as the
// claim init_data of each TEE; Cova names them <tee>_init_data after that
// claim (snp_init_data = HOST_DATA, tdx_init_data = MRCONFIGID,
// tpm_init_data = PCR 8). Trustee has no names for plain file digests
// either (its TDX values tdvfkernel and tdvfkernelparams are the firmware's
// PE/UTF-16 measurements, not file digests), so Cova uses
// kernel_sha256/_sha384, initrd_…, cmdline_… and init_data_digest.
//
// vTPM PCRs depend on the firmware: tpm.go records what a SeaBIOS direct
// boot measures (nothing of the image), ovmf.go what an OVMF direct boot
// measures (the kernel in PCR 4; the command line and the initrd in PCR 9)
// and how to predict it, with PE Authenticode digests from pe.go.
package refvalues

import (
	"crypto"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester/initdata"
	"github.com/cova-project/cova/rootfs"
)

// Binding field sizes (coco-protocols §5.4): the initdata digest is padded
// with zeros or truncated to fit.
const (
	HostDataSize   = 32 // SEV-SNP HOST_DATA
	MRConfigIDSize = 48 // TDX MRCONFIGID
	// InitdataPCR is the vTPM PCR the guest extends with the initdata
	// digest (sha256 documents only).
	InitdataPCR = 8
)

// Initdata are the values derived from one initdata document.
type Initdata struct {
	// Algorithm is the document's algorithm (sha256, sha384, sha512).
	Algorithm string
	// Digest is Algorithm over the exact TOML bytes.
	Digest []byte
	// HostData is the SEV-SNP HOST_DATA the host sets at launch (Digest
	// fitted to 32 bytes).
	HostData []byte
	// MRConfigID is the TDX MRCONFIGID (Digest fitted to 48 bytes).
	MRConfigID []byte
	// PCR8 is the vTPM PCR 8 after the guest extended Digest into a zero
	// PCR: SHA-256(0³² ‖ Digest). Nil unless Algorithm is sha256: the
	// guest's tpm binding accepts only 32-byte digests and refuses to
	// boot otherwise.
	PCR8 []byte
}

// FromInitdata parses an initdata document (as initdata.Parse does in the
// guest: same checks, digest over the exact bytes) and derives its binding
// values.
func FromInitdata(toml []byte) (Initdata, error) {
	d, err := initdata.Parse(toml)
	if err != nil {
		return Initdata{}, fmt.Errorf("initdata: %w", err)
	}
	out := Initdata{
		Algorithm:  d.Algorithm,
		Digest:     d.Digest,
		HostData:   fit(d.Digest, HostDataSize),
		MRConfigID: fit(d.Digest, MRConfigIDSize),
	}
	if d.Hash == crypto.SHA256 {
		out.PCR8 = ExtendPCR(make([]byte, sha256.Size), d.Digest)
	}
	return out, nil
}

// fit zero-pads or truncates d to n bytes (trustee's regularize_data).
func fit(d []byte, n int) []byte {
	out := make([]byte, n)
	copy(out, d)
	return out
}

// ExtendPCR returns the SHA-256 PCR value after extending pcr with digest:
// SHA-256(pcr ‖ digest).
func ExtendPCR(pcr, digest []byte) []byte {
	h := sha256.New()
	h.Write(pcr)
	h.Write(digest)
	return h.Sum(nil)
}

// Inputs are the artifacts to compute reference values for. Empty fields
// are skipped.
type Inputs struct {
	// Kernel and Initrd are file paths.
	Kernel, Initrd string
	// Cmdline is the kernel command line exactly as passed (-append);
	// HasCmdline tells an empty command line from none.
	Cmdline    string
	HasCmdline bool
	// Initdata is the initdata TOML document, exactly as delivered.
	Initdata []byte
	// TPMPCRs are vTPM PCR values known for the platform (index → value),
	// e.g. PCRs 1, 2 and 4 read after a reference boot of the same QEMU
	// machine and firmware; they are emitted as tpm_pcrNN.
	TPMPCRs map[int][]byte
	// Firmware, when FirmwareSeaBIOS, adds the PCRs a SeaBIOS direct boot
	// determines (see tpm.go): 0, 3, 5, 6, 7, and 10 once 1, 2 and 4 are
	// given in TPMPCRs. FirmwareOVMF adds those of an OVMF direct boot
	// (see ovmf.go): 2-7 and 9, which bind Kernel, Initrd and Cmdline, and
	// 10 once 0 and 1 are given; it needs Kernel, Initrd, Cmdline and
	// Memory.
	Firmware string
	// Memory is the guest's RAM in bytes (QEMU -m) for FirmwareOVMF: QEMU
	// writes the initrd's load address, which depends on it, into the
	// kernel image the firmware measures.
	Memory uint64
	// SNP, when set, computes the SEV-SNP launch measurement of a direct
	// boot of Kernel, Initrd and Cmdline with SNP.OVMF.
	SNP *SNPInputs
}

// Values are the computed reference values.
type Values struct {
	// Kernel, Initrd and Cmdline are hex SHA-256 and SHA-384 digests.
	Kernel, Initrd, Cmdline *rootfs.Digests
	Initdata                *Initdata
	TPMPCRs                 map[int][]byte
	// SNPLaunchMeasurement is the SEV-SNP launch digest (48 bytes).
	SNPLaunchMeasurement []byte
}

// Compute reads the artifacts and derives every value they determine.
func Compute(in Inputs) (Values, error) {
	var v Values
	if in.Kernel != "" {
		d, err := rootfs.DigestFile(in.Kernel)
		if err != nil {
			return Values{}, fmt.Errorf("kernel: %w", err)
		}
		v.Kernel = &d
	}
	if in.Initrd != "" {
		d, err := rootfs.DigestFile(in.Initrd)
		if err != nil {
			return Values{}, fmt.Errorf("initrd: %w", err)
		}
		v.Initrd = &d
	}
	if in.HasCmdline || in.Cmdline != "" {
		d, err := rootfs.DigestReader(strings.NewReader(in.Cmdline))
		if err != nil {
			return Values{}, fmt.Errorf("cmdline: %w", err)
		}
		v.Cmdline = &d
	}
	if in.Initdata != nil {
		id, err := FromInitdata(in.Initdata)
		if err != nil {
			return Values{}, err
		}
		v.Initdata = &id
	}
	for i, p := range in.TPMPCRs {
		if i < 0 || i > 23 {
			return Values{}, fmt.Errorf("tpm pcr %d: index out of range 0..23: %w", i, errdefs.ErrInvalidArgument)
		}
		if len(p) != sha256.Size {
			return Values{}, fmt.Errorf("tpm pcr %d: %d bytes, want a SHA-256 value: %w", i, len(p), errdefs.ErrInvalidArgument)
		}
		if v.TPMPCRs == nil {
			v.TPMPCRs = map[int][]byte{}
		}
		v.TPMPCRs[i] = p
	}
	if in.Firmware != "" {
		if v.TPMPCRs == nil {
			v.TPMPCRs = map[int][]byte{}
		}
		if err := firmwarePCRs(in, v.TPMPCRs); err != nil {
			return Values{}, err
		}
	}
	if v.Initdata != nil && v.Initdata.PCR8 != nil {
		if p, ok := v.TPMPCRs[InitdataPCR]; ok && !slices.Equal(p, v.Initdata.PCR8) {
			return Values{}, fmt.Errorf("tpm pcr %d: given %x, but the initdata binding gives %x: %w", InitdataPCR, p, v.Initdata.PCR8, errdefs.ErrInvalidArgument)
		}
		if v.TPMPCRs == nil {
			v.TPMPCRs = map[int][]byte{}
		}
		v.TPMPCRs[InitdataPCR] = v.Initdata.PCR8
	}
	if in.SNP != nil {
		if in.Kernel == "" || in.Initrd == "" {
			return Values{}, fmt.Errorf("snp launch measurement: kernel and initrd are required: %w", errdefs.ErrInvalidArgument)
		}
		m, err := SNPLaunchDigestFiles(*in.SNP, in.Kernel, in.Initrd, in.Cmdline)
		if err != nil {
			return Values{}, err
		}
		v.SNPLaunchMeasurement = m
	}
	return v, nil
}

// Reference value names (see the package comment for which are trustee's).
const (
	NameSNPLaunchMeasurement = "snp_launch_measurement" // trustee
	NameSNPInitdata          = "snp_init_data"          // Cova: claim snp.init_data (HOST_DATA)
	NameTDXInitdata          = "tdx_init_data"          // Cova: claim tdx.init_data (MRCONFIGID)
	NameTPMInitdata          = "tpm_init_data"          // Cova: claim tpm.init_data (PCR 8)
	NameInitdataDigest       = "init_data_digest"       // Cova
)

// TPMPCRName is the reference value name of a vTPM PCR: tpm_pcrNN.
func TPMPCRName(i int) string { return fmt.Sprintf("tpm_pcr%02d", i) }

// Sample returns the values as an RVPS sample provenance: name → list of
// accepted values (hex strings).
func (v Values) Sample() map[string][]string {
	out := map[string][]string{}
	put := func(name string, b []byte) {
		if b != nil {
			out[name] = []string{hex.EncodeToString(b)}
		}
	}
	for _, a := range []struct {
		name string
		d    *rootfs.Digests
	}{{"kernel", v.Kernel}, {"initrd", v.Initrd}, {"cmdline", v.Cmdline}} {
		if a.d != nil {
			out[a.name+"_sha256"] = []string{a.d.SHA256}
			out[a.name+"_sha384"] = []string{a.d.SHA384}
		}
	}
	if id := v.Initdata; id != nil {
		put(NameInitdataDigest, id.Digest)
		put(NameSNPInitdata, id.HostData)
		put(NameTDXInitdata, id.MRConfigID)
		put(NameTPMInitdata, id.PCR8)
	}
	for i, p := range v.TPMPCRs {
		put(TPMPCRName(i), p)
	}
	put(NameSNPLaunchMeasurement, v.SNPLaunchMeasurement)
	return out
}

// SampleJSON is the sample provenance as indented JSON (keys sorted).
func (v Values) SampleJSON() ([]byte, error) {
	return json.MarshalIndent(v.Sample(), "", "  ")
}

// Message is an RVPS message: the provenance wrapped as trustee's
// rvps::Message (what rvps-tool register and the RVPS API take).
type Message struct {
	Version string `json:"version"`
	Type    string `json:"type"`
	Payload string `json:"payload"`
}

// RVPSMessage wraps the sample provenance in an RVPS message of type
// "sample" (payload = standard base64 of the provenance JSON).
func (v Values) RVPSMessage() ([]byte, error) {
	p, err := json.Marshal(v.Sample())
	if err != nil {
		return nil, err
	}
	return json.MarshalIndent(Message{Version: "0.1.0", Type: "sample", Payload: base64.StdEncoding.EncodeToString(p)}, "", "  ")
}
