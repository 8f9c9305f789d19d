package eventlog

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/containerd/errdefs"
)

// SpecIDHeader is the fixed 69-byte EV_NO_ACTION event guest-components puts
// in front of the AAEL when there is no CCEL: PCR 0, a zero SHA-1 digest and
// a 37-byte body declaring SHA-384 (48) and SM3 (32) digests.
var SpecIDHeader = [69]byte{
	0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x25, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x0C, 0x00, 0x30, 0x00,
	0x12, 0x00, 0x20, 0x00, 0x00,
}

// EndMarker terminates a cc_eventlog.
var EndMarker = [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// headerSize is the size of a legacy TCG_PCR_EVENT header before its data:
// PCR index, event type, SHA-1 digest, event size.
const headerSize = 4 + 4 + 20 + 4

// TrimCCEL cuts the CCEL ACPI table data after its last event. The first
// event is the legacy-format spec-ID event (EV_NO_ACTION); the crypto-agile
// events follow until an 8-byte all-0xFF or all-zero marker.
func TrimCCEL(ccel []byte) ([]byte, error) {
	bad := func(what string) ([]byte, error) {
		return nil, fmt.Errorf("CCEL: %s: %w", what, errdefs.ErrDataLoss)
	}
	if len(ccel) < headerSize {
		return bad("shorter than one event")
	}
	off := 8 + 20
	if binary.LittleEndian.Uint32(ccel[4:]) == EvNoAction {
		n := binary.LittleEndian.Uint32(ccel[off:])
		off += 4
		if uint64(len(ccel)-off) < uint64(n) {
			return bad("spec-ID event exceeds the table")
		}
		off += int(n)
	}
	for {
		if len(ccel)-off < 8 {
			return bad("no end marker")
		}
		if m := ccel[off : off+8]; bytes.Equal(m, EndMarker[:]) || bytes.Equal(m, make([]byte, 8)) {
			return bytes.Clone(ccel[:off]), nil
		}
		_, n, err := parseEntry(ccel[off:])
		if err != nil {
			return nil, fmt.Errorf("CCEL at offset %d: %w", off, err)
		}
		off += n
	}
}

// CCEventLog assembles the cc_eventlog of TDX evidence from the CCEL table
// data and the AAEL file, with nil meaning "absent" (an empty, non-nil slice
// is a present but empty file): the trimmed CCEL (or SpecIDHeader when
// there is no CCEL but an AAEL), the AAEL, then EndMarker. It returns nil
// when both are absent.
func CCEventLog(ccel, aael []byte) ([]byte, error) {
	var out []byte
	if ccel != nil {
		t, err := TrimCCEL(ccel)
		if err != nil {
			return nil, err
		}
		out = t
	}
	if aael != nil {
		if len(out) == 0 {
			out = append(out, SpecIDHeader[:]...)
		}
		out = append(out, aael...)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return append(out, EndMarker[:]...), nil
}

// ParseCCEventLog parses a cc_eventlog (or a CCEL): the legacy-format first
// event, then crypto-agile entries up to an end marker or the end of data.
func ParseCCEventLog(b []byte) (first Entry, entries []Entry, err error) {
	if len(b) < headerSize {
		return Entry{}, nil, fmt.Errorf("cc eventlog: shorter than one event: %w", errdefs.ErrDataLoss)
	}
	first = Entry{
		Register: binary.LittleEndian.Uint32(b),
		Type:     binary.LittleEndian.Uint32(b[4:]),
		Digests:  []Digest{{Alg: AlgSHA1, Value: bytes.Clone(b[8:28])}},
	}
	n := binary.LittleEndian.Uint32(b[28:])
	if uint64(len(b)-headerSize) < uint64(n) {
		return Entry{}, nil, fmt.Errorf("cc eventlog: first event exceeds the data: %w", errdefs.ErrDataLoss)
	}
	first.Data = bytes.Clone(b[headerSize : headerSize+int(n)])
	for off := headerSize + int(n); off < len(b); {
		if len(b)-off >= 8 {
			if m := b[off : off+8]; bytes.Equal(m, EndMarker[:]) || bytes.Equal(m, make([]byte, 8)) {
				break
			}
		}
		e, n, err := parseEntry(b[off:])
		if err != nil {
			return Entry{}, nil, fmt.Errorf("cc eventlog at offset %d: %w", off, err)
		}
		entries = append(entries, e)
		off += n
	}
	return first, entries, nil
}
