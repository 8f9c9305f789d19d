// Package initdata reads, checks and binds CoCo initdata: the TOML document
// the host hands the guest at launch (AA and CDH configuration, the agent
// policy) whose digest the host also writes into a launch-time hardware field
// (TDX MRCONFIGID, SNP HOST_DATA) or that the guest measures into vTPM PCR 8.
//
// The document arrives as Kata's initdata block device: the 8-byte magic
// "initdata", the length of the gzip data as a little-endian u64, the gzip
// data, zero padding. Find scans /dev/vd* and /dev/sd* for it, Decode and
// Parse check every field with hard size bounds, Bind has the primary
// attester check (or establish) the hardware binding of the digest, and Write
// puts initdata.toml, aa.toml and cdh.toml where kata-agent does. Load runs
// the whole sequence for the agent's boot path.
//
// The digest is taken over the exact decompressed TOML bytes with the
// document's own algorithm (sha256, sha384 or sha512), never over a
// re-encoding, so it matches what the host computed and what trustee
// recomputes from the init-data it receives.
//
// Failure classes matter: only ErrNotPresent (no device carries the magic)
// means "no initdata". Every other error (an I/O error on a device, a bad
// header, oversize data, broken gzip, bad TOML, an unknown version or
// algorithm, a binding mismatch) must stop the boot.
package initdata

import (
	"crypto"
	_ "crypto/sha256" // digest algorithms initdata may name
	_ "crypto/sha512"
	"errors"
	"fmt"
	"maps"
	"slices"
	"unicode/utf8"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester"
)

// Wire and file facts.
const (
	// Magic starts the initdata block device.
	Magic = "initdata"
	// HeaderSize is the magic plus the u64 little-endian gzip length.
	HeaderSize = len(Magic) + 8
	// Version is the only initdata version there is.
	Version = "0.1.0"
	// MaxCompressedSize bounds the gzip data the device may declare.
	MaxCompressedSize = 1 << 20
	// MaxTOMLSize bounds the decompressed document.
	MaxTOMLSize = 8 << 20
)

// Keys of the data table the guest components consume.
const (
	KeyAAConfig  = "aa.toml"
	KeyCDHConfig = "cdh.toml"
	KeyPolicy    = "policy.rego"
)

// Sentinel errors. Each wraps an errdefs class; match them with errors.Is.
var (
	// ErrNotPresent: no device carries the initdata magic. The only result
	// that means "boot without initdata".
	ErrNotPresent = fmt.Errorf("no initdata device: %w", errdefs.ErrNotFound)
	// ErrIO: reading a candidate device (or listing the device directory)
	// failed; the underlying error (e.g. syscall.EIO) is wrapped too.
	ErrIO = fmt.Errorf("initdata device I/O error: %w", errdefs.ErrUnavailable)
	// ErrBadMagic: the device named as the initdata device does not start
	// with the magic.
	ErrBadMagic = fmt.Errorf("initdata device: bad magic: %w", errdefs.ErrInvalidArgument)
	// ErrAmbiguous: more than one device carries the magic.
	ErrAmbiguous = fmt.Errorf("more than one initdata device: %w", errdefs.ErrConflict)
	// ErrTruncated: the device ends inside the header or the gzip data.
	ErrTruncated = fmt.Errorf("initdata device truncated: %w", errdefs.ErrInvalidArgument)
	// ErrTooLarge: the declared gzip length or the decompressed document
	// exceeds MaxCompressedSize or MaxTOMLSize.
	ErrTooLarge = fmt.Errorf("initdata too large: %w", errdefs.ErrOutOfRange)
	// ErrCompression: the gzip data is malformed, fails its checksum, is
	// empty, or has trailing bytes.
	ErrCompression = fmt.Errorf("initdata gzip data invalid: %w", errdefs.ErrInvalidArgument)
	// ErrSyntax: the document is not UTF-8 TOML with string fields version
	// and algorithm and a string-to-string table data.
	ErrSyntax = fmt.Errorf("initdata TOML invalid: %w", errdefs.ErrInvalidArgument)
	// ErrVersion: version is not Version.
	ErrVersion = fmt.Errorf("initdata version unsupported: %w", errdefs.ErrInvalidArgument)
	// ErrAlgorithm: algorithm is not sha256, sha384 or sha512.
	ErrAlgorithm = fmt.Errorf("initdata algorithm unsupported: %w", errdefs.ErrInvalidArgument)
	// ErrMismatch: the hardware-bound value differs from the digest. It is
	// attester.ErrInitdataMismatch.
	ErrMismatch = attester.ErrInitdataMismatch
)

// IsNotPresent reports whether err means "no initdata": the one error the
// agent may boot on.
func IsNotPresent(err error) bool { return errors.Is(err, ErrNotPresent) }

// algorithms maps the algorithm names initdata may use (kbs-types spelling)
// to hashes.
var algorithms = map[string]crypto.Hash{
	"sha256": crypto.SHA256,
	"sha384": crypto.SHA384,
	"sha512": crypto.SHA512,
}

// Initdata is a parsed, checked initdata document.
type Initdata struct {
	// Version is Version.
	Version string
	// Algorithm is the digest algorithm's name: sha256, sha384 or sha512.
	Algorithm string
	// Hash is Algorithm as a Go hash.
	Hash crypto.Hash
	// Data is the data table; keys other than the well-known ones are kept.
	Data map[string]string
	// TOML is the exact document, as decompressed from the device.
	TOML []byte
	// Digest is Hash over TOML.
	Digest []byte
	// Device is the device the document came from ("" when parsed from
	// bytes).
	Device string
}

// AAConfig returns the data entry aa.toml. Like CDHConfig and Policy it may
// be called on a nil *Initdata (no initdata device): ("", false).
func (d *Initdata) AAConfig() (string, bool) { return d.get(KeyAAConfig) }

// CDHConfig returns the data entry cdh.toml.
func (d *Initdata) CDHConfig() (string, bool) { return d.get(KeyCDHConfig) }

// Policy returns the data entry policy.rego (the agent policy).
func (d *Initdata) Policy() (string, bool) { return d.get(KeyPolicy) }

// Keys returns the data keys, sorted.
func (d *Initdata) Keys() []string { return slices.Sorted(maps.Keys(d.Data)) }

func (d *Initdata) get(key string) (string, bool) {
	if d == nil {
		return "", false
	}
	v, ok := d.Data[key]
	return v, ok
}

// Parse checks an initdata TOML document and computes its digest over the
// exact bytes. The document must be UTF-8 TOML whose version is Version,
// whose algorithm is sha256, sha384 or sha512, and whose data table maps
// strings to strings (it may be empty but must be present). Key names are
// case-sensitive; other top-level keys are ignored, as upstream does.
func Parse(b []byte) (*Initdata, error) {
	if len(b) > MaxTOMLSize {
		return nil, fmt.Errorf("document of %d bytes, limit %d: %w", len(b), MaxTOMLSize, ErrTooLarge)
	}
	if !utf8.Valid(b) {
		return nil, fmt.Errorf("document is not UTF-8: %w", ErrSyntax)
	}
	var doc map[string]any
	if _, err := toml.Decode(string(b), &doc); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrSyntax, err)
	}
	str := func(key string) (string, error) {
		v, ok := doc[key]
		if !ok {
			return "", fmt.Errorf("field %s: missing: %w", key, ErrSyntax)
		}
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("field %s: %T, want a string: %w", key, v, ErrSyntax)
		}
		return s, nil
	}
	version, err := str("version")
	if err != nil {
		return nil, err
	}
	algorithm, err := str("algorithm")
	if err != nil {
		return nil, err
	}
	rawData, ok := doc["data"]
	if !ok {
		return nil, fmt.Errorf("field data: missing: %w", ErrSyntax)
	}
	table, ok := rawData.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("field data: %T, want a table: %w", rawData, ErrSyntax)
	}
	data := make(map[string]string, len(table))
	for k, v := range table {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("field data.%q: %T, want a string: %w", k, v, ErrSyntax)
		}
		data[k] = s
	}
	if version != Version {
		return nil, fmt.Errorf("field version: %q, want %q: %w", version, Version, ErrVersion)
	}
	h, ok := algorithms[algorithm]
	if !ok {
		return nil, fmt.Errorf("field algorithm: %q, want sha256, sha384 or sha512: %w", algorithm, ErrAlgorithm)
	}
	hh := h.New()
	hh.Write(b)
	return &Initdata{
		Version:   version,
		Algorithm: algorithm,
		Hash:      h,
		Data:      data,
		TOML:      b,
		Digest:    hh.Sum(nil),
	}, nil
}
