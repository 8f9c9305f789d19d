package refvalues

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"

	"github.com/containerd/errdefs"
)

// What a vTPM (swtpm behind QEMU's tpm-tis) holds after a SeaBIOS direct
// boot (-kernel/-initrd/-append) of Debian's cloud kernel, found by booting
// it (test/vm TestVTPMInitdataEventLog logs all 24 PCRs; other initrds,
// command lines and memory sizes were compared):
//
//   - PCRs 0, 3, 5, 6, 7 hold only SeaBIOS's separator event (0xffffffff):
//     SeaBIOSSeparatorPCR, whatever is booted.
//   - PCR 1 (SMBIOS tables) changes with the QEMU machine (the memory size
//     changes it); PCR 2 (option ROMs, QEMU's linuxboot ROM) and PCR 4 (boot
//     events) depend on the QEMU and SeaBIOS builds. None depends on the
//     kernel, initrd or command line.
//   - SeaBIOS does not measure the kernel, the initrd or the command line,
//     and no EFI stub runs, so no PCR binds the guest image: with this
//     firmware the vTPM attests the platform, initdata (PCR 8) and runtime
//     events, not the image. (OVMF does: see ovmf.go.)
//   - PCR 8 is zero until the agent extends it with the initdata digest.
//   - PCR 10 holds IMA's boot_aggregate (CONFIG_IMA=y, template ima-sig,
//     sha256): IMABootAggregatePCR of PCRs 0–9 as they were when the kernel
//     initialized IMA, i.e. before the agent extended PCR 8 (zero then).
//   - PCRs 9, 11–16 stay zero and 17–22 stay all ones (DRTM PCRs, which
//     locality 0 cannot extend: a runtime event log must use another PCR,
//     e.g. 23). Cova does not emit them: a zero tpm_pcr11, say, would let a
//     policy that checks PCR 11 (trustee's default does) pass while nothing
//     was measured.

// FirmwareSeaBIOS names QEMU's default x86 firmware for Inputs.Firmware.
const FirmwareSeaBIOS = "seabios"

// seabiosSeparator is SeaBIOS's EV_SEPARATOR event data.
var seabiosSeparator = []byte{0xff, 0xff, 0xff, 0xff}

// SeaBIOSSeparatorPCR is a PCR that received only SeaBIOS's separator:
// SHA-256(0³² ‖ SHA-256(ff ff ff ff)).
func SeaBIOSSeparatorPCR() []byte {
	d := sha256.Sum256(seabiosSeparator)
	return ExtendPCR(make([]byte, sha256.Size), d[:])
}

// SeaBIOSSeparatorOnlyPCRs are the PCRs a SeaBIOS direct boot leaves with
// only the separator.
var SeaBIOSSeparatorOnlyPCRs = []int{0, 3, 5, 6, 7}

// IMAPCR is the PCR IMA measures into (CONFIG_IMA_MEASURE_PCR_IDX).
const IMAPCR = 10

// IMABootAggregatePCR returns PCR 10 after IMA's first and only entry
// (no IMA policy is loaded): boot_aggregate = SHA-256(PCR0 ‖ … ‖ PCR9) of
// the SHA-256 bank, recorded with the ima-sig template, whose digest is
// SHA-256 over each field as u32 little-endian length ‖ data: d-ng
// ("sha256:\0" ‖ boot_aggregate), n-ng ("boot_aggregate\0"), sig (empty).
// pcrs are PCRs 0–9 at the time IMA initialized.
func IMABootAggregatePCR(pcrs [][]byte) ([]byte, error) {
	if len(pcrs) != 10 {
		return nil, fmt.Errorf("ima boot_aggregate: %d PCRs, want PCRs 0-9: %w", len(pcrs), errdefs.ErrInvalidArgument)
	}
	agg := sha256.New()
	for i, p := range pcrs {
		if len(p) != sha256.Size {
			return nil, fmt.Errorf("ima boot_aggregate: PCR %d is %d bytes: %w", i, len(p), errdefs.ErrInvalidArgument)
		}
		agg.Write(p)
	}
	var tmpl bytes.Buffer
	field := func(b []byte) {
		_ = binary.Write(&tmpl, binary.LittleEndian, uint32(len(b)))
		tmpl.Write(b)
	}
	field(append([]byte("sha256:\x00"), agg.Sum(nil)...))
	field([]byte("boot_aggregate\x00"))
	field(nil)
	d := sha256.Sum256(tmpl.Bytes())
	return ExtendPCR(make([]byte, sha256.Size), d[:]), nil
}

// firmwarePCRs adds what in.Firmware determines to pcrs (given values must
// agree) and, when PCRs 0–7 are then all known, IMA's PCR 10.
func firmwarePCRs(in Inputs, pcrs map[int][]byte) error {
	var (
		fixed map[int][]byte
		who   string // for errors
	)
	switch in.Firmware {
	case "":
		return nil
	case FirmwareSeaBIOS:
		fixed, who = map[int][]byte{}, "SeaBIOS"
		for _, i := range SeaBIOSSeparatorOnlyPCRs {
			fixed[i] = SeaBIOSSeparatorPCR()
		}
	case FirmwareOVMF:
		if in.Kernel == "" || in.Initrd == "" || !(in.HasCmdline || in.Cmdline != "") || in.Memory == 0 {
			return fmt.Errorf("firmware %s: kernel, initrd, cmdline and memory are required (the boot measures them): %w", FirmwareOVMF, errdefs.ErrInvalidArgument)
		}
		b, err := ovmfBootFromFiles(in.Kernel, in.Initrd, in.Cmdline, in.Memory)
		if err != nil {
			return fmt.Errorf("firmware %s: %w", FirmwareOVMF, err)
		}
		fixed, who = b.PCRs(), "OVMF booting these artifacts"
	default:
		return fmt.Errorf("firmware %q: want %q or %q: %w", in.Firmware, FirmwareSeaBIOS, FirmwareOVMF, errdefs.ErrInvalidArgument)
	}
	for i, p := range fixed {
		if g, ok := pcrs[i]; ok && !bytes.Equal(g, p) {
			return fmt.Errorf("tpm pcr %d: given %x, but %s leaves %x: %w", i, g, who, p, errdefs.ErrInvalidArgument)
		}
		pcrs[i] = p
	}
	// IMA ran before the agent extended PCR 8 (zero then); PCR 9 holds
	// what the firmware or the EFI stub measured (nothing under SeaBIOS).
	early := make([][]byte, 10)
	for i := range 8 {
		p, ok := pcrs[i]
		if !ok {
			return nil // PCR 0, 1, 2 or 4 unknown: PCR 10 cannot be predicted
		}
		early[i] = p
	}
	early[8] = make([]byte, sha256.Size)
	early[9] = fixed[9]
	if early[9] == nil {
		early[9] = make([]byte, sha256.Size)
	}
	p10, err := IMABootAggregatePCR(early)
	if err != nil {
		return err
	}
	if p, ok := pcrs[IMAPCR]; ok && !bytes.Equal(p, p10) {
		return fmt.Errorf("tpm pcr %d: given %x, but IMA's boot_aggregate gives %x: %w", IMAPCR, p, p10, errdefs.ErrInvalidArgument)
	}
	pcrs[IMAPCR] = p10
	return nil
}
