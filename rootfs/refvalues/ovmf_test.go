package refvalues

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// Recorded in a real boot (Debian 12: ovmf 2022.11-6+deb12u2 with
// OVMF_VARS_4M.fd, QEMU 7.2 q35, swtpm; the TCG event log read in the
// guest): the PCRs the firmware alone determines, and the LoadOptions event
// digest of one command line.
const (
	recordedSeparatorPCR = "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969"
	recordedPCR5         = "a5ceb755d043f32431d63e39f5161464620a3437280494b5850dc1b47cc074e0"
	recordedPCR7         = "65caf8dd1e0ea7a6347b635d2b379c93b9a1351edc2afc3ecda700e534eb3068"
	recordedCmdline      = "console=ttyS0 panic=-1 quiet agent.test_transport=vport:agent.0 agent.kernel_modules=virtio_ring,virtio,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio_pci,virtio_console,virtio_blk,failover,net_failover,virtio_net,overlay agent.log=debug"
	recordedLoadOptions  = "c6b3d5f6ddeb7312bed598866249740b45dc8ab2801849d1ead076befead9e5f"
)

func TestOVMFRecordedValues(t *testing.T) {
	lo := sha256.Sum256(OVMFLoadOptions(recordedCmdline, true))
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"separator-only PCR", OVMFSeparatorPCR(), recordedSeparatorPCR},
		{"PCR 5", OVMFPCR5(), recordedPCR5},
		{"PCR 7", OVMFSecureBootOffPCR7(), recordedPCR7},
		{"LoadOptions event", lo[:], recordedLoadOptions},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if hex.EncodeToString(tc.got) != tc.want {
				t.Fatalf("%x, the boot recorded %s", tc.got, tc.want)
			}
		})
	}
}

func TestOVMFLoadOptions(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		initrd  bool
		want    []byte
	}{
		{"initrd", "a=1", true, []byte("a\x00=\x001\x00 \x00i\x00n\x00i\x00t\x00r\x00d\x00=\x00i\x00n\x00i\x00t\x00r\x00d\x00\x00\x00")},
		{"no initrd", "a=1", false, []byte("a\x00=\x001\x00\x00\x00")},
		{"empty command line", "", true, []byte(" \x00i\x00n\x00i\x00t\x00r\x00d\x00=\x00i\x00n\x00i\x00t\x00r\x00d\x00\x00\x00")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := OVMFLoadOptions(tc.cmdline, tc.initrd); !bytes.Equal(got, tc.want) {
				t.Fatalf("%q, want %q", got, tc.want)
			}
		})
	}
}

func TestQEMUKernelImage(t *testing.T) {
	img := miniImage(t)
	le := binary.LittleEndian
	const size = 11120227
	tests := []struct {
		name      string
		memory    uint64
		addrMax   uint32 // initrd_addr_max, 0: the image's 0x7fffffff
		wantStart uint32
	}{
		{"512M", 512 << 20, 0, (0x20000000 - 0x28000 - 1 - size) &^ 0xfff},
		{"2G: all below 4G", 2 << 30, 0, (0x80000000 - 0x28000 - 1 - size) &^ 0xfff},
		{"3G: q35 maps 2G below 4G", 3 << 30, 0, (0x80000000 - 0x28000 - 1 - size) &^ 0xfff},
		{"initrd_addr_max below the RAM", 2 << 30, 0x37ffffff, (0x37ffffff - size) &^ 0xfff},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := bytes.Clone(img)
			if tc.addrMax != 0 {
				le.PutUint32(k[0x22c:], tc.addrMax)
			}
			out, err := QEMUKernelImage(k, size, "console=ttyS0", tc.memory)
			if err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(k)
			le.PutUint32(want[0x228:], 0x20000) // cmd_line_ptr
			want[0x210] = 0xb0                  // type_of_loader
			want[0x211] |= 0x80                 // CAN_USE_HEAP
			le.PutUint16(want[0x224:], 0xfe00)  // heap_end_ptr
			le.PutUint32(want[0x218:], tc.wantStart)
			le.PutUint32(want[0x21c:], size)
			if !bytes.Equal(out, want) {
				for i := range out {
					if out[i] != want[i] {
						t.Errorf("byte %#x = %#x, want %#x", i, out[i], want[i])
					}
				}
			}
			if bytes.Equal(k, out) || !bytes.Equal(k[0x228:0x22c], img[0x228:0x22c]) {
				t.Error("the input was modified, or nothing was patched")
			}
		})
	}
}

func TestQEMUKernelImageErrors(t *testing.T) {
	img := miniImage(t)
	le := binary.LittleEndian
	edit := func(f func(b []byte)) []byte { b := bytes.Clone(img); f(b); return b }
	tests := []struct {
		name    string
		kernel  []byte
		initrd  int64
		cmdline string
		memory  uint64
		want    error
	}{
		{"no setup header", edit(func(b []byte) { b[0x202] = 'X' }), 100, "", 512 << 20, errdefs.ErrInvalidArgument},
		{"too short", img[:0x100], 100, "", 512 << 20, errdefs.ErrInvalidArgument},
		{"old boot protocol", edit(func(b []byte) { le.PutUint16(b[0x206:], 0x202) }), 100, "", 512 << 20, errdefs.ErrNotImplemented},
		{"loads low", edit(func(b []byte) { b[0x211] = 0 }), 100, "", 512 << 20, errdefs.ErrNotImplemented},
		{"vga=", img, 100, "console=ttyS0 vga=791", 512 << 20, errdefs.ErrNotImplemented},
		{"no initrd", img, 0, "", 512 << 20, errdefs.ErrInvalidArgument},
		{"initrd too large", img, 600 << 20, "", 512 << 20, errdefs.ErrInvalidArgument},
		{"no memory", img, 100, "", 0, errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := QEMUKernelImage(tc.kernel, tc.initrd, tc.cmdline, tc.memory)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// ovmfFiles writes the mini image as the kernel and an initrd.
func ovmfFiles(t *testing.T, initrd []byte) (kernel, initrdPath string) {
	t.Helper()
	dir := t.TempDir()
	kernel, initrdPath = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	if err := os.WriteFile(kernel, miniImage(t), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrdPath, initrd, 0o644); err != nil {
		t.Fatal(err)
	}
	return kernel, initrdPath
}

func TestComputeOVMF(t *testing.T) {
	initrd := bytes.Repeat([]byte("initrd"), 1000)
	kernel, initrdPath := ovmfFiles(t, initrd)
	const cmdline = "console=ttyS0 quiet"
	pcr0, pcr1 := bytes.Repeat([]byte{0xa0}, 32), bytes.Repeat([]byte{0xa1}, 32)
	toml := doc("sha256")
	v, err := Compute(Inputs{Kernel: kernel, Initrd: initrdPath, Cmdline: cmdline, HasCmdline: true, Initdata: toml,
		Firmware: FirmwareOVMF, Memory: 512 << 20, TPMPCRs: map[int][]byte{0: pcr0, 1: pcr1}})
	if err != nil {
		t.Fatal(err)
	}
	// PCR 4: the patched kernel's Authenticode digest, the EFI action, the
	// separator.
	patched, err := QEMUKernelImage(miniImage(t), int64(len(initrd)), cmdline, 512<<20)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := PEAuthenticode(patched, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(auth) == miniSignedDigest {
		t.Fatal("the patched kernel has the file's digest")
	}
	sum := func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }
	zero := make([]byte, 32)
	pcr4 := ExtendPCR(ExtendPCR(ExtendPCR(zero, auth), sum([]byte("Calling EFI Application from Boot Option"))), sum([]byte{0, 0, 0, 0}))
	loadOptions := []byte{}
	for _, c := range cmdline + " initrd=initrd\x00" {
		loadOptions = append(loadOptions, byte(c), 0)
	}
	pcr9 := ExtendPCR(ExtendPCR(zero, sum(loadOptions)), sum(initrd))
	id, err := FromInitdata(toml)
	if err != nil {
		t.Fatal(err)
	}
	sep, _ := hex.DecodeString(recordedSeparatorPCR)
	p5, _ := hex.DecodeString(recordedPCR5)
	p7, _ := hex.DecodeString(recordedPCR7)
	want := map[int][]byte{0: pcr0, 1: pcr1, 2: sep, 3: sep, 4: pcr4, 5: p5, 6: sep, 7: p7, 8: id.PCR8, 9: pcr9}
	early := [][]byte{pcr0, pcr1, sep, sep, pcr4, p5, sep, p7, zero, pcr9}
	if want[10], err = IMABootAggregatePCR(early); err != nil {
		t.Fatal(err)
	}
	if len(v.TPMPCRs) != len(want) {
		t.Errorf("PCRs %v, want %d of them", v.TPMPCRs, len(want))
	}
	for i, w := range want {
		if !bytes.Equal(v.TPMPCRs[i], w) {
			t.Errorf("PCR %d = %x, want %x", i, v.TPMPCRs[i], w)
		}
	}
	s := v.Sample()
	if got := s[TPMPCRName(9)]; len(got) != 1 || got[0] != hex.EncodeToString(pcr9) {
		t.Errorf("sample tpm_pcr09 = %v", got)
	}

	// Without PCRs 0 and 1 there is no PCR 10.
	v, err = Compute(Inputs{Kernel: kernel, Initrd: initrdPath, Cmdline: cmdline, HasCmdline: true, Firmware: FirmwareOVMF, Memory: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := v.TPMPCRs[IMAPCR]; ok {
		t.Error("PCR 10 predicted without the firmware's PCRs 0 and 1")
	}
}

// TestComputeOVMFBindsTheImage: what changes which PCR.
func TestComputeOVMFBindsTheImage(t *testing.T) {
	initrd := bytes.Repeat([]byte("initrd"), 1000)
	pcrs := func(t *testing.T, initrd []byte, cmdline string, memory uint64) map[int][]byte {
		t.Helper()
		kernel, initrdPath := ovmfFiles(t, initrd)
		v, err := Compute(Inputs{Kernel: kernel, Initrd: initrdPath, Cmdline: cmdline, HasCmdline: true, Firmware: FirmwareOVMF, Memory: memory})
		if err != nil {
			t.Fatal(err)
		}
		return v.TPMPCRs
	}
	base := pcrs(t, initrd, "console=ttyS0", 512<<20)
	flipped := bytes.Clone(initrd)
	flipped[17] ^= 1
	tests := []struct {
		name       string
		got        map[int][]byte
		pcr4, pcr9 bool // changed
	}{
		{"one initrd byte", pcrs(t, flipped, "console=ttyS0", 512<<20), false, true},
		{"initrd size", pcrs(t, append(bytes.Clone(initrd), 0), "console=ttyS0", 512<<20), true, true},
		{"command line", pcrs(t, initrd, "console=ttyS1", 512<<20), false, true},
		{"memory", pcrs(t, initrd, "console=ttyS0", 1<<30), true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if c := !bytes.Equal(tc.got[4], base[4]); c != tc.pcr4 {
				t.Errorf("PCR 4 changed: %v, want %v", c, tc.pcr4)
			}
			if c := !bytes.Equal(tc.got[9], base[9]); c != tc.pcr9 {
				t.Errorf("PCR 9 changed: %v, want %v", c, tc.pcr9)
			}
			for _, i := range []int{2, 3, 5, 6, 7} {
				if !bytes.Equal(tc.got[i], base[i]) {
					t.Errorf("PCR %d changed", i)
				}
			}
		})
	}
}

func TestComputeOVMFErrors(t *testing.T) {
	kernel, initrdPath := ovmfFiles(t, []byte("initrd"))
	bad, _ := ovmfFiles(t, []byte("initrd"))
	if err := os.WriteFile(bad, []byte("not a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	full := Inputs{Kernel: kernel, Initrd: initrdPath, Cmdline: "c", HasCmdline: true, Firmware: FirmwareOVMF, Memory: 512 << 20}
	tests := []struct {
		name string
		edit func(in *Inputs)
		want string
	}{
		{"no memory", func(in *Inputs) { in.Memory = 0 }, "memory"},
		{"no command line", func(in *Inputs) { in.Cmdline, in.HasCmdline = "", false }, "cmdline"},
		{"no initrd", func(in *Inputs) { in.Initrd = "" }, "initrd"},
		{"not a kernel", func(in *Inputs) { in.Kernel = bad }, "HdrS"},
		{"missing initrd", func(in *Inputs) { in.Initrd = initrdPath + ".missing" }, "initrd"},
		{"pcr 9 disagrees", func(in *Inputs) { in.TPMPCRs = map[int][]byte{9: make([]byte, 32)} }, "OVMF"},
		{"unknown firmware", func(in *Inputs) { in.Firmware = "uboot" }, "ovmf"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := full
			tc.edit(&in)
			_, err := Compute(in)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}
