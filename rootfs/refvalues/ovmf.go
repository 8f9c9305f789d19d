package refvalues

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"strings"
	"unicode/utf16"

	"github.com/containerd/errdefs"
)

// What a vTPM (swtpm behind QEMU's tpm-tis) holds after a direct kernel
// boot (-kernel/-initrd/-append) under OVMF: Debian 12's ovmf package
// (edk2-stable202211, OVMF_CODE_4M.fd with its empty OVMF_VARS_4M.fd:
// Secure Boot off, no keys), QEMU 7.2's q35 machine and Debian's cloud
// kernel 6.1 booted through its EFI stub. Found by booting it and reading
// the TCG event log (test/vm TestMeasuredBootKBS checks every prediction
// against the PCRs the dev KBS sees):
//
//   - PCR 0: the firmware (S-CRTM version, two firmware volume blobs);
//     PCR 1: the boot variables (BootOrder, Boot0000 = the firmware's
//     UiApp). Both depend on the OVMF build and its variable store only:
//     give them with TPMPCRs (--tpm-pcr) from a reference boot.
//   - PCRs 2, 3 and 6: the separator only (no PCI device has an option
//     ROM: test/vm sets romfile= on each).
//   - PCR 4: the kernel as an EFI application (EV_EFI_BOOT_SERVICES_
//     APPLICATION: the Authenticode digest, PEAuthenticode), then
//     EV_EFI_ACTION "Calling EFI Application from Boot Option", then the
//     separator. The kernel measured is not quite the file: QEMU writes the
//     command line address, the loader type, the heap end and the initrd's
//     address and size into the setup header before it hands the image to
//     the firmware (QEMUKernelImage), so PCR 4 also depends on the
//     initrd's size and the guest's memory size.
//   - PCR 5: the separator, then EV_EFI_ACTION "Exit Boot Services
//     Invocation" and "Exit Boot Services Returned with Success".
//   - PCR 7: the Secure Boot state (EV_EFI_VARIABLE_DRIVER_CONFIG for
//     SecureBoot = 0 and empty PK, KEK, db, dbx), then the separator.
//   - PCR 8: nothing from the firmware or the stub (no boot loader such as
//     GRUB runs: GRUB would measure the command line there). It is zero
//     until the agent extends it with the initdata digest, so the initdata
//     binding (Initdata.PCR8, which the dev KBS's verifier checks) holds
//     under OVMF as under SeaBIOS.
//   - PCR 9: the kernel's EFI stub measures, as EV_EVENT_TAG events, first
//     the LoadOptions OVMF gave it — the command line as UTF-16LE with
//     " initrd=initrd" appended and a NUL terminator (OVMFLoadOptions) —
//     then the initrd exactly as loaded through LoadFile2 (SHA-256 of the
//     file). So PCR 9 binds the command line and the initrd, and a
//     changed initrd byte changes it.
//   - PCR 10: IMA's boot_aggregate over PCRs 0-9 as they were when IMA
//     started (PCR 9 complete, PCR 8 still zero): predictable once PCRs 0
//     and 1 are given.
//   - PCRs 11-16 and 23 stay zero, 17-22 all ones, as under SeaBIOS.
//
// Newer edk2 releases put "initrd=initrd " before the command line
// instead, and other QEMU versions may patch other header fields: this
// model is for the versions above, and the VM test is what proves it.

// FirmwareOVMF names OVMF (as above) for Inputs.Firmware.
const FirmwareOVMF = "ovmf"

// EV_EFI_ACTION strings edk2 measures.
const (
	actionCallingEFIApplication = "Calling EFI Application from Boot Option"
	actionExitBootServices      = "Exit Boot Services Invocation"
	actionExitBootServicesOK    = "Exit Boot Services Returned with Success"
)

// uefiSeparator is the EV_SEPARATOR event data of UEFI firmware.
var uefiSeparator = []byte{0, 0, 0, 0}

// OVMFSeparatorPCR is a PCR that received only OVMF's separator:
// SHA-256(0³² ‖ SHA-256(00 00 00 00)).
func OVMFSeparatorPCR() []byte {
	return replay(uefiSeparator)
}

// OVMFSeparatorOnlyPCRs are the PCRs an OVMF direct boot leaves with only
// the separator.
var OVMFSeparatorOnlyPCRs = []int{2, 3, 6}

// replay extends a zero SHA-256 PCR with the digest of each event's data.
func replay(events ...[]byte) []byte {
	p := make([]byte, sha256.Size)
	for _, e := range events {
		d := sha256.Sum256(e)
		p = ExtendPCR(p, d[:])
	}
	return p
}

// replayDigests extends a zero SHA-256 PCR with each digest.
func replayDigests(digests ...[]byte) []byte {
	p := make([]byte, sha256.Size)
	for _, d := range digests {
		p = ExtendPCR(p, d)
	}
	return p
}

// EFI variable GUIDs (in their wire order: first three fields little-endian).
var (
	efiGlobalVariable        = []byte{0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c}
	efiImageSecurityDatabase = []byte{0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f}
)

// uefiVariableData is UEFI_VARIABLE_DATA: the event data (and, for
// EV_EFI_VARIABLE_DRIVER_CONFIG, the digested data) of a variable event:
// GUID ‖ u64 name length in characters ‖ u64 data length ‖ UTF-16LE name
// (no NUL) ‖ data.
func uefiVariableData(guid []byte, name string, data []byte) []byte {
	u := utf16le(name)
	var b bytes.Buffer
	b.Write(guid)
	_ = binary.Write(&b, binary.LittleEndian, uint64(len(u)/2))
	_ = binary.Write(&b, binary.LittleEndian, uint64(len(data)))
	b.Write(u)
	b.Write(data)
	return b.Bytes()
}

func utf16le(s string) []byte {
	u := utf16.Encode([]rune(s))
	b := make([]byte, 0, 2*len(u))
	for _, c := range u {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return b
}

// OVMFSecureBootOffPCR7 is PCR 7 after OVMF with an empty variable store
// (Secure Boot off, no PK, KEK, db or dbx) booted.
func OVMFSecureBootOffPCR7() []byte {
	return replay(
		uefiVariableData(efiGlobalVariable, "SecureBoot", []byte{0}),
		uefiVariableData(efiGlobalVariable, "PK", nil),
		uefiVariableData(efiGlobalVariable, "KEK", nil),
		uefiVariableData(efiImageSecurityDatabase, "db", nil),
		uefiVariableData(efiImageSecurityDatabase, "dbx", nil),
		uefiSeparator,
	)
}

// OVMFPCR5 is PCR 5 after the kernel called ExitBootServices.
func OVMFPCR5() []byte {
	return replay(uefiSeparator, []byte(actionExitBootServices), []byte(actionExitBootServicesOK))
}

// OVMFLoadOptions are the LoadOptions OVMF (edk2-stable202211) gives a
// kernel it boots directly: the command line with " initrd=initrd"
// appended when there is an initrd, as UTF-16LE with a NUL terminator.
// The EFI stub measures exactly these bytes into PCR 9.
func OVMFLoadOptions(cmdline string, initrd bool) []byte {
	if initrd {
		cmdline += " initrd=initrd"
	}
	return append(utf16le(cmdline), 0, 0)
}

// QEMU's x86 direct boot (hw/i386/x86.c x86_load_linux, QEMU 7.2) for a
// bzImage with boot protocol ≥ 2.03 that loads high.
const (
	qemuRealAddr     = 0x10000
	qemuCmdlineAddr  = 0x20000
	qemuLoaderType   = 0xb0    // "B" reserved for QEMU, revision 0
	qemuACPIDataSize = 0x28000 // pc/q35 acpi_data_size
	qemuHeaderSize   = 8192    // QEMU reads and patches this much

	setupHdrMagic = 0x202 // "HdrS"
	setupVersion  = 0x206
	setupLoader   = 0x210 // type_of_loader
	setupFlags    = 0x211 // loadflags
	setupInitrd   = 0x218 // ramdisk_image, ramdisk_size
	setupHeapEnd  = 0x224
	setupCmdline  = 0x228 // cmd_line_ptr
	setupInitrdHi = 0x22c // initrd_addr_max
	flagLoadedHi  = 0x01
	flagCanUseHp  = 0x80
)

// q35Below4G is the RAM a q35 machine maps below 4 GiB.
func q35Below4G(memory uint64) uint64 {
	lowmem := uint64(0xb0000000)
	if memory >= lowmem {
		lowmem = 0x80000000
	}
	return min(memory, lowmem)
}

// QEMUKernelImage returns the kernel as QEMU 7.2 hands it to the firmware
// (fw_cfg setup + kernel data) for a direct boot on q35 with memory bytes
// of RAM, an initrd of initrdSize bytes and cmdline: the file with QEMU's
// setup header fields written in (command line address, loader type, heap
// end, initrd address and size). The initrd's address depends on the
// memory size: QEMU puts it as high as initrd_addr_max and the RAM below
// 4 GiB allow, minus its ACPI area, page aligned.
func QEMUKernelImage(kernel []byte, initrdSize int64, cmdline string, memory uint64) ([]byte, error) {
	le := binary.LittleEndian
	if len(kernel) < setupInitrdHi+4 || string(kernel[setupHdrMagic:setupHdrMagic+4]) != "HdrS" {
		return nil, fmt.Errorf("kernel: no Linux boot protocol header (HdrS): %w", errdefs.ErrInvalidArgument)
	}
	if proto := le.Uint16(kernel[setupVersion:]); proto < 0x203 || kernel[setupFlags]&flagLoadedHi == 0 {
		return nil, fmt.Errorf("kernel: boot protocol %#x or a low-loading kernel: QEMU's handling of it is not modelled: %w", proto, errdefs.ErrNotImplemented)
	}
	if strings.Contains(cmdline, "vga=") {
		return nil, fmt.Errorf("cmdline: vga=: QEMU writes the video mode into the kernel header, which is not modelled: %w", errdefs.ErrNotImplemented)
	}
	if initrdSize <= 0 {
		return nil, fmt.Errorf("initrd: size %d: %w", initrdSize, errdefs.ErrInvalidArgument)
	}
	below := q35Below4G(memory)
	if below <= qemuACPIDataSize {
		return nil, fmt.Errorf("memory: %d bytes is too small: %w", memory, errdefs.ErrInvalidArgument)
	}
	initrdMax := uint64(le.Uint32(kernel[setupInitrdHi:]))
	if initrdMax >= below-qemuACPIDataSize {
		initrdMax = below - qemuACPIDataSize - 1
	}
	if uint64(initrdSize) >= initrdMax {
		return nil, fmt.Errorf("initrd: %d bytes does not fit below %#x (QEMU refuses it): %w", initrdSize, initrdMax, errdefs.ErrInvalidArgument)
	}
	out := bytes.Clone(kernel)
	le.PutUint32(out[setupCmdline:], qemuCmdlineAddr)
	out[setupLoader] = qemuLoaderType
	out[setupFlags] |= flagCanUseHp
	le.PutUint16(out[setupHeapEnd:], qemuCmdlineAddr-qemuRealAddr-0x200)
	le.PutUint32(out[setupInitrd:], uint32((initrdMax-uint64(initrdSize))&^4095))
	le.PutUint32(out[setupInitrd+4:], uint32(initrdSize))
	return out, nil
}

// OVMFBoot are the image measurements of an OVMF direct boot.
type OVMFBoot struct {
	// KernelAuthenticode is the SHA-256 Authenticode digest of the kernel
	// as QEMU handed it over (QEMUKernelImage), measured into PCR 4.
	KernelAuthenticode []byte
	// LoadOptions are what the EFI stub measures first into PCR 9
	// (OVMFLoadOptions).
	LoadOptions []byte
	// InitrdSHA256 is the initrd's digest, measured next into PCR 9.
	InitrdSHA256 []byte
}

// NewOVMFBoot derives the measurements of a direct boot of kernel (the
// bzImage's bytes) with an initrd of initrdSize bytes and SHA-256
// initrdSHA256, the command line cmdline (QEMU -append, exactly) and
// memory bytes of RAM (QEMU -m).
func NewOVMFBoot(kernel []byte, initrdSize int64, initrdSHA256 []byte, cmdline string, memory uint64) (OVMFBoot, error) {
	if len(initrdSHA256) != sha256.Size {
		return OVMFBoot{}, fmt.Errorf("initrd digest: %d bytes, want SHA-256: %w", len(initrdSHA256), errdefs.ErrInvalidArgument)
	}
	img, err := QEMUKernelImage(kernel, initrdSize, cmdline, memory)
	if err != nil {
		return OVMFBoot{}, err
	}
	auth, err := PEAuthenticode(img, crypto.SHA256)
	if err != nil {
		return OVMFBoot{}, fmt.Errorf("kernel: %w", err)
	}
	return OVMFBoot{KernelAuthenticode: auth, LoadOptions: OVMFLoadOptions(cmdline, true), InitrdSHA256: initrdSHA256}, nil
}

// PCRs returns every PCR the boot determines: 2-7 and 9.
func (b OVMFBoot) PCRs() map[int][]byte {
	sep := OVMFSeparatorPCR()
	out := map[int][]byte{}
	for _, i := range OVMFSeparatorOnlyPCRs {
		out[i] = sep
	}
	sepDigest := sha256.Sum256(uefiSeparator)
	action := sha256.Sum256([]byte(actionCallingEFIApplication))
	out[4] = replayDigests(b.KernelAuthenticode, action[:], sepDigest[:])
	out[5] = OVMFPCR5()
	out[7] = OVMFSecureBootOffPCR7()
	lo := sha256.Sum256(b.LoadOptions)
	out[9] = replayDigests(lo[:], b.InitrdSHA256)
	return out
}

// maxKernel bounds the kernel image read into memory.
const maxKernel = 256 << 20

// ovmfBootFromFiles reads the kernel and digests the initrd.
func ovmfBootFromFiles(kernel, initrd, cmdline string, memory uint64) (OVMFBoot, error) {
	k, err := ReadFileLimited(kernel, maxKernel)
	if err != nil {
		return OVMFBoot{}, fmt.Errorf("kernel: %w", err)
	}
	f, err := os.Open(initrd)
	if err != nil {
		return OVMFBoot{}, fmt.Errorf("initrd: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return OVMFBoot{}, fmt.Errorf("initrd: %w", err)
	}
	return NewOVMFBoot(k, n, h.Sum(nil), cmdline, memory)
}

// ReadFileLimited reads the file p, refusing one larger than limit bytes
// (ErrInvalidArgument) without reading past limit+1 bytes.
func ReadFileLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes: %w", p, limit, errdefs.ErrInvalidArgument)
	}
	return b, nil
}
