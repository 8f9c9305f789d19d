package refvalues

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/containerd/errdefs"
)

// SEV-SNP launch measurement of a QEMU direct boot (OVMF from edk2's
// AmdSevX64 build with kernel hashes, plus -kernel/-initrd/-append), as the
// AMD SEV-SNP firmware computes it while QEMU adds the guest's pages
// (SNP_LAUNCH_UPDATE) and as virtee/sev-snp-measure predicts it:
//
//  1. the OVMF image, one normal page at a time, mapped to end at 4 GiB;
//  2. the sections OVMF's SEV metadata declares, in order: SNP_SEC_MEM
//     (zero pages), SNP_SECRETS, CPUID, SNP_KERNEL_HASHES (the page holding
//     QEMU's SEV hash table of kernel, initrd and command line, or zero
//     pages without a kernel), SVSM_CAA (zero pages);
//  3. one VMSA page per vCPU: the boot processor at the reset vector, the
//     others at OVMF's SEV-ES AP reset address.
//
// Each page extends the 48-byte launch digest: LD = SHA-384(PAGE_INFO), where
// PAGE_INFO (SNP firmware ABI, "Layout of the PAGE_INFO structure") is the
// current LD, the page's contents digest, and its length, type and GPA.
// Only QEMU's register state is modelled (not EC2's or GCE's), and neither
// SVSM mode nor SEV/SEV-ES.

// Page types of PAGE_INFO.
const (
	pageNormal     = 0x01
	pageVMSA       = 0x02
	pageZero       = 0x03
	pageUnmeasured = 0x04
	pageSecrets    = 0x05
	pageCPUID      = 0x06
)

const (
	pageSize     = 4096
	pageInfoSize = 0x70
	// vmsaGPA is the GPA the VMSA pages are measured at: (u64)-1, page
	// aligned, bits above 51 cleared.
	vmsaGPA = 0xFFFFFFFFF000
	fourGiB = 1 << 32
	// DefaultSNPGuestFeatures is QEMU's SEV_FEATURES for an SNP guest:
	// SNPActive | DebugSwap (0x21). Kernels that refuse DebugSwap use 0x1.
	DefaultSNPGuestFeatures = 0x21
)

// GCTX is the SNP guest context's launch digest as the firmware updates it.
type GCTX struct {
	ld [sha512.Size384]byte
}

// NewGCTX starts from seed (48 bytes; nil means all zeros). A seed lets a
// caller start from a precomputed OVMF digest.
func NewGCTX(seed []byte) (*GCTX, error) {
	g := &GCTX{}
	if seed != nil {
		if len(seed) != len(g.ld) {
			return nil, fmt.Errorf("snp: launch digest seed is %d bytes, want 48: %w", len(seed), errdefs.ErrInvalidArgument)
		}
		copy(g.ld[:], seed)
	}
	return g, nil
}

// LD returns the launch digest so far.
func (g *GCTX) LD() []byte { return bytes.Clone(g.ld[:]) }

func (g *GCTX) update(pageType byte, gpa uint64, contents [sha512.Size384]byte) {
	var pi [pageInfoSize]byte
	copy(pi[0:48], g.ld[:])
	copy(pi[48:96], contents[:])
	binary.LittleEndian.PutUint16(pi[96:], pageInfoSize)
	pi[98] = pageType
	// pi[99] is_imi, pi[100..102] VMPL3..1 permissions, pi[103] reserved: 0.
	binary.LittleEndian.PutUint64(pi[104:], gpa)
	g.ld = sha512.Sum384(pi[:])
}

// NormalPages measures data (a multiple of 4 KiB) as normal pages from gpa.
func (g *GCTX) NormalPages(gpa uint64, data []byte) error {
	if len(data)%pageSize != 0 {
		return fmt.Errorf("snp: %d bytes of normal pages is not a multiple of 4096: %w", len(data), errdefs.ErrInvalidArgument)
	}
	for off := 0; off < len(data); off += pageSize {
		g.update(pageNormal, gpa+uint64(off), sha512.Sum384(data[off:off+pageSize]))
	}
	return nil
}

func (g *GCTX) emptyPages(pageType byte, gpa uint64, size uint32) error {
	if size%pageSize != 0 {
		return fmt.Errorf("snp: section of %d bytes at %#x is not a multiple of 4096: %w", size, gpa, errdefs.ErrInvalidArgument)
	}
	for off := uint64(0); off < uint64(size); off += pageSize {
		g.update(pageType, gpa+off, [48]byte{})
	}
	return nil
}

// VMSAPage measures one VMSA page.
func (g *GCTX) VMSAPage(page []byte) error {
	if len(page) != pageSize {
		return fmt.Errorf("snp: VMSA page of %d bytes: %w", len(page), errdefs.ErrInvalidArgument)
	}
	g.update(pageVMSA, vmsaGPA, sha512.Sum384(page))
	return nil
}

// OVMF metadata section types (edk2 OvmfPkg/ResetVector OvmfSevMetadata).
const (
	sectionSNPSecMem       = 1
	sectionSNPSecrets      = 2
	sectionCPUID           = 3
	sectionSVSMCAA         = 4
	sectionSNPKernelHashes = 0x10
)

// OVMFSection is one entry of OVMF's SEV metadata.
type OVMFSection struct {
	GPA, Size, Type uint32
}

// OVMF is a parsed OVMF image: its GUIDed footer table and SEV metadata.
type OVMF struct {
	Data     []byte
	table    map[[16]byte][]byte
	Sections []OVMFSection
}

// GUIDs of OVMF's footer table entries, in the on-disk (mixed-endian) form.
var (
	guidFooterTable   = mustGUID("96b582de-1fb2-45f7-baea-a366c55a082d")
	guidSEVHashTable  = mustGUID("7255371f-3a3b-4b04-927b-1da6efa8d454")
	guidSEVESReset    = mustGUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e")
	guidSEVMetadata   = mustGUID("dc886566-984a-4798-a75e-5585a7bf67cc")
	guidHashTableHead = mustGUID("9438d606-4f22-4cc9-b479-a793d411fd21")
	guidHashKernel    = mustGUID("4de79437-abd2-427f-b835-d5b172d2045b")
	guidHashInitrd    = mustGUID("44baf731-3a2f-4bd7-9af1-41e29169781d")
	guidHashCmdline   = mustGUID("97d02dd8-bd20-4c94-aa78-e7714d36ab2a")
)

// mustGUID encodes a textual GUID as EFI stores it: the first three
// fields little-endian, the rest as written.
func mustGUID(s string) [16]byte {
	var g [16]byte
	var hexs []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '-' {
			hexs = append(hexs, s[i])
		}
	}
	if len(hexs) != 32 {
		panic("bad GUID literal " + s)
	}
	var raw [16]byte
	for i := range raw {
		var b byte
		for _, c := range hexs[2*i : 2*i+2] {
			switch {
			case c >= '0' && c <= '9':
				b = b<<4 | (c - '0')
			case c >= 'a' && c <= 'f':
				b = b<<4 | (c - 'a' + 10)
			default:
				panic("bad GUID literal " + s)
			}
		}
		raw[i] = b
	}
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	copy(g[8:], raw[8:])
	return g
}

// footer entry header: u16 size then the GUID; the table ends 32 bytes
// before the end of the image.
const footerEntryHeader = 18

// ParseOVMF parses an OVMF image's footer table and SEV metadata. An image
// without a footer table parses with no sections (it then cannot boot an
// SNP guest with a kernel).
func ParseOVMF(data []byte) (*OVMF, error) {
	o := &OVMF{Data: data, table: map[[16]byte][]byte{}}
	if len(data) == 0 || len(data)%pageSize != 0 {
		return nil, fmt.Errorf("snp: OVMF image of %d bytes is not a whole number of pages: %w", len(data), errdefs.ErrInvalidArgument)
	}
	start := len(data) - 32 - footerEntryHeader
	if start < 0 {
		return o, nil
	}
	var guid [16]byte
	copy(guid[:], data[start+2:start+footerEntryHeader])
	if guid != guidFooterTable {
		return o, nil
	}
	tableSize := int(binary.LittleEndian.Uint16(data[start:])) - footerEntryHeader
	if tableSize < 0 || tableSize > start {
		return nil, fmt.Errorf("snp: OVMF footer table size %d: %w", tableSize, errdefs.ErrInvalidArgument)
	}
	table := data[start-tableSize : start]
	for len(table) >= footerEntryHeader {
		h := table[len(table)-footerEntryHeader:]
		size := int(binary.LittleEndian.Uint16(h))
		if size < footerEntryHeader || size > len(table) {
			return nil, fmt.Errorf("snp: OVMF footer table entry size %d: %w", size, errdefs.ErrInvalidArgument)
		}
		copy(guid[:], h[2:])
		o.table[guid] = table[len(table)-size : len(table)-footerEntryHeader]
		table = table[:len(table)-size]
	}
	if md, ok := o.table[guidSEVMetadata]; ok {
		if len(md) < 4 {
			return nil, fmt.Errorf("snp: OVMF SEV metadata entry too short: %w", errdefs.ErrInvalidArgument)
		}
		off := int(binary.LittleEndian.Uint32(md))
		s := len(data) - off
		if off <= 0 || s < 0 || s+16 > len(data) {
			return nil, fmt.Errorf("snp: OVMF SEV metadata offset %d: %w", off, errdefs.ErrInvalidArgument)
		}
		hdr := data[s : s+16]
		if string(hdr[0:4]) != "ASEV" || binary.LittleEndian.Uint32(hdr[8:]) != 1 {
			return nil, fmt.Errorf("snp: OVMF SEV metadata: bad signature or version: %w", errdefs.ErrInvalidArgument)
		}
		n := int(binary.LittleEndian.Uint32(hdr[12:]))
		if n < 0 || n > 1024 || s+16+12*n > len(data) {
			return nil, fmt.Errorf("snp: OVMF SEV metadata: %d sections: %w", n, errdefs.ErrInvalidArgument)
		}
		for i := range n {
			e := data[s+16+12*i:]
			o.Sections = append(o.Sections, OVMFSection{
				GPA: binary.LittleEndian.Uint32(e), Size: binary.LittleEndian.Uint32(e[4:]), Type: binary.LittleEndian.Uint32(e[8:]),
			})
		}
	}
	return o, nil
}

// GPA is where the image is mapped: it ends at 4 GiB.
func (o *OVMF) GPA() uint64 { return fourGiB - uint64(len(o.Data)) }

func (o *OVMF) u32Entry(g [16]byte, name string) (uint32, error) {
	e, ok := o.table[g]
	if !ok || len(e) < 4 {
		return 0, fmt.Errorf("snp: OVMF has no %s entry: %w", name, errdefs.ErrNotFound)
	}
	return binary.LittleEndian.Uint32(e), nil
}

// SEVESResetEIP is the AP reset address OVMF publishes.
func (o *OVMF) SEVESResetEIP() (uint32, error) {
	return o.u32Entry(guidSEVESReset, "SEV-ES reset block")
}

// SEVHashTableGPA is where QEMU writes the kernel hashes table.
func (o *OVMF) SEVHashTableGPA() (uint32, error) {
	return o.u32Entry(guidSEVHashTable, "SEV hash table")
}

// SEVHashes are the SHA-256 digests QEMU puts in the SEV hash table.
type SEVHashes struct {
	Kernel, Initrd, Cmdline [sha256.Size]byte
}

// NewSEVHashes hashes what QEMU hashes: the kernel and initrd files
// exactly, and the command line with its terminating NUL.
func NewSEVHashes(kernel, initrd []byte, cmdline string) SEVHashes {
	return SEVHashes{
		Kernel:  sha256.Sum256(kernel),
		Initrd:  sha256.Sum256(initrd),
		Cmdline: sha256.Sum256(append([]byte(cmdline), 0)),
	}
}

// Table is QEMU's SEV hash table, padded to 16 bytes: header GUID and
// length, then cmdline, initrd and kernel entries (GUID, u16 length,
// SHA-256).
func (h SEVHashes) Table() []byte {
	const entry = 16 + 2 + 32
	const size = 16 + 2 + 3*entry
	var b bytes.Buffer
	b.Write(guidHashTableHead[:])
	_ = binary.Write(&b, binary.LittleEndian, uint16(size))
	for _, e := range []struct {
		g [16]byte
		d [32]byte
	}{{guidHashCmdline, h.Cmdline}, {guidHashInitrd, h.Initrd}, {guidHashKernel, h.Kernel}} {
		b.Write(e.g[:])
		_ = binary.Write(&b, binary.LittleEndian, uint16(entry))
		b.Write(e.d[:])
	}
	b.Write(make([]byte, (size+15)&^15-size))
	return b.Bytes()
}

// VMSA register state QEMU gives an SEV-SNP vCPU at reset.
const bspEIP = 0xfffffff0

func vmsaPage(eip uint32, features uint64, vcpuSig uint32) []byte {
	p := make([]byte, pageSize)
	seg := func(off int, sel, attr uint16, limit uint32, base uint64) {
		binary.LittleEndian.PutUint16(p[off:], sel)
		binary.LittleEndian.PutUint16(p[off+2:], attr)
		binary.LittleEndian.PutUint32(p[off+4:], limit)
		binary.LittleEndian.PutUint64(p[off+8:], base)
	}
	u64 := func(off int, v uint64) { binary.LittleEndian.PutUint64(p[off:], v) }
	seg(0x00, 0, 0x93, 0xffff, 0)                           // es
	seg(0x10, 0xf000, 0x9b, 0xffff, uint64(eip)&0xffff0000) // cs
	seg(0x20, 0, 0x93, 0xffff, 0)                           // ss
	seg(0x30, 0, 0x93, 0xffff, 0)                           // ds
	seg(0x40, 0, 0x93, 0xffff, 0)                           // fs
	seg(0x50, 0, 0x93, 0xffff, 0)                           // gs
	seg(0x60, 0, 0, 0xffff, 0)                              // gdtr
	seg(0x70, 0, 0x82, 0xffff, 0)                           // ldtr
	seg(0x80, 0, 0, 0xffff, 0)                              // idtr
	seg(0x90, 0, 0x8b, 0xffff, 0)                           // tr
	u64(0xd0, 0x1000)                                       // efer: SVME
	u64(0x148, 0x40)                                        // cr4: MCE
	u64(0x158, 0x10)                                        // cr0
	u64(0x160, 0x400)                                       // dr7
	u64(0x168, 0xffff0ff0)                                  // dr6
	u64(0x170, 0x2)                                         // rflags
	u64(0x178, uint64(eip)&0xffff)                          // rip
	u64(0x268, 0x7040600070406)                             // g_pat
	u64(0x310, uint64(vcpuSig))                             // rdx
	u64(0x3b0, features)                                    // sev_features
	u64(0x3e8, 0x1)                                         // xcr0
	binary.LittleEndian.PutUint32(p[0x408:], 0x1f80)        // mxcsr
	binary.LittleEndian.PutUint16(p[0x410:], 0x37f)         // x87_fcw
	return p
}

// CPUSig is the CPUID(1).EAX signature of a family/model/stepping.
func CPUSig(family, model, stepping uint32) uint32 {
	famLow, famHigh := family, uint32(0)
	if family > 0xf {
		famLow, famHigh = 0xf, (family-0xf)&0xff
	}
	return famHigh<<20 | (model>>4&0xf)<<16 | famLow<<8 | (model&0xf)<<4 | stepping&0xf
}

// VCPUSigs are the signatures of QEMU's EPYC CPU models.
var VCPUSigs = map[string]uint32{
	"EPYC": CPUSig(23, 1, 2), "EPYC-v1": CPUSig(23, 1, 2), "EPYC-v2": CPUSig(23, 1, 2),
	"EPYC-IBPB": CPUSig(23, 1, 2), "EPYC-v3": CPUSig(23, 1, 2), "EPYC-v4": CPUSig(23, 1, 2),
	"EPYC-Rome": CPUSig(23, 49, 0), "EPYC-Rome-v1": CPUSig(23, 49, 0), "EPYC-Rome-v2": CPUSig(23, 49, 0),
	"EPYC-Rome-v3": CPUSig(23, 49, 0),
	"EPYC-Milan":   CPUSig(25, 1, 1), "EPYC-Milan-v1": CPUSig(25, 1, 1), "EPYC-Milan-v2": CPUSig(25, 1, 1),
	"EPYC-Genoa": CPUSig(25, 17, 0), "EPYC-Genoa-v1": CPUSig(25, 17, 0),
	"EPYC-Turin": CPUSig(26, 0, 0),
}

// SNPParams describe one SNP launch.
type SNPParams struct {
	// OVMF is the firmware image.
	OVMF *OVMF
	// OVMFHash, when set, is a precomputed launch digest of the OVMF pages
	// (48 bytes) used instead of measuring OVMF.Data (whose footer and
	// metadata are still needed).
	OVMFHash []byte
	// VCPUs is the number of vCPUs (at least 1).
	VCPUs int
	// VCPUSig is CPUID(1).EAX of the vCPU model (VCPUSigs).
	VCPUSig uint32
	// GuestFeatures is SEV_FEATURES (DefaultSNPGuestFeatures).
	GuestFeatures uint64
	// Hashes are the direct-boot hashes; nil for a boot without -kernel.
	Hashes *SEVHashes
}

// SNPLaunchDigest computes the launch measurement (48 bytes).
func SNPLaunchDigest(p SNPParams) ([]byte, error) {
	if p.OVMF == nil {
		return nil, fmt.Errorf("snp: OVMF: nil: %w", errdefs.ErrInvalidArgument)
	}
	if p.VCPUs < 1 || p.VCPUs > 512 {
		return nil, fmt.Errorf("snp: vcpus %d: want 1..512: %w", p.VCPUs, errdefs.ErrInvalidArgument)
	}
	g, err := NewGCTX(p.OVMFHash)
	if err != nil {
		return nil, err
	}
	if p.OVMFHash == nil {
		if err := g.NormalPages(p.OVMF.GPA(), p.OVMF.Data); err != nil {
			return nil, err
		}
	}
	hasHashes := false
	for _, s := range p.OVMF.Sections {
		var err error
		switch s.Type {
		case sectionSNPSecMem, sectionSVSMCAA:
			err = g.emptyPages(pageZero, uint64(s.GPA), s.Size)
		case sectionSNPSecrets:
			g.update(pageSecrets, uint64(s.GPA), [48]byte{})
		case sectionCPUID:
			g.update(pageCPUID, uint64(s.GPA), [48]byte{})
		case sectionSNPKernelHashes:
			hasHashes = true
			if p.Hashes == nil {
				err = g.emptyPages(pageZero, uint64(s.GPA), s.Size)
				break
			}
			tgpa, terr := p.OVMF.SEVHashTableGPA()
			if terr != nil {
				return nil, terr
			}
			table := p.Hashes.Table()
			off := int(tgpa & (pageSize - 1))
			if s.Size != pageSize || off+len(table) > pageSize {
				return nil, fmt.Errorf("snp: kernel hashes section of %d bytes, table at page offset %d: %w", s.Size, off, errdefs.ErrInvalidArgument)
			}
			page := make([]byte, pageSize)
			copy(page[off:], table)
			err = g.NormalPages(uint64(s.GPA), page)
		default:
			return nil, fmt.Errorf("snp: OVMF metadata section type %#x: %w", s.Type, errdefs.ErrNotImplemented)
		}
		if err != nil {
			return nil, err
		}
	}
	if p.Hashes != nil && !hasHashes {
		return nil, fmt.Errorf("snp: a kernel is given but the OVMF metadata has no SNP_KERNEL_HASHES section (use the AmdSevX64 build): %w", errdefs.ErrInvalidArgument)
	}
	apEIP, err := p.OVMF.SEVESResetEIP()
	if err != nil && p.VCPUs > 1 {
		return nil, err
	}
	for i := range p.VCPUs {
		eip := uint32(bspEIP)
		if i > 0 {
			eip = apEIP
		}
		if err := g.VMSAPage(vmsaPage(eip, p.GuestFeatures, p.VCPUSig)); err != nil {
			return nil, err
		}
	}
	return g.LD(), nil
}

// SNPInputs describe the SEV-SNP launch for Compute.
type SNPInputs struct {
	// OVMF is the firmware file (edk2 AmdSevX64 build).
	OVMF string
	// VCPUs defaults to 1.
	VCPUs int
	// VCPUType is a QEMU CPU model name (VCPUSigs); default EPYC-v4.
	VCPUType string
	// GuestFeatures defaults to DefaultSNPGuestFeatures.
	GuestFeatures uint64
}

// maxFirmware bounds the OVMF image read.
const maxFirmware = 64 << 20

// SNPLaunchDigestFiles computes the launch measurement of a direct boot of
// kernel, initrd and cmdline with the inputs' OVMF.
func SNPLaunchDigestFiles(in SNPInputs, kernel, initrd, cmdline string) ([]byte, error) {
	fw, err := ReadFileLimited(in.OVMF, maxFirmware)
	if err != nil {
		return nil, fmt.Errorf("snp: ovmf: %w", err)
	}
	o, err := ParseOVMF(fw)
	if err != nil {
		return nil, err
	}
	vtype := in.VCPUType
	if vtype == "" {
		vtype = "EPYC-v4"
	}
	sig, ok := VCPUSigs[vtype]
	if !ok {
		return nil, fmt.Errorf("snp: vcpu type %q: unknown (want one of QEMU's EPYC models): %w", vtype, errdefs.ErrInvalidArgument)
	}
	vcpus := in.VCPUs
	if vcpus == 0 {
		vcpus = 1
	}
	feat := in.GuestFeatures
	if feat == 0 {
		feat = DefaultSNPGuestFeatures
	}
	h := sha256.New()
	kd, err := hashFile(h, kernel)
	if err != nil {
		return nil, fmt.Errorf("snp: kernel: %w", err)
	}
	hashes := SEVHashes{Kernel: kd, Cmdline: sha256.Sum256(append([]byte(cmdline), 0))}
	if hashes.Initrd, err = hashFile(h, initrd); err != nil {
		return nil, fmt.Errorf("snp: initrd: %w", err)
	}
	return SNPLaunchDigest(SNPParams{OVMF: o, VCPUs: vcpus, VCPUSig: sig, GuestFeatures: feat, Hashes: &hashes})
}

func hashFile(h interface {
	io.Writer
	Sum([]byte) []byte
	Reset()
}, p string) ([sha256.Size]byte, error) {
	var out [sha256.Size]byte
	h.Reset()
	f, err := os.Open(p)
	if err != nil {
		return out, err
	}
	defer f.Close()
	if _, err := io.Copy(h, f); err != nil {
		return out, err
	}
	copy(out[:], h.Sum(nil))
	return out, nil
}
