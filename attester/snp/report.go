package snp

import (
	"encoding/binary"
	"fmt"

	"github.com/containerd/errdefs"
)

// ReportSize is the size of an SEV-SNP attestation report (ATT_REP_FW_LEN).
const ReportSize = 1184

// TCB is a TCB_VERSION as the sev crate serializes it. FMC exists on Turin
// only (null before).
type TCB struct {
	FMC        *uint8 `json:"fmc"`
	Bootloader uint8  `json:"bootloader"`
	TEE        uint8  `json:"tee"`
	SNP        uint8  `json:"snp"`
	Microcode  uint8  `json:"microcode"`
}

// Version is a firmware version (stored as build, minor, major).
type Version struct {
	Major uint8 `json:"major"`
	Minor uint8 `json:"minor"`
	Build uint8 `json:"build"`
}

// Signature holds the report's ECDSA P-384 signature components, each 72
// little-endian bytes as stored in the report.
type Signature struct {
	R [72]uint8 `json:"r"`
	S [72]uint8 `json:"s"`
}

// Report is an SEV-SNP attestation report in the JSON shape of the sev
// crate's AttestationReport (sev 6.3 and 7): field order, names, integer
// arrays for byte fields, null for fields the report version lacks. Go
// encodes fixed-size byte arrays as JSON integer arrays, as serde does.
type Report struct {
	Version          uint32    `json:"version"`
	GuestSVN         uint32    `json:"guest_svn"`
	Policy           uint64    `json:"policy"`
	FamilyID         [16]uint8 `json:"family_id"`
	ImageID          [16]uint8 `json:"image_id"`
	VMPL             uint32    `json:"vmpl"`
	SigAlgo          uint32    `json:"sig_algo"`
	CurrentTCB       TCB       `json:"current_tcb"`
	PlatInfo         uint64    `json:"plat_info"`
	KeyInfo          uint32    `json:"key_info"`
	ReportData       [64]uint8 `json:"report_data"`
	Measurement      [48]uint8 `json:"measurement"`
	HostData         [32]uint8 `json:"host_data"`
	IDKeyDigest      [48]uint8 `json:"id_key_digest"`
	AuthorKeyDigest  [48]uint8 `json:"author_key_digest"`
	ReportID         [32]uint8 `json:"report_id"`
	ReportIDMA       [32]uint8 `json:"report_id_ma"`
	ReportedTCB      TCB       `json:"reported_tcb"`
	CPUIDFamID       *uint8    `json:"cpuid_fam_id"`
	CPUIDModID       *uint8    `json:"cpuid_mod_id"`
	CPUIDStep        *uint8    `json:"cpuid_step"`
	ChipID           [64]uint8 `json:"chip_id"`
	CommittedTCB     TCB       `json:"committed_tcb"`
	Current          Version   `json:"current"`
	Committed        Version   `json:"committed"`
	LaunchTCB        TCB       `json:"launch_tcb"`
	LaunchMitVector  *uint64   `json:"launch_mit_vector"`
	CurrentMitVector *uint64   `json:"current_mit_vector"`
	Signature        Signature `json:"signature"`
}

// Generation is the EPYC generation, which decides the TCB byte layout.
type Generation int

// Generations.
const (
	Milan Generation = iota + 1
	Genoa
	Turin
)

func (g Generation) String() string {
	switch g {
	case Milan:
		return "Milan"
	case Genoa:
		return "Genoa"
	case Turin:
		return "Turin"
	}
	return fmt.Sprintf("Generation(%d)", int(g))
}

// IdentifyCPU maps CPUID family/model to a generation (sev crate rules).
func IdentifyCPU(family, model uint8) (Generation, error) {
	switch {
	case family == 0x19 && model <= 0x0F:
		return Milan, nil
	case family == 0x19 && (model >= 0x10 && model <= 0x1F || model >= 0xA0 && model <= 0xAF):
		return Genoa, nil
	case family == 0x1A && model <= 0x11:
		return Turin, nil
	}
	return 0, fmt.Errorf("snp report: CPUID family %#x model %#x is not a known SEV-SNP generation: %w", family, model, errdefs.ErrNotImplemented)
}

type variant int

const (
	v2 variant = iota
	v3         // versions 3 and 4
	v5         // version 5 and later
)

func variantOf(version uint32) (variant, error) {
	switch {
	case version < 2:
		return 0, fmt.Errorf("snp report: version %d: %w", version, errdefs.ErrNotImplemented)
	case version == 2:
		return v2, nil
	case version <= 4:
		return v3, nil
	}
	return v5, nil
}

// v2Generation tells Turin from Genoa for version 2 reports by CHIP_ID; a
// masked (all-zero) CHIP_ID cannot be told and is an error, as in the sev
// crate.
func v2Generation(chipID []byte) (Generation, error) {
	if allZero(chipID) {
		return 0, fmt.Errorf("snp report: version 2 report with masked CHIP_ID: generation unknown: %w", errdefs.ErrNotImplemented)
	}
	if allZero(chipID[8:]) {
		return Turin, nil
	}
	return Genoa, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func parseTCB(b []byte, g Generation) TCB {
	if g == Turin {
		fmc := b[0]
		return TCB{FMC: &fmc, Bootloader: b[1], TEE: b[2], SNP: b[3], Microcode: b[7]}
	}
	return TCB{Bootloader: b[0], TEE: b[1], SNP: b[6], Microcode: b[7]}
}

func putTCB(b []byte, t TCB, g Generation) {
	if g == Turin {
		if t.FMC != nil {
			b[0] = *t.FMC
		}
		b[1], b[2], b[3], b[7] = t.Bootloader, t.TEE, t.SNP, t.Microcode
		return
	}
	b[0], b[1], b[6], b[7] = t.Bootloader, t.TEE, t.SNP, t.Microcode
}

// Generation returns the report's CPU generation as the sev crate decides it.
func (r *Report) Generation() (Generation, error) {
	v, err := variantOf(r.Version)
	if err != nil {
		return 0, err
	}
	if v == v2 {
		return v2Generation(r.ChipID[:])
	}
	return IdentifyCPU(deref(r.CPUIDFamID), deref(r.CPUIDModID))
}

func deref[T any](p *T) T {
	var z T
	if p == nil {
		return z
	}
	return *p
}

func ptr[T any](v T) *T { return &v }

// ParseReport decodes a raw report as the sev crate's
// AttestationReport::from_bytes does. Reserved bytes are dropped.
func ParseReport(b []byte) (*Report, error) {
	if len(b) != ReportSize {
		return nil, fmt.Errorf("snp report: %d bytes, want %d: %w", len(b), ReportSize, errdefs.ErrInvalidArgument)
	}
	le := binary.LittleEndian
	r := &Report{Version: le.Uint32(b[0x00:])}
	v, err := variantOf(r.Version)
	if err != nil {
		return nil, err
	}
	var g Generation
	if v == v2 {
		g, err = v2Generation(b[0x1A0:0x1E0])
	} else {
		g, err = IdentifyCPU(b[0x188], b[0x189])
	}
	if err != nil {
		return nil, err
	}
	r.GuestSVN = le.Uint32(b[0x04:])
	r.Policy = le.Uint64(b[0x08:])
	copy(r.FamilyID[:], b[0x10:])
	copy(r.ImageID[:], b[0x20:])
	r.VMPL = le.Uint32(b[0x30:])
	r.SigAlgo = le.Uint32(b[0x34:])
	r.CurrentTCB = parseTCB(b[0x38:0x40], g)
	r.PlatInfo = le.Uint64(b[0x40:])
	r.KeyInfo = le.Uint32(b[0x48:])
	copy(r.ReportData[:], b[0x50:])
	copy(r.Measurement[:], b[0x90:])
	copy(r.HostData[:], b[0xC0:])
	copy(r.IDKeyDigest[:], b[0xE0:])
	copy(r.AuthorKeyDigest[:], b[0x110:])
	copy(r.ReportID[:], b[0x140:])
	copy(r.ReportIDMA[:], b[0x160:])
	r.ReportedTCB = parseTCB(b[0x180:0x188], g)
	if v != v2 {
		r.CPUIDFamID, r.CPUIDModID, r.CPUIDStep = ptr(b[0x188]), ptr(b[0x189]), ptr(b[0x18A])
	}
	copy(r.ChipID[:], b[0x1A0:])
	r.CommittedTCB = parseTCB(b[0x1E0:0x1E8], g)
	r.Current = Version{Build: b[0x1E8], Minor: b[0x1E9], Major: b[0x1EA]}
	r.Committed = Version{Build: b[0x1EC], Minor: b[0x1ED], Major: b[0x1EE]}
	r.LaunchTCB = parseTCB(b[0x1F0:0x1F8], g)
	if v == v5 {
		r.LaunchMitVector, r.CurrentMitVector = ptr(le.Uint64(b[0x1F8:])), ptr(le.Uint64(b[0x200:]))
	}
	copy(r.Signature.R[:], b[0x2A0:])
	copy(r.Signature.S[:], b[0x2A0+72:])
	return r, nil
}

// Bytes encodes the report as the sev crate's write_bytes does (reserved
// bytes zero). For a report parsed from hardware whose reserved bytes are
// zero this reproduces the signed bytes exactly.
func (r *Report) Bytes() ([]byte, error) {
	v, err := variantOf(r.Version)
	if err != nil {
		return nil, err
	}
	g, err := r.Generation()
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	b := make([]byte, ReportSize)
	le.PutUint32(b[0x00:], r.Version)
	le.PutUint32(b[0x04:], r.GuestSVN)
	le.PutUint64(b[0x08:], r.Policy)
	copy(b[0x10:], r.FamilyID[:])
	copy(b[0x20:], r.ImageID[:])
	le.PutUint32(b[0x30:], r.VMPL)
	le.PutUint32(b[0x34:], r.SigAlgo)
	putTCB(b[0x38:0x40], r.CurrentTCB, g)
	le.PutUint64(b[0x40:], r.PlatInfo)
	le.PutUint32(b[0x48:], r.KeyInfo)
	copy(b[0x50:], r.ReportData[:])
	copy(b[0x90:], r.Measurement[:])
	copy(b[0xC0:], r.HostData[:])
	copy(b[0xE0:], r.IDKeyDigest[:])
	copy(b[0x110:], r.AuthorKeyDigest[:])
	copy(b[0x140:], r.ReportID[:])
	copy(b[0x160:], r.ReportIDMA[:])
	putTCB(b[0x180:0x188], r.ReportedTCB, g)
	if v != v2 {
		b[0x188], b[0x189], b[0x18A] = deref(r.CPUIDFamID), deref(r.CPUIDModID), deref(r.CPUIDStep)
	}
	copy(b[0x1A0:], r.ChipID[:])
	putTCB(b[0x1E0:0x1E8], r.CommittedTCB, g)
	b[0x1E8], b[0x1E9], b[0x1EA] = r.Current.Build, r.Current.Minor, r.Current.Major
	b[0x1EC], b[0x1ED], b[0x1EE] = r.Committed.Build, r.Committed.Minor, r.Committed.Major
	putTCB(b[0x1F0:0x1F8], r.LaunchTCB, g)
	if v == v5 {
		le.PutUint64(b[0x1F8:], deref(r.LaunchMitVector))
		le.PutUint64(b[0x200:], deref(r.CurrentMitVector))
	}
	copy(b[0x2A0:], r.Signature.R[:])
	copy(b[0x2A0+72:], r.Signature.S[:])
	return b, nil
}
