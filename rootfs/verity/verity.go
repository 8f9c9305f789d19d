// Package verity builds and checks dm-verity hash trees in the on-disk
// format `veritysetup format` writes: hash format 1 (salt before the
// block), sha256, 4096-byte data and hash blocks, an optional 512-byte
// superblock in front of the tree, the top level of the tree first and the
// level hashing the data blocks last. It returns the root hash, the salt
// and the device-mapper table (or the dm-mod.create= kernel parameter) that
// opens the result, so a rootfs image and its reference values can be
// produced without cryptsetup, and it recomputes a tree to check an image
// without the kernel.
package verity

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"

	"github.com/containerd/errdefs"
)

const (
	// BlockSize is the data and hash block size in bytes.
	BlockSize = 4096
	// Algorithm is the hash algorithm name as the kernel and veritysetup
	// spell it.
	Algorithm = "sha256"
	// HashType is the dm-verity hash format: 1 = salt hashed first, each
	// digest padded to a power of two (sha256 needs no padding).
	HashType = 1
	// SuperblockSize is the size of the veritysetup superblock.
	SuperblockSize = 512
	// DefaultSaltSize is the salt length veritysetup picks by default.
	DefaultSaltSize = 32
	// MaxSaltSize is the largest salt the superblock holds.
	MaxSaltSize = 256

	digestSize     = sha256.Size
	hashesPerBlock = BlockSize / digestSize // 128, a power of two
	hashPerBits    = 7                      // log2(hashesPerBlock)
	maxLevels      = 63                     // veritysetup's VERITY_MAX_LEVELS
	sectorSize     = 512
	readChunk      = 256 * BlockSize
)

var superblockMagic = [8]byte{'v', 'e', 'r', 'i', 't', 'y', 0, 0}

// Options tune Format. The zero value gives veritysetup's defaults: a
// random 32-byte salt, a random UUID, a superblock, and the tree at the start
// of the hash file.
type Options struct {
	// Salt is used as given; nil draws DefaultSaltSize random bytes.
	Salt []byte
	// NoSalt formats without a salt (veritysetup --salt=-).
	NoSalt bool
	// UUID is written into the superblock ("" draws a random version 4
	// UUID).
	UUID string
	// HashOffset is the byte offset of the superblock (or, without one, of
	// the tree) in the hash file; a multiple of 512, and of BlockSize
	// without a superblock. When the hash file is the data file and this is
	// 0, the tree goes right after the data.
	HashOffset int64
	// NoSuperblock leaves the superblock out (veritysetup
	// --no-superblock); the parameters must then be kept elsewhere.
	NoSuperblock bool
	// DataBlocks limits the protected data to this many blocks; 0 takes the
	// whole data file, whose size must then be a multiple of BlockSize.
	DataBlocks uint64
	// Rand supplies salt and UUID bytes; nil uses crypto/rand.
	Rand io.Reader
}

// Params describe a formatted verity device: everything the kernel table
// needs and what the superblock records.
type Params struct {
	DataBlocks uint64
	// HashOffset is the byte offset of the superblock (or of the tree
	// without one) in the hash file.
	HashOffset int64
	Superblock bool
	Salt       []byte
	UUID       string // "" without a superblock
	RootHash   []byte
	// HashBlocks is the number of tree blocks (not counting the
	// superblock).
	HashBlocks uint64
}

// RootHashHex is the root hash as the kernel table and veritysetup print it.
func (p Params) RootHashHex() string { return hex.EncodeToString(p.RootHash) }

// SaltHex is the salt in table form ("-" for none).
func (p Params) SaltHex() string {
	if len(p.Salt) == 0 {
		return "-"
	}
	return hex.EncodeToString(p.Salt)
}

// HashStartBlock is the table's <hash_start_block>: the first tree block in
// the hash file, in BlockSize units.
func (p Params) HashStartBlock() uint64 {
	off := uint64(p.HashOffset)
	if p.Superblock {
		off += SuperblockSize + BlockSize - 1
	}
	return off / BlockSize
}

// HashEnd is the byte offset right after the tree in the hash file.
func (p Params) HashEnd() int64 {
	return int64((p.HashStartBlock() + p.HashBlocks) * BlockSize)
}

// DataSectors is the length of the verity device in 512-byte sectors.
func (p Params) DataSectors() uint64 { return p.DataBlocks * (BlockSize / sectorSize) }

// TableParams is the verity target's parameter string:
// "1 <data_dev> <hash_dev> 4096 4096 <blocks> <hash_start> sha256 <root>
// <salt>", followed by the optional arguments (for example
// "panic_on_corruption") with their count in front.
func (p Params) TableParams(dataDev, hashDev string, optional ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s %s %d %d %d %d %s %s %s", HashType, dataDev, hashDev, BlockSize, BlockSize,
		p.DataBlocks, p.HashStartBlock(), Algorithm, p.RootHashHex(), p.SaltHex())
	if len(optional) > 0 {
		fmt.Fprintf(&b, " %d %s", len(optional), strings.Join(optional, " "))
	}
	return b.String()
}

// Table is the one-line device-mapper table ("0 <sectors> verity ...") as
// `dmsetup create --table` takes it.
func (p Params) Table(dataDev, hashDev string, optional ...string) string {
	return fmt.Sprintf("0 %d verity %s", p.DataSectors(), p.TableParams(dataDev, hashDev, optional...))
}

// DMModCreate is the kernel parameter that makes the kernel itself open the
// device read-only at boot, e.g.
// dm-mod.create="vroot,,,ro,0 8 verity 1 /dev/vda /dev/vdb ..." (use it with
// root=/dev/dm-0). It needs a kernel with CONFIG_DM_INIT=y and dm-verity
// built in. Names and device paths must not contain ',', ';', '"' or
// white space.
func (p Params) DMModCreate(name, uuid, dataDev, hashDev string, optional ...string) (string, error) {
	for _, f := range []struct{ field, v string }{{"name", name}, {"uuid", uuid}, {"data device", dataDev}, {"hash device", hashDev}} {
		if strings.ContainsAny(f.v, ",;\" \t\n") || (f.field != "uuid" && f.v == "") {
			return "", fmt.Errorf("%s %q: must be non-empty without ',', ';', '\"' or white space: %w", f.field, f.v, errdefs.ErrInvalidArgument)
		}
	}
	for _, o := range optional {
		if strings.ContainsAny(o, ",;\" \t\n") || o == "" {
			return "", fmt.Errorf("optional argument %q: must be one word without ',', ';' or '\"': %w", o, errdefs.ErrInvalidArgument)
		}
	}
	return fmt.Sprintf("dm-mod.create=\"%s,%s,,ro,%s\"", name, uuid, p.Table(dataDev, hashDev, optional...)), nil
}

// level is one level of the tree: its first block (relative to the tree
// start) and its length in blocks. Level 0 hashes the data blocks.
type level struct{ start, blocks uint64 }

// layout places the levels like veritysetup: the top level first, level 0
// last. One data block gives no levels (the root hash is that block's
// hash).
func layout(dataBlocks uint64) ([]level, uint64, error) {
	if dataBlocks == 0 {
		return nil, 0, fmt.Errorf("data blocks: must be at least 1: %w", errdefs.ErrInvalidArgument)
	}
	n := 0
	for hashPerBits*n < 64 && (dataBlocks-1)>>(hashPerBits*n) != 0 {
		n++
	}
	if n > maxLevels {
		return nil, 0, fmt.Errorf("data blocks %d: too many tree levels: %w", dataBlocks, errdefs.ErrInvalidArgument)
	}
	levels := make([]level, n)
	var pos uint64
	for i := n - 1; i >= 0; i-- {
		shift := uint(hashPerBits * (i + 1))
		var s uint64
		if shift >= 64 {
			s = 1
		} else {
			s = (dataBlocks + (uint64(1) << shift) - 1) >> shift
		}
		levels[i] = level{start: pos, blocks: s}
		pos += s
	}
	return levels, pos, nil
}

// hasher hashes blocks with the salt in front (format 1).
type hasher struct {
	salt []byte
	d    hash.Hash
	buf  [digestSize]byte
}

func (h *hasher) sum(block []byte) []byte {
	h.d.Reset()
	h.d.Write(h.salt)
	h.d.Write(block)
	return h.d.Sum(h.buf[:0])
}

// buildTree reads dataBlocks blocks from data and returns the tree levels
// (level i at index i, each zero-padded to whole blocks) and the root hash.
func buildTree(data io.Reader, dataBlocks uint64, salt []byte, levels []level) ([][]byte, []byte, error) {
	h := &hasher{salt: salt, d: sha256.New()}
	tree := make([][]byte, len(levels))
	for i, l := range levels {
		tree[i] = make([]byte, l.blocks*BlockSize)
	}
	var root []byte
	chunk := make([]byte, readChunk)
	var done uint64
	for done < dataBlocks {
		n := min(uint64(len(chunk)/BlockSize), dataBlocks-done)
		buf := chunk[:n*BlockSize]
		if _, err := io.ReadFull(data, buf); err != nil {
			return nil, nil, fmt.Errorf("reading data block %d: %w", done, err)
		}
		for b := uint64(0); b < n; b++ {
			sum := h.sum(buf[b*BlockSize : (b+1)*BlockSize])
			if len(levels) == 0 {
				root = append([]byte(nil), sum...)
			} else {
				copy(tree[0][(done+b)*digestSize:], sum)
			}
		}
		done += n
	}
	for i := 1; i < len(levels); i++ {
		lower := tree[i-1]
		for b := 0; b*BlockSize < len(lower); b++ {
			copy(tree[i][b*digestSize:], h.sum(lower[b*BlockSize:(b+1)*BlockSize]))
		}
	}
	if len(levels) > 0 {
		root = append([]byte(nil), h.sum(tree[len(levels)-1][:BlockSize])...)
	}
	return tree, root, nil
}

// Format builds the hash tree of the data file at dataPath and writes it,
// with a superblock unless opts.NoSuperblock, to hashPath at
// opts.HashOffset. hashPath may be dataPath: the tree is then appended after
// the protected data. A separate hash file is created if missing. The result
// is byte-identical to `veritysetup format` with the same salt and UUID.
func Format(dataPath, hashPath string, opts Options) (Params, error) {
	p, err := prepare(opts)
	if err != nil {
		return Params{}, err
	}
	data, err := os.Open(dataPath)
	if err != nil {
		return Params{}, fmt.Errorf("verity format: %w", err)
	}
	defer data.Close()
	st, err := data.Stat()
	if err != nil {
		return Params{}, fmt.Errorf("verity format: %w", err)
	}
	fileBlocks := uint64(st.Size()) / BlockSize
	p.DataBlocks = opts.DataBlocks
	if p.DataBlocks == 0 {
		if st.Size()%BlockSize != 0 {
			return Params{}, fmt.Errorf("data %s: size %d is not a multiple of %d (trailing bytes would be unprotected; set DataBlocks to cover less): %w",
				dataPath, st.Size(), BlockSize, errdefs.ErrInvalidArgument)
		}
		p.DataBlocks = fileBlocks
	}
	if p.DataBlocks > fileBlocks {
		return Params{}, fmt.Errorf("data blocks %d: the data file %s holds only %d: %w", p.DataBlocks, dataPath, fileBlocks, errdefs.ErrInvalidArgument)
	}
	levels, hashBlocks, err := layout(p.DataBlocks)
	if err != nil {
		return Params{}, err
	}
	p.HashBlocks = hashBlocks

	hashFile, err := os.OpenFile(hashPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return Params{}, fmt.Errorf("verity format: %w", err)
	}
	defer hashFile.Close()
	hst, err := hashFile.Stat()
	if err != nil {
		return Params{}, fmt.Errorf("verity format: %w", err)
	}
	if os.SameFile(st, hst) {
		dataEnd := int64(p.DataBlocks * BlockSize)
		if opts.HashOffset == 0 {
			p.HashOffset = dataEnd
		}
		if p.HashOffset < dataEnd {
			return Params{}, fmt.Errorf("hash offset %d: overlaps the %d data bytes of the same file: %w", p.HashOffset, dataEnd, errdefs.ErrInvalidArgument)
		}
	}

	tree, root, err := buildTree(data, p.DataBlocks, p.Salt, levels)
	if err != nil {
		return Params{}, fmt.Errorf("verity format of %s: %w", dataPath, err)
	}
	p.RootHash = root

	treeStart := int64(p.HashStartBlock() * BlockSize)
	if p.Superblock {
		head := make([]byte, treeStart-p.HashOffset)
		sb, err := p.marshalSuperblock()
		if err != nil {
			return Params{}, err
		}
		copy(head, sb)
		if _, err := hashFile.WriteAt(head, p.HashOffset); err != nil {
			return Params{}, fmt.Errorf("writing verity superblock to %s: %w", hashPath, err)
		}
	}
	for i, l := range levels {
		if _, err := hashFile.WriteAt(tree[i], treeStart+int64(l.start*BlockSize)); err != nil {
			return Params{}, fmt.Errorf("writing verity level %d to %s: %w", i, hashPath, err)
		}
	}
	if err := hashFile.Sync(); err != nil {
		return Params{}, fmt.Errorf("syncing %s: %w", hashPath, err)
	}
	return p, nil
}

// prepare checks opts and fills in salt, UUID and offsets.
func prepare(opts Options) (Params, error) {
	rnd := opts.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	p := Params{HashOffset: opts.HashOffset, Superblock: !opts.NoSuperblock}
	if opts.HashOffset < 0 || opts.HashOffset%sectorSize != 0 {
		return p, fmt.Errorf("hash offset %d: must be a non-negative multiple of %d: %w", opts.HashOffset, sectorSize, errdefs.ErrInvalidArgument)
	}
	if opts.NoSuperblock && opts.HashOffset%BlockSize != 0 {
		return p, fmt.Errorf("hash offset %d: must be a multiple of %d without a superblock: %w", opts.HashOffset, BlockSize, errdefs.ErrInvalidArgument)
	}
	switch {
	case opts.NoSalt:
		if len(opts.Salt) != 0 {
			return p, fmt.Errorf("salt: given together with NoSalt: %w", errdefs.ErrInvalidArgument)
		}
	case opts.Salt != nil:
		if len(opts.Salt) > MaxSaltSize {
			return p, fmt.Errorf("salt: %d bytes, at most %d: %w", len(opts.Salt), MaxSaltSize, errdefs.ErrInvalidArgument)
		}
		p.Salt = append([]byte(nil), opts.Salt...)
	default:
		p.Salt = make([]byte, DefaultSaltSize)
		if _, err := io.ReadFull(rnd, p.Salt); err != nil {
			return p, fmt.Errorf("drawing a salt: %w", err)
		}
	}
	if !p.Superblock {
		if opts.UUID != "" {
			return p, fmt.Errorf("uuid: needs a superblock: %w", errdefs.ErrInvalidArgument)
		}
		return p, nil
	}
	if opts.UUID != "" {
		u, err := parseUUID(opts.UUID)
		if err != nil {
			return p, err
		}
		p.UUID = formatUUID(u)
		return p, nil
	}
	var u [16]byte
	if _, err := io.ReadFull(rnd, u[:]); err != nil {
		return p, fmt.Errorf("drawing a uuid: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	p.UUID = formatUUID(u)
	return p, nil
}

func parseUUID(s string) ([16]byte, error) {
	var u [16]byte
	bad := fmt.Errorf("uuid %q: must be 8-4-4-4-12 hex digits: %w", s, errdefs.ErrInvalidArgument)
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, bad
	}
	raw, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(raw) != 16 {
		return u, bad
	}
	copy(u[:], raw)
	return u, nil
}

func formatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// marshalSuperblock encodes the 512-byte superblock (little endian).
func (p Params) marshalSuperblock() ([]byte, error) {
	if len(p.Salt) > MaxSaltSize {
		return nil, fmt.Errorf("salt: %d bytes, at most %d: %w", len(p.Salt), MaxSaltSize, errdefs.ErrInvalidArgument)
	}
	u, err := parseUUID(p.UUID)
	if err != nil {
		return nil, err
	}
	sb := make([]byte, SuperblockSize)
	copy(sb[0:8], superblockMagic[:])
	binary.LittleEndian.PutUint32(sb[8:], 1) // superblock version
	binary.LittleEndian.PutUint32(sb[12:], HashType)
	copy(sb[16:32], u[:])
	copy(sb[32:64], Algorithm)
	binary.LittleEndian.PutUint32(sb[64:], BlockSize)
	binary.LittleEndian.PutUint32(sb[68:], BlockSize)
	binary.LittleEndian.PutUint64(sb[72:], p.DataBlocks)
	binary.LittleEndian.PutUint16(sb[80:], uint16(len(p.Salt)))
	copy(sb[88:], p.Salt)
	return sb, nil
}

// ReadSuperblock reads the superblock at offset in the hash file and
// returns its parameters (without a root hash, which the superblock does
// not hold). Only what this package writes is accepted: format 1, sha256,
// 4096-byte blocks.
func ReadSuperblock(hashPath string, offset int64) (Params, error) {
	f, err := os.Open(hashPath)
	if err != nil {
		return Params{}, fmt.Errorf("verity superblock: %w", err)
	}
	defer f.Close()
	sb := make([]byte, SuperblockSize)
	if _, err := f.ReadAt(sb, offset); err != nil {
		return Params{}, fmt.Errorf("reading verity superblock of %s at %d: %w", hashPath, offset, err)
	}
	return parseSuperblock(sb, offset)
}

func parseSuperblock(sb []byte, offset int64) (Params, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("verity superblock: %s: %w", fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
	}
	if len(sb) < SuperblockSize || !bytes.Equal(sb[0:8], superblockMagic[:]) {
		return Params{}, bad("no verity signature")
	}
	if v := binary.LittleEndian.Uint32(sb[8:]); v != 1 {
		return Params{}, bad("version %d, want 1", v)
	}
	if v := binary.LittleEndian.Uint32(sb[12:]); v != HashType {
		return Params{}, bad("hash type %d, want %d", v, HashType)
	}
	if alg := string(bytes.TrimRight(sb[32:64], "\x00")); alg != Algorithm {
		return Params{}, bad("algorithm %q, want %q", alg, Algorithm)
	}
	if d, h := binary.LittleEndian.Uint32(sb[64:]), binary.LittleEndian.Uint32(sb[68:]); d != BlockSize || h != BlockSize {
		return Params{}, bad("block sizes %d/%d, want %d", d, h, BlockSize)
	}
	saltSize := int(binary.LittleEndian.Uint16(sb[80:]))
	if saltSize > MaxSaltSize {
		return Params{}, bad("salt size %d", saltSize)
	}
	var u [16]byte
	copy(u[:], sb[16:32])
	p := Params{
		DataBlocks: binary.LittleEndian.Uint64(sb[72:]),
		HashOffset: offset,
		Superblock: true,
		Salt:       append([]byte(nil), sb[88:88+saltSize]...),
		UUID:       formatUUID(u),
	}
	_, hb, err := layout(p.DataBlocks)
	if err != nil {
		return Params{}, bad("%v", err)
	}
	p.HashBlocks = hb
	return p, nil
}

// ErrCorrupt is wrapped by Verify when data and tree disagree.
var ErrCorrupt = errors.New("verity mismatch")

// Verify recomputes the tree of the data file from p (salt, data blocks,
// hash offset, superblock) and checks it against the tree stored in the
// hash file and against p.RootHash. A difference is reported with the level
// and block where it shows and wraps ErrCorrupt and errdefs.ErrDataLoss.
func Verify(dataPath, hashPath string, p Params) error {
	if len(p.RootHash) != digestSize {
		return fmt.Errorf("root hash: %d bytes, want %d: %w", len(p.RootHash), digestSize, errdefs.ErrInvalidArgument)
	}
	levels, hashBlocks, err := layout(p.DataBlocks)
	if err != nil {
		return err
	}
	if p.HashBlocks != 0 && p.HashBlocks != hashBlocks {
		return fmt.Errorf("hash blocks %d: %d data blocks need %d: %w", p.HashBlocks, p.DataBlocks, hashBlocks, errdefs.ErrInvalidArgument)
	}
	data, err := os.Open(dataPath)
	if err != nil {
		return fmt.Errorf("verity verify: %w", err)
	}
	defer data.Close()
	hashFile, err := os.Open(hashPath)
	if err != nil {
		return fmt.Errorf("verity verify: %w", err)
	}
	defer hashFile.Close()
	if p.Superblock {
		stored, err := ReadSuperblock(hashPath, p.HashOffset)
		if err != nil {
			return fmt.Errorf("%w: %w: %w", err, ErrCorrupt, errdefs.ErrDataLoss)
		}
		if stored.DataBlocks != p.DataBlocks || !bytes.Equal(stored.Salt, p.Salt) {
			return fmt.Errorf("verity superblock of %s disagrees with the parameters (data blocks %d/%d, salt): %w: %w",
				hashPath, stored.DataBlocks, p.DataBlocks, ErrCorrupt, errdefs.ErrDataLoss)
		}
	}
	tree, root, err := buildTree(data, p.DataBlocks, p.Salt, levels)
	if err != nil {
		return fmt.Errorf("verity verify of %s: %w", dataPath, err)
	}
	treeStart := int64(p.HashStartBlock() * BlockSize)
	for i := range levels {
		stored := make([]byte, len(tree[i]))
		if _, err := hashFile.ReadAt(stored, treeStart+int64(levels[i].start*BlockSize)); err != nil {
			return fmt.Errorf("reading verity level %d of %s: %w", i, hashPath, err)
		}
		for b := 0; b*BlockSize < len(stored); b++ {
			if !bytes.Equal(stored[b*BlockSize:(b+1)*BlockSize], tree[i][b*BlockSize:(b+1)*BlockSize]) {
				what := fmt.Sprintf("hash block %d of level %d", levels[i].start+uint64(b), i)
				if i == 0 {
					what += fmt.Sprintf(" (data blocks %d to %d or the tree)", uint64(b)*hashesPerBlock, min(uint64(b+1)*hashesPerBlock, p.DataBlocks)-1)
				}
				return fmt.Errorf("%s differs from the recomputed tree: %w: %w", what, ErrCorrupt, errdefs.ErrDataLoss)
			}
		}
	}
	if !bytes.Equal(root, p.RootHash) {
		return fmt.Errorf("root hash %x, expected %x: %w: %w", root, p.RootHash, ErrCorrupt, errdefs.ErrDataLoss)
	}
	return nil
}
