package dm

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
)

// IntegritySuperblock is what a formatted dm-integrity device records in
// its first 512 bytes (the kernel's struct superblock, little endian). It
// is read from a disk the host controls: the kernel checks it again when
// the table is loaded, so a reader only uses it to choose and validate the
// table.
type IntegritySuperblock struct {
	Version               uint8
	LogInterleaveSectors  uint8
	TagSize               uint16
	JournalSections       uint32
	ProvidedDataSectors   uint64 // what the device offers above it
	Flags                 uint32
	LogSectorsPerBlock    uint8
	LogBlocksPerBitmapBit uint8
}

// Superblock flags (dm-integrity.c SB_FLAG_*).
const (
	IntegrityFlagJournalMAC   = 0x1
	IntegrityFlagRecalculate  = 0x2
	IntegrityFlagDirtyBitmap  = 0x4
	IntegrityFlagFixedPadding = 0x8
	IntegrityFlagFixedHMAC    = 0x10
	IntegrityFlagInline       = 0x20
)

// integrityMagic is the superblock's magic ("integrt" and a NUL).
const integrityMagic = "integrt\x00"

// BlockSize is the data block of one tag, in bytes.
func (sb IntegritySuperblock) BlockSize() uint32 { return SectorSize << sb.LogSectorsPerBlock }

// ReadIntegritySuperblock reads and sanity-checks the dm-integrity
// superblock at byte offset off of r. A missing magic wraps
// errdefs.ErrNotFound (the device was never formatted); an implausible
// field wraps errdefs.ErrInvalidArgument and names it.
func ReadIntegritySuperblock(r io.ReaderAt, off int64) (IntegritySuperblock, error) {
	var b [64]byte
	if _, err := r.ReadAt(b[:], off); err != nil {
		return IntegritySuperblock{}, fmt.Errorf("reading the dm-integrity superblock at byte %d: %w", off, err)
	}
	if string(b[:8]) != integrityMagic {
		return IntegritySuperblock{}, fmt.Errorf("no dm-integrity superblock at byte %d: %w", off, errdefs.ErrNotFound)
	}
	sb := IntegritySuperblock{
		Version:               b[8],
		LogInterleaveSectors:  b[9],
		TagSize:               binary.LittleEndian.Uint16(b[10:]),
		JournalSections:       binary.LittleEndian.Uint32(b[12:]),
		ProvidedDataSectors:   binary.LittleEndian.Uint64(b[16:]),
		Flags:                 binary.LittleEndian.Uint32(b[24:]),
		LogSectorsPerBlock:    b[28],
		LogBlocksPerBitmapBit: b[29],
	}
	bad := func(field string, v any) (IntegritySuperblock, error) {
		return IntegritySuperblock{}, fmt.Errorf("dm-integrity superblock at byte %d: %s %v is out of range: %w", off, field, v, errdefs.ErrInvalidArgument)
	}
	switch {
	case sb.Version < 1 || sb.Version > 6:
		return bad("version", sb.Version)
	case sb.TagSize == 0 || sb.TagSize > 1024:
		return bad("tag size", sb.TagSize)
	case sb.LogSectorsPerBlock > 3:
		return bad("log2 sectors per block", sb.LogSectorsPerBlock)
	case sb.ProvidedDataSectors == 0 || sb.ProvidedDataSectors%(1<<sb.LogSectorsPerBlock) != 0:
		return bad("provided data sectors", sb.ProvidedDataSectors)
	}
	return sb, nil
}
