package snp

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/containerd/errdefs"
)

// Certificate table GUIDs (GHCB specification) and their sev crate names.
var certTypes = []struct {
	name string
	guid string
}{
	{"ARK", "c0b406a4-a803-4952-9743-3fb6014cd0ae"},
	{"ASK", "4ab7b379-bbac-4fe4-a02f-05aef327c782"},
	{"VCEK", "63da758d-e664-4564-adc5-f4b93be8accd"},
	{"VLEK", "a8074bc2-a25a-483e-aae6-39c045a0b8a1"},
	{"CRL", "92f81bc3-5811-4d3d-97ff-d19f88dc67ea"},
	{"Empty", "00000000-0000-0000-0000-000000000000"},
}

// sortRank orders entries as the sev crate's CertType Ord does; the Rust
// attester sorts the table before serializing it.
var sortRank = map[string]int{"ARK": 0, "VCEK": 1, "VLEK": 2, "ASK": 3, "CRL": 4, "": 5, "Empty": 6}

// GUID is a certificate table GUID in table (RFC 4122 big-endian) order.
type GUID [16]byte

// String formats the GUID in lowercase hyphenated form.
func (g GUID) String() string {
	h := hex.EncodeToString(g[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// ParseGUID parses the hyphenated form.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, fmt.Errorf("guid %q: malformed: %w", s, errdefs.ErrInvalidArgument)
	}
	b, err := hex.DecodeString(s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:])
	if err != nil {
		return g, fmt.Errorf("guid %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	copy(g[:], b)
	return g, nil
}

// Name returns the sev crate's name for g ("ARK", "VCEK", ...) or "" for
// other GUIDs.
func (g GUID) Name() string {
	s := g.String()
	for _, t := range certTypes {
		if t.guid == s {
			return t.name
		}
	}
	return ""
}

// CertEntry is one certificate table entry, serialized as the sev crate's
// CertTableEntry: {"cert_type":"VCEK"|…|{"OTHER":"<guid>"},"data":[ints]}.
type CertEntry struct {
	GUID GUID
	Data []byte
}

// MarshalJSON implements json.Marshaler.
func (e CertEntry) MarshalJSON() ([]byte, error) {
	b := []byte(`{"cert_type":`)
	if n := e.GUID.Name(); n != "" {
		b = strconv.AppendQuote(b, n)
	} else {
		b = append(b, `{"OTHER":"`+e.GUID.String()+`"}`...)
	}
	b = append(b, `,"data":`...)
	return append(appendIntArray(b, e.Data), '}'), nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (e *CertEntry) UnmarshalJSON(b []byte) error {
	var raw struct {
		CertType json.RawMessage `json:"cert_type"`
		Data     []uint8Num      `json:"data"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	var name string
	if err := json.Unmarshal(raw.CertType, &name); err == nil {
		found := false
		for _, t := range certTypes {
			if t.name == name {
				e.GUID, _ = ParseGUID(t.guid)
				found = true
			}
		}
		if !found {
			return fmt.Errorf("cert_type %q: unknown: %w", name, errdefs.ErrInvalidArgument)
		}
	} else {
		var other struct {
			OTHER string `json:"OTHER"`
		}
		if err := json.Unmarshal(raw.CertType, &other); err != nil {
			return fmt.Errorf("cert_type: %w", err)
		}
		g, err := ParseGUID(other.OTHER)
		if err != nil {
			return err
		}
		e.GUID = g
	}
	e.Data = make([]byte, len(raw.Data))
	for i, v := range raw.Data {
		e.Data[i] = byte(v)
	}
	return nil
}

// uint8Num decodes one JSON integer 0..255.
type uint8Num uint8

func appendIntArray(b, data []byte) []byte {
	b = append(b, '[')
	for i, c := range data {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, uint64(c), 10)
	}
	return append(b, ']')
}

const (
	certEntrySize = 24
	// maxCertTable bounds a host-supplied certificate table.
	maxCertTable = 1 << 20
)

// ParseCertTable decodes the GHCB certificate table the host supplies with an
// extended report: {GUID, u32 offset, u32 length} entries up to an all-zero
// GUID, each pointing into the same buffer. The host is untrusted: every
// offset and length is bounds-checked. Entries are returned in the sev
// crate's sort order (ARK, VCEK, VLEK, ASK, CRL, others by GUID). go-sev-guest's
// synthetic extra-platform-info entry is dropped.
func ParseCertTable(b []byte) ([]CertEntry, error) {
	bad := func(format string, args ...any) ([]CertEntry, error) {
		return nil, fmt.Errorf("snp certificate table: "+format+": %w", append(args, errdefs.ErrInvalidArgument)...)
	}
	if len(b) > maxCertTable {
		return bad("%d bytes exceed %d", len(b), maxCertTable)
	}
	out := []CertEntry{}
	for off := 0; ; off += certEntrySize {
		if len(b)-off < certEntrySize {
			if off+16 <= len(b) && allZero(b[off:off+16]) {
				break // terminator GUID without offset/length fields
			}
			return bad("no terminating entry")
		}
		var g GUID
		copy(g[:], b[off:])
		if g == (GUID{}) {
			break
		}
		start := uint64(binary.LittleEndian.Uint32(b[off+16:]))
		n := uint64(binary.LittleEndian.Uint32(b[off+20:]))
		if start+n > uint64(len(b)) {
			return bad("entry %s spans %d+%d beyond %d bytes", g, start, n, len(b))
		}
		if g.String() == extraPlatformInfoGUID {
			continue
		}
		out = append(out, CertEntry{GUID: g, Data: bytes.Clone(b[start : start+n])})
	}
	slices.SortStableFunc(out, func(a, b CertEntry) int {
		ra, rb := sortRank[a.GUID.Name()], sortRank[b.GUID.Name()]
		if ra != rb {
			return ra - rb
		}
		if a.GUID.Name() == "" {
			return bytes.Compare(a.GUID[:], b.GUID[:])
		}
		return 0
	})
	return out, nil
}

// extraPlatformInfoGUID marks go-sev-guest's synthetic entry (not from the
// host) in raw quotes from its quote providers.
const extraPlatformInfoGUID = "ecae0c0f-9502-43b1-afa2-0ae2e0d565b6"

// MarshalCertTable encodes entries as a GHCB certificate table.
func MarshalCertTable(entries []CertEntry) []byte {
	header := (len(entries) + 1) * certEntrySize
	out := make([]byte, header)
	for i, e := range entries {
		copy(out[i*certEntrySize:], e.GUID[:])
		binary.LittleEndian.PutUint32(out[i*certEntrySize+16:], uint32(len(out)))
		binary.LittleEndian.PutUint32(out[i*certEntrySize+20:], uint32(len(e.Data)))
		out = append(out, e.Data...)
	}
	return out
}
