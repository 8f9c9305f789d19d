package luks2

import (
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"

	"github.com/containerd/errdefs"
)

// KDF chooses the keyslot's key derivation.
type KDF struct {
	Type       string // "pbkdf2", "argon2i" or "argon2id"
	Hash       string // pbkdf2 hash (default sha256)
	Iterations int    // pbkdf2 iterations
	Time       int    // argon2 passes
	MemoryKiB  int    // argon2 memory
	CPUs       int    // argon2 parallelism
}

// FormatOptions tune Format. Zero values give: a random UUID, an argon2id
// keyslot (4 passes, 64 MiB, 1 thread), a 512-bit aes-xts-plain64 volume
// key, 4096-byte sectors and the data at 16 MiB, as cryptsetup lays it out.
type FormatOptions struct {
	UUID             string
	Label            string
	KDF              KDF
	DigestIterations int    // pbkdf2 iterations of the volume-key digest (default 1000, cryptsetup's floor)
	DataOffset       uint64 // bytes; default 16 MiB
	SectorSize       uint32 // 512 or 4096 (default)
	// Integrity "" or IntegrityHMACSHA256 records an integrity segment as
	// cryptsetup luksFormat --integrity hmac-sha256 does (a 96-byte volume
	// key: XTS, then HMAC). Format writes only the LUKS2 header: the
	// dm-integrity superblock at DataOffset is the kernel's to format.
	Integrity string
	Rand      io.Reader
}

const (
	defaultHdrSize    = 16 << 10
	defaultDataOffset = 16 << 20
	keyslotsOffset    = 2 * defaultHdrSize
	volumeKeySize     = 64
	stripes           = 4000
	areaAlign         = 4096
)

// Format writes a LUKS2 header with one keyslot (0) for passphrase at the
// start of w (a device or image of at least DataOffset bytes) and returns
// the new volume. cryptsetup luksDump and luksOpen accept the result.
func Format(w io.WriterAt, passphrase []byte, opts FormatOptions) (*Volume, error) {
	rnd := opts.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	if len(passphrase) == 0 {
		return nil, fmt.Errorf("passphrase: empty: %w", errdefs.ErrInvalidArgument)
	}
	kdf := opts.KDF
	if kdf.Type == "" {
		kdf = KDF{Type: "argon2id", Time: 4, MemoryKiB: 64 << 10, CPUs: 1}
	}
	digestIter := opts.DigestIterations
	if digestIter == 0 {
		digestIter = 1000
	}
	dataOffset := opts.DataOffset
	if dataOffset == 0 {
		dataOffset = defaultDataOffset
	}
	sector := opts.SectorSize
	if sector == 0 {
		sector = 4096
	}
	if sector != 512 && sector != 4096 {
		return nil, fmt.Errorf("sector size %d: must be 512 or 4096: %w", sector, errdefs.ErrInvalidArgument)
	}
	keySize := volumeKeySize
	var integrity json.RawMessage
	switch opts.Integrity {
	case "":
	case IntegrityHMACSHA256:
		keySize += integrityMACKeySize
		integrity, _ = json.Marshal(jsonIntegrity{Type: IntegrityHMACSHA256, JournalEncryption: "none", JournalIntegrity: "none"})
	default:
		return nil, fmt.Errorf("integrity %q: want %s or none: %w", opts.Integrity, IntegrityHMACSHA256, errdefs.ErrInvalidArgument)
	}
	area := uint64(afSize(keySize, stripes)+areaAlign-1) / areaAlign * areaAlign
	if dataOffset%areaAlign != 0 || dataOffset < keyslotsOffset+area {
		return nil, fmt.Errorf("data offset %d: must be 4096-aligned and at least %d: %w", dataOffset, keyslotsOffset+area, errdefs.ErrInvalidArgument)
	}
	if len(opts.Label) >= labelLen {
		return nil, fmt.Errorf("label: longer than %d bytes: %w", labelLen-1, errdefs.ErrInvalidArgument)
	}
	uuid := opts.UUID
	if uuid == "" {
		var u [16]byte
		if _, err := io.ReadFull(rnd, u[:]); err != nil {
			return nil, err
		}
		u[6] = u[6]&0x0f | 0x40
		u[8] = u[8]&0x3f | 0x80
		x := hex.EncodeToString(u[:])
		uuid = x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:]
	}
	if len(uuid) != 36 {
		return nil, fmt.Errorf("uuid %q: want 36 characters: %w", uuid, errdefs.ErrInvalidArgument)
	}

	random := func(n int) ([]byte, error) {
		b := make([]byte, n)
		_, err := io.ReadFull(rnd, b)
		return b, err
	}
	vk, err := random(keySize)
	if err != nil {
		return nil, err
	}
	kdfSalt, err := random(32)
	if err != nil {
		return nil, err
	}
	digestSalt, err := random(32)
	if err != nil {
		return nil, err
	}
	jk := jsonKDF{Type: kdf.Type, Salt: base64.StdEncoding.EncodeToString(kdfSalt)}
	switch kdf.Type {
	case "pbkdf2":
		jk.Hash, jk.Iterations = kdf.Hash, kdf.Iterations
		if jk.Hash == "" {
			jk.Hash = "sha256"
		}
	case "argon2i", "argon2id":
		jk.Time, jk.Memory, jk.CPUs = kdf.Time, kdf.MemoryKiB, kdf.CPUs
	default:
		return nil, fmt.Errorf("kdf %q: want pbkdf2, argon2i or argon2id: %w", kdf.Type, errdefs.ErrInvalidArgument)
	}
	dk, err := deriveKey(jk, passphrase, volumeKeySize)
	if err != nil {
		return nil, err
	}
	defer clear(dk)
	material, err := afSplit(vk, stripes, sha256.New, rnd)
	if err != nil {
		return nil, err
	}
	defer clear(material)
	c, err := newXTS("aes-xts-plain64", dk)
	if err != nil {
		return nil, err
	}
	padded := make([]byte, afSize(keySize, stripes))
	copy(padded, material)
	for s := 0; s*sectorSize < len(padded); s++ {
		blk := padded[s*sectorSize : (s+1)*sectorSize]
		c.Encrypt(blk, blk, uint64(s))
	}
	dg, err := pbkdf2.Key(sha256.New, string(vk), digestSalt, digestIter, sha256.Size)
	if err != nil {
		return nil, err
	}

	prio := 1
	meta := jsonMetadata{
		Keyslots: map[string]jsonKeyslot{"0": {
			Type: "luks2", KeySize: keySize,
			AF:       jsonAF{Type: "luks1", Stripes: stripes, Hash: "sha256"},
			Area:     jsonArea{Type: "raw", Offset: keyslotsOffset, Size: u64(area), Encryption: "aes-xts-plain64", KeySize: volumeKeySize},
			KDF:      jk,
			Priority: &prio,
		}},
		Tokens: map[string]json.RawMessage{},
		Segments: map[string]jsonSegment{"0": {
			Type: "crypt", Offset: u64(dataOffset), Size: "dynamic", IVTweak: 0,
			Encryption: "aes-xts-plain64", SectorSize: int(sector), Integrity: integrity,
		}},
		Digests: map[string]jsonDigest{"0": {
			Type: "pbkdf2", Keyslots: []string{"0"}, Segments: []string{"0"}, Hash: "sha256",
			Iterations: digestIter, Salt: base64.StdEncoding.EncodeToString(digestSalt),
			Digest: base64.StdEncoding.EncodeToString(dg),
		}},
		Config: jsonConfig{JSONSize: defaultHdrSize - binHeaderSize, KeyslotsSize: u64(dataOffset - keyslotsOffset)},
	}
	text, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	if len(text) >= defaultHdrSize-binHeaderSize {
		return nil, fmt.Errorf("LUKS2 metadata of %d bytes does not fit", len(text))
	}
	jsonArea := make([]byte, defaultHdrSize-binHeaderSize)
	copy(jsonArea, text)

	for i, hdrOff := range []uint64{0, defaultHdrSize} {
		bin := make([]byte, binHeaderSize)
		copy(bin[offMagic:], []string{magic1, magic2}[i])
		binary.BigEndian.PutUint16(bin[offVersion:], version)
		binary.BigEndian.PutUint64(bin[offHdrSize:], defaultHdrSize)
		binary.BigEndian.PutUint64(bin[offSeqID:], 1)
		copy(bin[offLabel:offLabel+labelLen], opts.Label)
		copy(bin[offCsumAlg:], "sha256")
		salt, err := random(saltLen)
		if err != nil {
			return nil, err
		}
		copy(bin[offSalt:], salt)
		copy(bin[offUUID:offUUID+uuidLen], uuid)
		binary.BigEndian.PutUint64(bin[offHdrOffset:], hdrOff)
		sum := sha256.New()
		sum.Write(bin)
		sum.Write(jsonArea)
		copy(bin[offCsum:], sum.Sum(nil))
		if _, err := w.WriteAt(append(bin, jsonArea...), int64(hdrOff)); err != nil {
			return nil, fmt.Errorf("writing LUKS2 header at %d: %w", hdrOff, err)
		}
	}
	areaBytes := make([]byte, area)
	copy(areaBytes, padded)
	if _, err := w.WriteAt(areaBytes, keyslotsOffset); err != nil {
		return nil, fmt.Errorf("writing keyslot 0: %w", err)
	}
	clear(padded)
	// Zero the rest of the keyslot space so no stale key material stays.
	zeros := make([]byte, 1<<20)
	for off := keyslotsOffset + area; off < dataOffset; off += uint64(len(zeros)) {
		n := min(uint64(len(zeros)), dataOffset-off)
		if _, err := w.WriteAt(zeros[:n], int64(off)); err != nil {
			return nil, fmt.Errorf("clearing keyslot space: %w", err)
		}
	}
	return &Volume{Cipher: "aes-xts-plain64", Key: vk, Offset: dataOffset, SectorSize: sector, Integrity: opts.Integrity}, nil
}
