// Package luks2 reads and writes the LUKS2 on-disk header far enough to
// open and create plain aes-xts volumes without cryptsetup: the two binary
// headers with their checksums, the JSON metadata, luks2 keyslots (pbkdf2,
// argon2i or argon2id; the LUKS1 anti-forensic splitter; an aes-xts-plain64
// keyslot area) and the pbkdf2 digest that confirms a volume key. What it
// yields is the volume key and the segment (cipher, offset, sector size) a
// dm-crypt table needs. Segments with integrity are read too when they use
// what cryptsetup's --integrity hmac-sha256 writes (aes-xts-plain64 or
// aes-xts-random with "hmac(sha256)" and no journal encryption or
// integrity); the caller builds the dm-integrity device below the
// authenticated dm-crypt device. Tokens, reencryption, other integrity
// types and other ciphers are refused with errdefs.ErrNotImplemented.
package luks2

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/pbkdf2"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"sort"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/xts"
)

const (
	binHeaderSize = 4096
	magic1        = "LUKS\xba\xbe"
	magic2        = "SKUL\xba\xbe"
	version       = 2
	sectorSize    = 512

	offMagic      = 0
	offVersion    = 6
	offHdrSize    = 8
	offSeqID      = 16
	offLabel      = 24
	offCsumAlg    = 72
	offSalt       = 104
	offUUID       = 168
	offSubsystem  = 208
	offHdrOffset  = 256
	offCsum       = 448
	labelLen      = 48
	csumAlgLen    = 32
	saltLen       = 64
	uuidLen       = 40
	subsystemLen  = 48
	csumLen       = 64
	maxStripes    = 4000
	maxKeySize    = 256
	maxArgonMemKB = 4 << 20 // 4 GiB, cryptsetup's ceiling
	maxIterations = 1 << 31
)

// hdrSizes are the header sizes LUKS2 allows; the secondary header sits at
// the primary's size.
var hdrSizes = []uint64{16 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20, 4 << 20}

// segmentCiphers are the data ciphers Unlock accepts, and whether each
// needs an integrity segment (aes-xts-random is only valid with one).
var segmentCiphers = map[string]bool{"aes-xts-plain64": false, "aes-xts-random": true}

// IntegrityHMACSHA256 is the one segment integrity type accepted: what
// cryptsetup records for --integrity hmac-sha256.
const IntegrityHMACSHA256 = "hmac(sha256)"

// integrityMACKeySize is the HMAC-SHA256 key at the end of the volume key
// of an integrity segment.
const integrityMACKeySize = 32

// ErrWrongKey is wrapped when no keyslot opens with the passphrase.
var ErrWrongKey = errors.New("no keyslot opens with this passphrase")

func invalid(format string, args ...any) error {
	return fmt.Errorf("LUKS2: %s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

func unsupported(format string, args ...any) error {
	return fmt.Errorf("LUKS2: %s: %w", fmt.Sprintf(format, args...), errdefs.ErrNotImplemented)
}

// u64 is a JSON number written as a decimal string, as LUKS2 does for
// offsets and sizes.
type u64 uint64

func (v u64) MarshalJSON() ([]byte, error) { return json.Marshal(strconv.FormatUint(uint64(v), 10)) }

func (v *u64) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return err
	}
	*v = u64(n)
	return nil
}

type jsonKDF struct {
	Type       string `json:"type"`
	Hash       string `json:"hash,omitempty"`
	Iterations int    `json:"iterations,omitempty"`
	Time       int    `json:"time,omitempty"`
	Memory     int    `json:"memory,omitempty"`
	CPUs       int    `json:"cpus,omitempty"`
	Salt       string `json:"salt"`
}

type jsonAF struct {
	Type    string `json:"type"`
	Stripes int    `json:"stripes"`
	Hash    string `json:"hash"`
}

type jsonArea struct {
	Type       string `json:"type"`
	Offset     u64    `json:"offset"`
	Size       u64    `json:"size"`
	Encryption string `json:"encryption"`
	KeySize    int    `json:"key_size"`
}

type jsonKeyslot struct {
	Type     string   `json:"type"`
	KeySize  int      `json:"key_size"`
	AF       jsonAF   `json:"af"`
	Area     jsonArea `json:"area"`
	KDF      jsonKDF  `json:"kdf"`
	Priority *int     `json:"priority,omitempty"`
}

type jsonSegment struct {
	Type       string          `json:"type"`
	Offset     u64             `json:"offset"`
	Size       string          `json:"size"`
	IVTweak    u64             `json:"iv_tweak"`
	Encryption string          `json:"encryption"`
	SectorSize int             `json:"sector_size"`
	Integrity  json.RawMessage `json:"integrity,omitempty"`
	Flags      []string        `json:"flags,omitempty"`
}

type jsonDigest struct {
	Type       string   `json:"type"`
	Keyslots   []string `json:"keyslots"`
	Segments   []string `json:"segments"`
	Hash       string   `json:"hash"`
	Iterations int      `json:"iterations"`
	Salt       string   `json:"salt"`
	Digest     string   `json:"digest"`
}

type jsonConfig struct {
	JSONSize     u64      `json:"json_size"`
	KeyslotsSize u64      `json:"keyslots_size"`
	Flags        []string `json:"flags,omitempty"`
	Requirements *struct {
		Mandatory []string `json:"mandatory,omitempty"`
	} `json:"requirements,omitempty"`
}

type jsonMetadata struct {
	Keyslots map[string]jsonKeyslot     `json:"keyslots"`
	Tokens   map[string]json.RawMessage `json:"tokens"`
	Segments map[string]jsonSegment     `json:"segments"`
	Digests  map[string]jsonDigest      `json:"digests"`
	Config   jsonConfig                 `json:"config"`
}

// Header is a parsed, checksum-verified LUKS2 header.
type Header struct {
	UUID    string
	Label   string
	SeqID   uint64
	HdrSize uint64
	meta    jsonMetadata
	r       io.ReaderAt
}

// Volume is an unlocked LUKS2 data segment: what a dm-crypt table needs.
type Volume struct {
	Cipher     string // e.g. aes-xts-plain64
	Key        []byte // the volume key; wipe it after use
	Offset     uint64 // data start on the device, bytes
	Size       uint64 // segment size in bytes; 0 = to the end of the device
	IVTweak    uint64 // dm-crypt iv_offset, sectors
	SectorSize uint32
	// Integrity is the segment's integrity type: "" or
	// IntegrityHMACSHA256. With it, Key is the XTS key followed by the
	// 32-byte HMAC key, and the data at Offset is a dm-integrity device
	// (superblock first) whose tags dm-crypt fills.
	Integrity string
}

type jsonIntegrity struct {
	Type              string `json:"type"`
	JournalEncryption string `json:"journal_encryption"`
	JournalIntegrity  string `json:"journal_integrity"`
}

// integrity decodes a segment's integrity member: nil when absent.
func (s jsonSegment) integrity() (*jsonIntegrity, error) {
	if len(s.Integrity) == 0 || string(s.Integrity) == "null" {
		return nil, nil
	}
	var in jsonIntegrity
	if err := json.Unmarshal(s.Integrity, &in); err != nil {
		return nil, invalid("segment integrity: not an object with string members")
	}
	if in.Type != IntegrityHMACSHA256 {
		return nil, unsupported("segment integrity %q (only %s)", in.Type, IntegrityHMACSHA256)
	}
	for _, j := range []struct{ name, v string }{{"journal_encryption", in.JournalEncryption}, {"journal_integrity", in.JournalIntegrity}} {
		if j.v != "" && j.v != "none" {
			return nil, unsupported("segment integrity %s %q (only none)", j.name, j.v)
		}
	}
	return &in, nil
}

func hashFunc(name string) (func() hash.Hash, error) {
	switch name {
	case "sha1":
		return sha1.New, nil
	case "sha256":
		return sha256.New, nil
	case "sha512":
		return sha512.New, nil
	}
	return nil, unsupported("hash %q", name)
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// readOne reads and checks the binary header and JSON area at off.
func readOne(r io.ReaderAt, off uint64, wantMagic string) (*Header, error) {
	bin := make([]byte, binHeaderSize)
	if _, err := r.ReadAt(bin, int64(off)); err != nil {
		return nil, fmt.Errorf("reading LUKS2 header at %d: %w", off, err)
	}
	if string(bin[offMagic:offMagic+6]) != wantMagic {
		return nil, invalid("no header at %d", off)
	}
	if v := binary.BigEndian.Uint16(bin[offVersion:]); v != version {
		return nil, unsupported("version %d at %d", v, off)
	}
	hdrSize := binary.BigEndian.Uint64(bin[offHdrSize:])
	okSize := false
	for _, s := range hdrSizes {
		okSize = okSize || s == hdrSize
	}
	if !okSize {
		return nil, invalid("header size %d at %d", hdrSize, off)
	}
	if ho := binary.BigEndian.Uint64(bin[offHdrOffset:]); ho != off {
		return nil, invalid("header at %d says it is at %d", off, ho)
	}
	alg := cString(bin[offCsumAlg : offCsumAlg+csumAlgLen])
	hf, err := hashFunc(alg)
	if err != nil {
		return nil, err
	}
	jsonArea := make([]byte, hdrSize-binHeaderSize)
	if _, err := r.ReadAt(jsonArea, int64(off+binHeaderSize)); err != nil {
		return nil, fmt.Errorf("reading LUKS2 metadata at %d: %w", off+binHeaderSize, err)
	}
	h := hf()
	stored := append([]byte(nil), bin[offCsum:offCsum+csumLen]...)
	clear(bin[offCsum : offCsum+csumLen])
	h.Write(bin)
	h.Write(jsonArea)
	sum := h.Sum(nil)
	if !bytes.Equal(sum, stored[:len(sum)]) {
		return nil, invalid("header checksum mismatch at %d", off)
	}
	text := jsonArea
	if i := bytes.IndexByte(text, 0); i >= 0 {
		text = text[:i]
	}
	var meta jsonMetadata
	dec := json.NewDecoder(bytes.NewReader(text))
	if err := dec.Decode(&meta); err != nil {
		return nil, invalid("metadata at %d: %v", off, err)
	}
	if uint64(meta.Config.JSONSize) != hdrSize-binHeaderSize {
		return nil, invalid("json_size %d does not match the header size %d", meta.Config.JSONSize, hdrSize)
	}
	return &Header{
		UUID:    cString(bin[offUUID : offUUID+uuidLen]),
		Label:   cString(bin[offLabel : offLabel+labelLen]),
		SeqID:   binary.BigEndian.Uint64(bin[offSeqID:]),
		HdrSize: hdrSize,
		meta:    meta,
		r:       r,
	}, nil
}

// ReadHeader reads the primary header at offset 0 and the secondary one
// after it, verifies their checksums and returns the valid one with the
// higher sequence number (as cryptsetup does). Either copy alone suffices.
func ReadHeader(r io.ReaderAt) (*Header, error) {
	primary, perr := readOne(r, 0, magic1)
	var secondary *Header
	var serr error = invalid("no secondary header")
	offsets := hdrSizes
	if primary != nil {
		offsets = []uint64{primary.HdrSize}
	}
	for _, off := range offsets {
		if secondary, serr = readOne(r, off, magic2); serr == nil {
			break
		}
	}
	var h *Header
	switch {
	case perr == nil && serr == nil:
		h = primary
		if secondary.SeqID > primary.SeqID {
			h = secondary
		}
	case perr == nil:
		h = primary
	case serr == nil:
		h = secondary
	default:
		return nil, fmt.Errorf("no valid LUKS2 header: primary: %w; secondary: %w", perr, serr)
	}
	if req := h.meta.Config.Requirements; req != nil && len(req.Mandatory) > 0 {
		return nil, unsupported("mandatory requirements %v (reencryption?)", req.Mandatory)
	}
	return h, nil
}

// Keyslots lists the keyslot numbers, in order.
func (h *Header) Keyslots() []string {
	var ids []string
	for id := range h.meta.Keyslots {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool {
		a, _ := strconv.Atoi(ids[i])
		b, _ := strconv.Atoi(ids[j])
		return a < b
	})
	return ids
}

// segment returns the single data segment.
func (h *Header) segment() (string, jsonSegment, error) {
	if len(h.meta.Segments) != 1 {
		return "", jsonSegment{}, unsupported("%d segments (only one is supported)", len(h.meta.Segments))
	}
	for id, s := range h.meta.Segments {
		if s.Type != "crypt" {
			return "", s, unsupported("segment type %q", s.Type)
		}
		// The header is not authenticated: whoever holds the disk can
		// rewrite the cipher (to cipher_null, say) and fix the checksum.
		// Only the ciphers cryptsetup writes for Cova's use are accepted.
		needsIntegrity, ok := segmentCiphers[s.Encryption]
		if !ok {
			return "", s, unsupported("segment cipher %q (only aes-xts-plain64, or aes-xts-random with integrity)", s.Encryption)
		}
		in, err := s.integrity()
		if err != nil {
			return "", s, err
		}
		if needsIntegrity && in == nil {
			return "", s, invalid("segment cipher %s without integrity", s.Encryption)
		}
		return id, s, nil
	}
	return "", jsonSegment{}, invalid("no segment")
}

// Unlock tries each keyslot in priority order with passphrase, confirms
// the volume key with the segment's digest and returns the data segment.
// It wraps ErrWrongKey (and errdefs.ErrPermissionDenied) when no keyslot
// opens. The KDF may take seconds and much memory (argon2); ctx is checked
// between keyslots.
func (h *Header) Unlock(ctx context.Context, passphrase []byte) (*Volume, error) {
	segID, seg, err := h.segment()
	if err != nil {
		return nil, err
	}
	var digest *jsonDigest
	for _, d := range h.meta.Digests {
		for _, s := range d.Segments {
			if s == segID {
				d := d
				digest = &d
			}
		}
	}
	if digest == nil {
		return nil, invalid("no digest for segment %s", segID)
	}
	if digest.Type != "pbkdf2" {
		return nil, unsupported("digest type %q", digest.Type)
	}
	var lastErr error
	tried := 0
	for _, pass := range []int{2, 1} { // priority high (2) first, then normal (1); 0 = ignore
		for _, id := range h.Keyslots() {
			ks := h.meta.Keyslots[id]
			prio := 1
			if ks.Priority != nil {
				prio = *ks.Priority
			}
			if prio != pass || !contains(digest.Keyslots, id) {
				continue
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			tried++
			vk, err := h.openKeyslot(ks, passphrase)
			if err != nil {
				lastErr = fmt.Errorf("keyslot %s: %w", id, err)
				if !errors.Is(err, errdefs.ErrNotImplemented) && !errors.Is(err, errdefs.ErrInvalidArgument) {
					return nil, lastErr
				}
				continue
			}
			ok, err := checkDigest(*digest, vk)
			if err != nil {
				clear(vk)
				return nil, err
			}
			if !ok {
				clear(vk)
				continue
			}
			v := &Volume{Cipher: seg.Encryption, Key: vk, Offset: uint64(seg.Offset), IVTweak: uint64(seg.IVTweak), SectorSize: uint32(seg.SectorSize)}
			if seg.Size != "dynamic" {
				n, err := strconv.ParseUint(seg.Size, 10, 64)
				if err != nil {
					clear(vk)
					return nil, invalid("segment size %q", seg.Size)
				}
				v.Size = n
			}
			in, _ := seg.integrity() // checked by segment()
			xtsKey := len(vk)
			if in != nil {
				v.Integrity = in.Type
				xtsKey -= integrityMACKeySize
			}
			if xtsKey != 32 && xtsKey != 64 {
				clear(vk)
				return nil, invalid("a %d-byte volume key does not fit %s (integrity %q)", len(vk), seg.Encryption, v.Integrity)
			}
			switch v.SectorSize {
			case 512, 1024, 2048, 4096:
			default:
				clear(vk)
				return nil, invalid("segment sector size %d", seg.SectorSize)
			}
			return v, nil
		}
	}
	if tried == 0 && lastErr == nil {
		return nil, fmt.Errorf("LUKS2: no usable keyslot: %w", errdefs.ErrFailedPrecondition)
	}
	if lastErr != nil && tried == 1 {
		return nil, lastErr
	}
	return nil, fmt.Errorf("LUKS2: %w: %w", ErrWrongKey, errdefs.ErrPermissionDenied)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func decodeB64(field, s string) ([]byte, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, invalid("%s is not base64", field)
	}
	return b, nil
}

func checkDigest(d jsonDigest, vk []byte) (bool, error) {
	hf, err := hashFunc(d.Hash)
	if err != nil {
		return false, err
	}
	salt, err := decodeB64("digest salt", d.Salt)
	if err != nil {
		return false, err
	}
	want, err := decodeB64("digest", d.Digest)
	if err != nil {
		return false, err
	}
	if d.Iterations <= 0 || d.Iterations > maxIterations || len(want) == 0 || len(want) > 64 {
		return false, invalid("digest parameters")
	}
	got, err := pbkdf2.Key(hf, string(vk), salt, d.Iterations, len(want))
	if err != nil {
		return false, fmt.Errorf("LUKS2 digest: %w", err)
	}
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// deriveKey runs the keyslot's KDF.
func deriveKey(k jsonKDF, passphrase []byte, n int) ([]byte, error) {
	salt, err := decodeB64("kdf salt", k.Salt)
	if err != nil {
		return nil, err
	}
	switch k.Type {
	case "pbkdf2":
		hf, err := hashFunc(k.Hash)
		if err != nil {
			return nil, err
		}
		if k.Iterations <= 0 || k.Iterations > maxIterations {
			return nil, invalid("pbkdf2 iterations %d", k.Iterations)
		}
		return pbkdf2.Key(hf, string(passphrase), salt, k.Iterations, n)
	case "argon2i", "argon2id":
		if k.Time <= 0 || k.Time > 1<<20 || k.Memory <= 0 || k.Memory > maxArgonMemKB || k.CPUs <= 0 || k.CPUs > 255 {
			return nil, invalid("argon2 parameters time %d memory %d cpus %d", k.Time, k.Memory, k.CPUs)
		}
		if k.Type == "argon2i" {
			return argon2.Key(passphrase, salt, uint32(k.Time), uint32(k.Memory), uint8(k.CPUs), uint32(n)), nil
		}
		return argon2.IDKey(passphrase, salt, uint32(k.Time), uint32(k.Memory), uint8(k.CPUs), uint32(n)), nil
	}
	return nil, unsupported("kdf %q", k.Type)
}

// newXTS returns the area cipher; only aes-xts-plain64 is supported.
func newXTS(encryption string, key []byte) (*xts.Cipher, error) {
	if encryption != "aes-xts-plain64" {
		return nil, unsupported("keyslot encryption %q", encryption)
	}
	if len(key) != 32 && len(key) != 64 {
		return nil, invalid("keyslot key size %d for aes-xts", len(key))
	}
	return xts.NewCipher(aes.NewCipher, key)
}

// afSectors is the keyslot material size in bytes, whole sectors.
func afSize(keySize, stripes int) int {
	n := keySize * stripes
	return (n + sectorSize - 1) / sectorSize * sectorSize
}

func (h *Header) openKeyslot(ks jsonKeyslot, passphrase []byte) ([]byte, error) {
	if ks.Type != "luks2" || ks.AF.Type != "luks1" || ks.Area.Type != "raw" {
		return nil, unsupported("keyslot type %q/%q/%q", ks.Type, ks.AF.Type, ks.Area.Type)
	}
	if ks.KeySize <= 0 || ks.KeySize > maxKeySize || ks.AF.Stripes <= 0 || ks.AF.Stripes > maxStripes {
		return nil, invalid("keyslot key size %d stripes %d", ks.KeySize, ks.AF.Stripes)
	}
	af, err := hashFunc(ks.AF.Hash)
	if err != nil {
		return nil, err
	}
	size := afSize(ks.KeySize, ks.AF.Stripes)
	if uint64(size) > uint64(ks.Area.Size) {
		return nil, invalid("keyslot area of %d bytes holds no %d bytes of key material", ks.Area.Size, size)
	}
	dk, err := deriveKey(ks.KDF, passphrase, ks.Area.KeySize)
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	c, err := newXTS(ks.Area.Encryption, dk)
	if err != nil {
		return nil, err
	}
	material := make([]byte, size)
	defer clear(material)
	if _, err := h.r.ReadAt(material, int64(ks.Area.Offset)); err != nil {
		return nil, fmt.Errorf("reading keyslot area at %d: %w", ks.Area.Offset, err)
	}
	for s := 0; s*sectorSize < size; s++ {
		blk := material[s*sectorSize : (s+1)*sectorSize]
		c.Decrypt(blk, blk, uint64(s))
	}
	return afMerge(material, ks.KeySize, ks.AF.Stripes, af), nil
}

// diffuse is the LUKS1 anti-forensic diffusion: each digest-sized chunk
// (and the short tail) becomes H(be32(index) || chunk).
func diffuse(block []byte, hf func() hash.Hash) {
	h := hf()
	ds := h.Size()
	var iv [4]byte
	for i := 0; i*ds < len(block); i++ {
		end := min((i+1)*ds, len(block))
		h.Reset()
		binary.BigEndian.PutUint32(iv[:], uint32(i))
		h.Write(iv[:])
		h.Write(block[i*ds : end])
		copy(block[i*ds:end], h.Sum(nil))
	}
}

func afMerge(material []byte, keySize, stripes int, hf func() hash.Hash) []byte {
	buf := make([]byte, keySize)
	for i := 0; i < stripes-1; i++ {
		subtle.XORBytes(buf, buf, material[i*keySize:(i+1)*keySize])
		diffuse(buf, hf)
	}
	subtle.XORBytes(buf, buf, material[(stripes-1)*keySize:stripes*keySize])
	return buf
}

// afSplit is the inverse: random stripes whose merge gives key.
func afSplit(key []byte, stripes int, hf func() hash.Hash, rnd io.Reader) ([]byte, error) {
	ks := len(key)
	out := make([]byte, ks*stripes)
	if _, err := io.ReadFull(rnd, out[:ks*(stripes-1)]); err != nil {
		return nil, err
	}
	buf := make([]byte, ks)
	for i := 0; i < stripes-1; i++ {
		subtle.XORBytes(buf, buf, out[i*ks:(i+1)*ks])
		diffuse(buf, hf)
	}
	subtle.XORBytes(out[(stripes-1)*ks:], buf, key)
	clear(buf)
	return out, nil
}

// String lists what the header holds, without secrets.
func (h *Header) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "LUKS2 %s seqid %d keyslots %v", h.UUID, h.SeqID, h.Keyslots())
	return b.String()
}
