package eventlog

import (
	"bytes"
	"crypto"
	_ "crypto/sha256" // register SHA-256
	_ "crypto/sha512" // register SHA-384, SHA-512
	"encoding/binary"
	"fmt"

	"github.com/containerd/errdefs"
)

// Alg is a TCG algorithm identifier (TPM_ALG_ID).
type Alg uint16

// TCG algorithm identifiers used in CC event logs.
const (
	AlgSHA1   Alg = 0x0004
	AlgSHA256 Alg = 0x000B
	AlgSHA384 Alg = 0x000C
	AlgSHA512 Alg = 0x000D
	AlgSM3    Alg = 0x0012
)

// Size returns the digest size of a, or 0 for an unknown algorithm.
func (a Alg) Size() int {
	switch a {
	case AlgSHA1:
		return 20
	case AlgSHA256, AlgSM3:
		return 32
	case AlgSHA384:
		return 48
	case AlgSHA512:
		return 64
	}
	return 0
}

// Hash returns the Go hash for a (0 for SM3 and unknown algorithms).
func (a Alg) Hash() crypto.Hash {
	switch a {
	case AlgSHA1:
		return crypto.SHA1
	case AlgSHA256:
		return crypto.SHA256
	case AlgSHA384:
		return crypto.SHA384
	case AlgSHA512:
		return crypto.SHA512
	}
	return 0
}

// AlgFromHash maps a Go hash to its TCG identifier.
func AlgFromHash(h crypto.Hash) (Alg, error) {
	switch h {
	case crypto.SHA256:
		return AlgSHA256, nil
	case crypto.SHA384:
		return AlgSHA384, nil
	case crypto.SHA512:
		return AlgSHA512, nil
	}
	return 0, fmt.Errorf("event log hash %v: not supported: %w", h, errdefs.ErrNotImplemented)
}

func (a Alg) sum(parts ...[]byte) ([]byte, error) {
	h := a.Hash()
	if h == 0 || !h.Available() {
		return nil, fmt.Errorf("algorithm %#04x: no implementation: %w", uint16(a), errdefs.ErrNotImplemented)
	}
	w := h.New()
	for _, p := range parts {
		w.Write(p)
	}
	return w.Sum(nil), nil
}

// Event types and tags.
const (
	// EvNoAction is EV_NO_ACTION (the spec-ID header event).
	EvNoAction uint32 = 0x00000003
	// EvEventTag is EV_EVENT_TAG, the type of every AAEL entry.
	EvEventTag uint32 = 0x00000006
	// AAELTag is the tagged-event ID of AAEL events ("AAEL" as a big-endian
	// u32, stored little-endian as "LEAA").
	AAELTag uint32 = 0x4141454C
)

// Digest is one digest of an entry.
type Digest struct {
	Alg   Alg
	Value []byte
}

// Entry is one TCG2 crypto-agile event log entry (TCG_PCR_EVENT2).
type Entry struct {
	// Register is the CC measurement register index (TDX: 1..4 = RTMR0..3;
	// vTPM: the PCR index).
	Register uint32
	Type     uint32
	Digests  []Digest
	Data     []byte
}

// NewEntry returns the AAEL entry for ev in register, with its digest in alg.
func NewEntry(ev Event, register uint32, alg Alg) (Entry, error) {
	if err := ev.Validate(); err != nil {
		return Entry{}, err
	}
	text := ev.String()
	data := make([]byte, 8, 8+len(text))
	binary.LittleEndian.PutUint32(data[0:], AAELTag)
	binary.LittleEndian.PutUint32(data[4:], uint32(len(text)))
	data = append(data, text...)
	d, err := alg.sum(data)
	if err != nil {
		return Entry{}, err
	}
	return Entry{Register: register, Type: EvEventTag, Digests: []Digest{{Alg: alg, Value: d}}, Data: data}, nil
}

// Marshal returns the entry's log bytes.
func (e Entry) Marshal() []byte {
	n := 16 + len(e.Data)
	for _, d := range e.Digests {
		n += 2 + len(d.Value)
	}
	b := make([]byte, 0, n)
	b = binary.LittleEndian.AppendUint32(b, e.Register)
	b = binary.LittleEndian.AppendUint32(b, e.Type)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Digests)))
	for _, d := range e.Digests {
		b = binary.LittleEndian.AppendUint16(b, uint16(d.Alg))
		b = append(b, d.Value...)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Data)))
	return append(b, e.Data...)
}

// Digest returns the entry's digest for alg.
func (e Entry) Digest(alg Alg) ([]byte, bool) {
	for _, d := range e.Digests {
		if d.Alg == alg {
			return d.Value, true
		}
	}
	return nil, false
}

// AAEL decodes the entry's AAEL event. ok is false for entries that are not
// AAEL tagged events.
func (e Entry) AAEL() (ev Event, ok bool, err error) {
	if e.Type != EvEventTag || len(e.Data) < 8 || binary.LittleEndian.Uint32(e.Data) != AAELTag {
		return Event{}, false, nil
	}
	n := binary.LittleEndian.Uint32(e.Data[4:])
	if uint64(n) != uint64(len(e.Data)-8) {
		return Event{}, true, fmt.Errorf("AAEL event: text length %d, data holds %d: %w", n, len(e.Data)-8, errdefs.ErrDataLoss)
	}
	ev, err = ParseEventText(string(e.Data[8:]))
	if err != nil {
		return Event{}, true, fmt.Errorf("AAEL event: %w", err)
	}
	return ev, true, nil
}

// maxDigests bounds the digest count of one entry (one per bank).
const maxDigests = 16

// parseEntry parses one crypto-agile entry from b and returns it with its size.
func parseEntry(b []byte) (Entry, int, error) {
	bad := func(what string) (Entry, int, error) {
		return Entry{}, 0, fmt.Errorf("event log entry: %s: %w", what, errdefs.ErrDataLoss)
	}
	if len(b) < 12 {
		return bad("truncated header")
	}
	e := Entry{Register: binary.LittleEndian.Uint32(b), Type: binary.LittleEndian.Uint32(b[4:])}
	count := binary.LittleEndian.Uint32(b[8:])
	if count > maxDigests {
		return bad(fmt.Sprintf("%d digests", count))
	}
	off := 12
	for range count {
		if len(b) < off+2 {
			return bad("truncated digest")
		}
		alg := Alg(binary.LittleEndian.Uint16(b[off:]))
		size := alg.Size()
		if size == 0 {
			return bad(fmt.Sprintf("unknown digest algorithm %#04x", uint16(alg)))
		}
		off += 2
		if len(b) < off+size {
			return bad("truncated digest")
		}
		e.Digests = append(e.Digests, Digest{Alg: alg, Value: bytes.Clone(b[off : off+size])})
		off += size
	}
	if len(b) < off+4 {
		return bad("truncated event size")
	}
	n := binary.LittleEndian.Uint32(b[off:])
	off += 4
	if uint64(len(b)-off) < uint64(n) {
		return bad(fmt.Sprintf("event size %d exceeds the %d bytes left", n, len(b)-off))
	}
	e.Data = bytes.Clone(b[off : off+int(n)])
	return e, off + int(n), nil
}

// Parse parses an AAEL file: crypto-agile entries back to back, no header.
func Parse(b []byte) ([]Entry, error) {
	var out []Entry
	for off := 0; off < len(b); {
		e, n, err := parseEntry(b[off:])
		if err != nil {
			return nil, fmt.Errorf("at offset %d: %w", off, err)
		}
		out = append(out, e)
		off += n
	}
	return out, nil
}

// Replay computes the value register holds after extending initial (zeros
// when nil) with the alg digest of every entry for register, in order:
// v = H(v || digest). AAEL entries must carry the correct digest of their
// data; other entries are taken as logged.
func Replay(entries []Entry, register uint32, alg Alg, initial []byte) ([]byte, error) {
	size := alg.Size()
	if size == 0 || alg.Hash() == 0 {
		return nil, fmt.Errorf("replay: algorithm %#04x: %w", uint16(alg), errdefs.ErrNotImplemented)
	}
	v := make([]byte, size)
	if initial != nil {
		if len(initial) != size {
			return nil, fmt.Errorf("replay: initial value is %d bytes, want %d: %w", len(initial), size, errdefs.ErrInvalidArgument)
		}
		copy(v, initial)
	}
	for i, e := range entries {
		if e.Register != register {
			continue
		}
		d, ok := e.Digest(alg)
		if !ok {
			return nil, fmt.Errorf("replay: entry %d has no %#04x digest: %w", i, uint16(alg), errdefs.ErrDataLoss)
		}
		if _, isAAEL, _ := e.AAEL(); isAAEL {
			want, err := alg.sum(e.Data)
			if err != nil {
				return nil, err
			}
			if !bytes.Equal(d, want) {
				return nil, fmt.Errorf("replay: entry %d: digest does not match its event: %w", i, errdefs.ErrDataLoss)
			}
		}
		var err error
		if v, err = alg.sum(v, d); err != nil {
			return nil, err
		}
	}
	return v, nil
}
