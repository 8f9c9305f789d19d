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
	"testing"

	"github.com/containerd/errdefs"
)

// miniSignedDigest is osslsigncode's Authenticode digest of
// testdata/mini-bzimage.signed.efi (see testdata/README.md).
const miniSignedDigest = "236993303a3d6e1af8ccc409795132f30e0f4e297c74c0c68abbbd364dea90dc"

func miniImage(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "mini-bzimage.signed.efi"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Offsets in the mini image.
const (
	miniOpt      = 0x58                // optional header
	miniChecksum = miniOpt + 64        // CheckSum
	miniCertDir  = miniOpt + 112 + 8*4 // security data directory entry
	miniText     = 0x600               // first section in the table, second in the file
	miniTrailing = 0x800               // after the last section, before the certificates
)

func TestPEAuthenticodeVector(t *testing.T) {
	img := miniImage(t)
	got, err := PEAuthenticode(img, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(got) != miniSignedDigest {
		t.Fatalf("digest %x, osslsigncode computes %s", got, miniSignedDigest)
	}
	// The same image before signing: no certificate table, the data
	// directory entry and checksum zero. Same digest.
	le := binary.LittleEndian
	certOff, certSize := le.Uint32(img[miniCertDir:]), le.Uint32(img[miniCertDir+4:])
	if int(certOff)+int(certSize) != len(img) {
		t.Fatalf("certificate table %#x+%#x does not end the %#x-byte image", certOff, certSize, len(img))
	}
	unsigned := bytes.Clone(img[:certOff])
	clear(unsigned[miniCertDir : miniCertDir+8])
	clear(unsigned[miniChecksum : miniChecksum+4])
	got, err = PEAuthenticode(unsigned, crypto.SHA256)
	if err != nil || hex.EncodeToString(got) != miniSignedDigest {
		t.Fatalf("unsigned image: %x, %v; want %s", got, err, miniSignedDigest)
	}
}

// TestPEAuthenticodeCoverage flips one byte at a time: the checksum, the
// certificate directory entry and the certificates are not hashed;
// headers, every section and the trailing data are.
func TestPEAuthenticodeCoverage(t *testing.T) {
	img := miniImage(t)
	certOff := int(binary.LittleEndian.Uint32(img[miniCertDir:]))
	tests := []struct {
		name    string
		off     int
		changes bool
	}{
		{"checksum", miniChecksum + 1, false},
		{"certificate directory address", miniCertDir + 1, false},
		{"certificate table", certOff + 100, false},
		{"DOS header", 0x20, true},
		{"optional header", miniOpt + 16, true},
		{"setup header", 0x218, true},
		{"first section in the file", 0x410, true},
		{"second section in the file", miniText + 0x10, true},
		{"trailing data", miniTrailing + 1, true},
	}
	want, err := PEAuthenticode(img, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := bytes.Clone(img)
			b[tc.off] ^= 0x5a
			got, err := PEAuthenticode(b, crypto.SHA256)
			if err != nil {
				t.Fatal(err)
			}
			if changes := !bytes.Equal(got, want); changes != tc.changes {
				t.Fatalf("flipping %#x changes the digest: %v, want %v", tc.off, changes, tc.changes)
			}
		})
	}
}

func TestPEAuthenticodeInvalid(t *testing.T) {
	img := miniImage(t)
	le := binary.LittleEndian
	edit := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(img)) }
	tests := []struct {
		name string
		img  []byte
	}{
		{"empty", nil},
		{"no MZ", edit(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"PE offset beyond the file", edit(func(b []byte) []byte { le.PutUint32(b[0x3c:], 0xffffff00); return b })},
		{"no PE signature", edit(func(b []byte) []byte { b[0x41] = 'X'; return b })},
		{"bad magic", edit(func(b []byte) []byte { le.PutUint16(b[miniOpt:], 0x107); return b })},
		{"too many data directories", edit(func(b []byte) []byte { le.PutUint32(b[miniOpt+108:], 1000); return b })},
		{"section table beyond the file", edit(func(b []byte) []byte { le.PutUint16(b[0x46:], 0xffff); return b })},
		{"SizeOfHeaders beyond the file", edit(func(b []byte) []byte { le.PutUint32(b[miniOpt+60:], 0xffffff); return b })},
		{"section beyond the file", edit(func(b []byte) []byte { le.PutUint32(b[miniOpt+240+16:], 0xfffff000); return b })},
		{"certificates overlap the sections", edit(func(b []byte) []byte { le.PutUint32(b[miniCertDir+4:], 0x10000); return b })},
		{"truncated", img[:0x300]},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := PEAuthenticode(tc.img, crypto.SHA256)
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("err = %v, want invalid argument", err)
			}
		})
	}
}

// debianKernel is the Debian cloud kernel the VM tests booted when the
// OVMF measurements were recorded: its file SHA-256, the Authenticode
// digest its signature covers (osslsigncode), and PCR 4's application
// event digest in a real boot's event log (QEMU 7.2 q35, 512 MiB, an
// initrd of 11120227 bytes).
var debianKernel = struct {
	path, fileSHA256, authenticode, measured string
	initrdSize                               int64
}{
	"/var/cache/cova-vm/6.1.0-56-cloud-amd64/boot/vmlinuz-6.1.0-56-cloud-amd64",
	"51349501a3d1ff83836437d2b365fd2d57f2feb8642d315e5181dec23d4c3275",
	"5f21ff2c0d5d899842b28a8b19901ba72cf7a7ab93c02a77fadc6ff72be85b31",
	"d262bc58b65ce9651f433b4a3ef67d2513e67c98e8d59bb34ccb377fb5b40948",
	11120227,
}

// TestDebianKernelMeasurement checks the recorded vectors against the
// kernel when this machine has that exact file (the VM tests' cache).
func TestDebianKernelMeasurement(t *testing.T) {
	k, err := os.ReadFile(debianKernel.path)
	if err != nil {
		t.Skipf("the recorded Debian kernel is not here: %v", err)
	}
	if s := sha256.Sum256(k); hex.EncodeToString(s[:]) != debianKernel.fileSHA256 {
		t.Skipf("%s is another build than the recorded one", debianKernel.path)
	}
	d, err := PEAuthenticode(k, crypto.SHA256)
	if err != nil || hex.EncodeToString(d) != debianKernel.authenticode {
		t.Fatalf("file digest %x, %v; its signature covers %s", d, err, debianKernel.authenticode)
	}
	img, err := QEMUKernelImage(k, debianKernel.initrdSize, "console=ttyS0", 512<<20)
	if err != nil {
		t.Fatal(err)
	}
	d, err = PEAuthenticode(img, crypto.SHA256)
	if err != nil || hex.EncodeToString(d) != debianKernel.measured {
		t.Fatalf("measured digest %x, %v; the boot's event log has %s", d, err, debianKernel.measured)
	}
}
