package refvalues

import (
	"crypto"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/containerd/errdefs"
)

// PE/COFF layout (Microsoft PE format; what edk2's PeCoffLib reads).
const (
	peSignatureOffsetField = 0x3c // e_lfanew in the DOS header
	peFileHeaderSize       = 20
	peMagicPE32            = 0x10b
	peMagicPE32Plus        = 0x20b
	peChecksumOffset       = 64 // in the optional header, PE32 and PE32+
	peSectionHeaderSize    = 40
	peSecurityDirectory    = 4 // EFI_IMAGE_DIRECTORY_ENTRY_SECURITY
)

// PEAuthenticode returns the Authenticode digest of a PE/COFF image: what
// UEFI firmware measures for an EFI application it loads
// (EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4) and what a signature over
// the image covers. It follows edk2's DxeTpm2MeasureBootLib exactly: the
// headers up to SizeOfHeaders without the CheckSum field and the
// certificate table's data directory entry; then each section with raw
// data, in order of PointerToRawData; then whatever follows, up to the
// file's end minus the certificate table (the attribute certificates are
// never hashed).
func PEAuthenticode(img []byte, h crypto.Hash) ([]byte, error) {
	if !h.Available() {
		return nil, fmt.Errorf("authenticode: hash %v unavailable: %w", h, errdefs.ErrInvalidArgument)
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("authenticode: not a PE image: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	le := binary.LittleEndian
	size := uint64(len(img))
	if size < peSignatureOffsetField+4 || img[0] != 'M' || img[1] != 'Z' {
		return nil, bad("no MZ header")
	}
	pe := uint64(le.Uint32(img[peSignatureOffsetField:]))
	if pe+4+peFileHeaderSize > size || string(img[pe:pe+4]) != "PE\x00\x00" {
		return nil, bad("no PE signature at %#x", pe)
	}
	nsec := uint64(le.Uint16(img[pe+4+2:]))
	optSize := uint64(le.Uint16(img[pe+4+16:]))
	opt := pe + 4 + peFileHeaderSize
	if opt+optSize > size || optSize < 2 {
		return nil, bad("optional header beyond the file")
	}
	var ddOffset, nrvaOffset uint64
	switch magic := le.Uint16(img[opt:]); magic {
	case peMagicPE32:
		nrvaOffset, ddOffset = 92, 96
	case peMagicPE32Plus:
		nrvaOffset, ddOffset = 108, 112
	default:
		return nil, bad("optional header magic %#x", magic)
	}
	if nrvaOffset+4 > optSize {
		return nil, bad("optional header of %d bytes too short", optSize)
	}
	headers := uint64(le.Uint32(img[opt+60:])) // SizeOfHeaders
	nrva := uint64(le.Uint32(img[opt+nrvaOffset:]))
	if ddOffset+8*nrva > optSize {
		return nil, bad("%d data directories do not fit the optional header", nrva)
	}
	secTable := opt + optSize
	if secTable+nsec*peSectionHeaderSize > size {
		return nil, bad("section table beyond the file")
	}
	checksum := opt + peChecksumOffset
	if headers > size || headers < secTable+nsec*peSectionHeaderSize {
		return nil, bad("SizeOfHeaders %#x does not cover the section table", headers)
	}
	d := h.New()
	d.Write(img[:checksum])
	var certSize uint64
	if nrva <= peSecurityDirectory {
		d.Write(img[checksum+4 : headers])
	} else {
		sec := opt + ddOffset + 8*peSecurityDirectory
		d.Write(img[checksum+4 : sec])
		d.Write(img[sec+8 : headers])
		certSize = uint64(le.Uint32(img[sec+4:]))
	}
	type section struct{ off, n uint64 }
	secs := make([]section, 0, nsec)
	for i := range nsec {
		s := img[secTable+i*peSectionHeaderSize:]
		secs = append(secs, section{off: uint64(le.Uint32(s[20:])), n: uint64(le.Uint32(s[16:]))})
	}
	slices.SortStableFunc(secs, func(a, b section) int {
		switch {
		case a.off < b.off:
			return -1
		case a.off > b.off:
			return 1
		}
		return 0
	})
	sum := headers
	for i, s := range secs {
		if s.n == 0 {
			continue
		}
		if s.off+s.n > size {
			return nil, bad("section %d (raw data %#x+%#x) beyond the file", i, s.off, s.n)
		}
		d.Write(img[s.off : s.off+s.n])
		sum += s.n
	}
	if size > sum {
		if size < sum+certSize {
			return nil, bad("certificate table (%d bytes) overlaps the hashed data", certSize)
		}
		d.Write(img[sum : size-certSize])
	}
	return d.Sum(nil), nil
}
