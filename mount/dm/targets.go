package dm

import (
	"encoding/hex"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/rootfs/verity"
)

// checkDevice accepts a device for a table: a path or major:minor, one
// word.
func checkDevice(field, dev string) error {
	if dev == "" || strings.ContainsAny(dev, " \t\n\x00") {
		return fmt.Errorf("%s %q: must be a path or major:minor without blanks: %w", field, dev, errdefs.ErrInvalidArgument)
	}
	return nil
}

// verityOptional are the optional verity arguments without values.
var verityOptional = map[string]bool{
	"ignore_corruption": true, "restart_on_corruption": true, "panic_on_corruption": true,
	"restart_on_error": true, "panic_on_error": true, "ignore_zero_blocks": true, "check_at_most_once": true,
}

// VerityTarget is the table line that opens a tree made by rootfs/verity:
// the whole data area, read through dataDev and checked against the tree on
// hashDev (which may be dataDev when the tree is appended). optional are
// value-less verity arguments such as "panic_on_corruption"; without one,
// a corrupt block reads as EIO.
func VerityTarget(p verity.Params, dataDev, hashDev string, optional ...string) (Target, error) {
	if err := checkDevice("data device", dataDev); err != nil {
		return Target{}, err
	}
	if err := checkDevice("hash device", hashDev); err != nil {
		return Target{}, err
	}
	if len(p.RootHash) != 32 {
		return Target{}, fmt.Errorf("root hash: %d bytes, want 32: %w", len(p.RootHash), errdefs.ErrInvalidArgument)
	}
	if p.DataBlocks == 0 {
		return Target{}, fmt.Errorf("data blocks: must not be 0: %w", errdefs.ErrInvalidArgument)
	}
	for _, o := range optional {
		if !verityOptional[o] {
			return Target{}, fmt.Errorf("verity option %q: not one of the value-less verity arguments: %w", o, errdefs.ErrInvalidArgument)
		}
	}
	return Target{Start: 0, Length: p.DataSectors(), Type: "verity", Params: p.TableParams(dataDev, hashDev, optional...)}, nil
}

// DefaultCipher is the dm-crypt cipher spec LUKS2 and cryptsetup plain
// mode use by default.
const DefaultCipher = "aes-xts-plain64"

// KeyringKey names a key in the kernel keyring instead of passing it in the
// table (":<size>:<type>:<description>").
type KeyringKey struct {
	Size        int    // key length in bytes
	Type        string // "logon" or "user"
	Description string
}

// CryptParams are the arguments of a dm-crypt target.
type CryptParams struct {
	// Cipher is "cipher[:keycount]-chainmode-ivmode[:ivopts]" or a
	// "capi:" spec ("" = aes-xts-plain64).
	Cipher string
	// Key is the raw key, put into the table in hex. Either Key or Keyring.
	Key     []byte
	Keyring *KeyringKey
	// IVOffset is added to the sector number for the IV.
	IVOffset uint64
	// Device is the encrypted backing device (path or major:minor).
	Device string
	// Offset is where the encrypted data starts on Device, in sectors.
	Offset uint64
	// Length is the size of the mapping in 512-byte sectors.
	Length uint64
	// SectorSize is the encryption sector size: 0 or 512 (default), or a
	// power of two up to 4096 (sector_size:<n>).
	SectorSize uint32
	// AllowDiscards passes discards down (leaks which blocks are unused).
	AllowDiscards bool
	// NoReadWorkqueue and NoWriteWorkqueue bypass dm-crypt's queues.
	NoReadWorkqueue, NoWriteWorkqueue bool
	// IntegrityTagSize and IntegrityType ("aead" or "none") ask for
	// integrity:<size>:<type>: per-sector metadata that the device below
	// (a dm-integrity target without internal hash, with the same tag
	// size) stores. The size is all of it: with an AEAD cipher such as
	// AuthencHMACSHA256XTS, the authentication tag plus the IV of a
	// "random" IV mode (HMACSHA256TagSize+RandomIVSize); the kernel
	// refuses a size that differs from the integrity device's.
	IntegrityTagSize int
	IntegrityType    string
}

// AuthencHMACSHA256XTS is the authenticated dm-crypt cipher cryptsetup
// loads for luksFormat --cipher aes-xts-random --integrity hmac-sha256:
// AES-XTS encryption and an HMAC-SHA256 tag per sector over the data, the
// sector number and a random IV (kept in the tag area beside the HMAC, so
// the tag is HMACSHA256TagSize+RandomIVSize bytes). Its key is the XTS key
// (64 bytes for AES-256) followed by the HMAC key (32 bytes).
const AuthencHMACSHA256XTS = "capi:authenc(hmac(sha256),xts(aes))-random"

// AuthencHMACSHA256XTSPlain64 is the same with the sector number as the
// IV: what cryptsetup 2.6 loads for --cipher aes-xts-plain64 --integrity
// hmac-sha256 (guest-components' choice). No IV is stored: the tag is
// HMACSHA256TagSize bytes.
const AuthencHMACSHA256XTSPlain64 = "capi:authenc(hmac(sha256),xts(aes))-plain64"

// Sizes for AuthencHMACSHA256XTS.
const (
	HMACSHA256TagSize = 32 // the HMAC-SHA256 tag per sector
	RandomIVSize      = 16 // the random IV dm-crypt stores beside the tag
)

var (
	cipherRE   = regexp.MustCompile(`^[a-z0-9_]+(:[0-9]+)?-[a-z0-9_]+(-[a-z0-9_]+(:[a-z0-9_]+)?)?$|^capi:[a-z0-9(),_-]+(-[a-z0-9_]+)?$`)
	keyDescRE  = regexp.MustCompile(`^[A-Za-z0-9:._/-]{1,255}$`)
	xtsCiphers = map[string]bool{"aes-xts-plain64": true, "aes-xts-plain": true, "aes-xts-essiv:sha256": true}
)

// CryptTarget is the table line of a dm-crypt mapping. It is marked Secret
// when the key is in the table. Errors never include the key.
func CryptTarget(c CryptParams) (Target, error) {
	cipher := c.Cipher
	if cipher == "" {
		cipher = DefaultCipher
	}
	if !cipherRE.MatchString(cipher) {
		return Target{}, fmt.Errorf("cipher %q: not a dm-crypt cipher spec: %w", cipher, errdefs.ErrInvalidArgument)
	}
	if err := checkDevice("device", c.Device); err != nil {
		return Target{}, err
	}
	if c.Length == 0 {
		return Target{}, fmt.Errorf("length: must not be 0: %w", errdefs.ErrInvalidArgument)
	}
	var key string
	secret := false
	switch {
	case len(c.Key) > 0 && c.Keyring != nil:
		return Target{}, fmt.Errorf("key: give either the key or a keyring key, not both: %w", errdefs.ErrInvalidArgument)
	case len(c.Key) > 0:
		if xtsCiphers[cipher] && len(c.Key) != 32 && len(c.Key) != 64 {
			return Target{}, fmt.Errorf("key: %d bytes, %s needs 32 or 64: %w", len(c.Key), cipher, errdefs.ErrInvalidArgument)
		}
		if len(c.Key) > 1024 {
			return Target{}, fmt.Errorf("key: %d bytes is too long: %w", len(c.Key), errdefs.ErrInvalidArgument)
		}
		key = hex.EncodeToString(c.Key)
		secret = true
	case c.Keyring != nil:
		k := c.Keyring
		if k.Type != "logon" && k.Type != "user" {
			return Target{}, fmt.Errorf("keyring key type %q: must be logon or user: %w", k.Type, errdefs.ErrInvalidArgument)
		}
		if k.Size <= 0 || k.Size > 1024 || xtsCiphers[cipher] && k.Size != 32 && k.Size != 64 {
			return Target{}, fmt.Errorf("keyring key size %d: not valid for %s: %w", k.Size, cipher, errdefs.ErrInvalidArgument)
		}
		if !keyDescRE.MatchString(k.Description) {
			return Target{}, fmt.Errorf("keyring key description %q: 1 to 255 of A-Za-z0-9:._/-: %w", k.Description, errdefs.ErrInvalidArgument)
		}
		key = fmt.Sprintf(":%d:%s:%s", k.Size, k.Type, k.Description)
	default:
		return Target{}, fmt.Errorf("key: missing: %w", errdefs.ErrInvalidArgument)
	}
	var opt []string
	if c.AllowDiscards {
		opt = append(opt, "allow_discards")
	}
	if c.NoReadWorkqueue {
		opt = append(opt, "no_read_workqueue")
	}
	if c.NoWriteWorkqueue {
		opt = append(opt, "no_write_workqueue")
	}
	switch {
	case c.IntegrityTagSize == 0 && c.IntegrityType == "":
	case c.IntegrityTagSize <= 0 || c.IntegrityTagSize > 1024:
		return Target{}, fmt.Errorf("integrity tag size %d: must be 1 to 1024 bytes: %w", c.IntegrityTagSize, errdefs.ErrInvalidArgument)
	case c.IntegrityType != "aead" && c.IntegrityType != "none":
		return Target{}, fmt.Errorf("integrity type %q: must be aead or none: %w", c.IntegrityType, errdefs.ErrInvalidArgument)
	default:
		opt = append(opt, fmt.Sprintf("integrity:%d:%s", c.IntegrityTagSize, c.IntegrityType))
	}
	switch ss := c.SectorSize; {
	case ss == 0 || ss == 512:
	case ss > 512 && ss <= 4096 && ss&(ss-1) == 0:
		per := uint64(ss / SectorSize)
		if c.Length%per != 0 || c.IVOffset%per != 0 {
			return Target{}, fmt.Errorf("sector size %d: length %d and iv offset %d must be multiples of %d sectors: %w", ss, c.Length, c.IVOffset, per, errdefs.ErrInvalidArgument)
		}
		opt = append(opt, fmt.Sprintf("sector_size:%d", ss))
	default:
		return Target{}, fmt.Errorf("sector size %d: must be a power of two from 512 to 4096: %w", ss, errdefs.ErrInvalidArgument)
	}
	params := fmt.Sprintf("%s %s %d %s %d", cipher, key, c.IVOffset, c.Device, c.Offset)
	if len(opt) > 0 {
		params += fmt.Sprintf(" %d %s", len(opt), strings.Join(opt, " "))
	}
	return Target{Start: 0, Length: c.Length, Type: "crypt", Params: params, Secret: secret}, nil
}

// IntegrityParams are the arguments of a dm-integrity target that stores
// the per-sector tags of the dm-crypt target above it (no internal hash:
// the tags come from dm-crypt's AEAD).
type IntegrityParams struct {
	// Device holds the integrity superblock at Offset, then the data
	// interleaved with the tags (path or major:minor).
	Device string
	Offset uint64 // in 512-byte sectors
	// Length is the size of the mapping in 512-byte sectors; at most the
	// provided data sectors the kernel reports (IntegrityProvidedSectors),
	// a multiple of BlockSize.
	Length uint64
	// TagSize is the bytes of tag per block (dm-crypt's integrity size plus
	// its IV size, e.g. HMACSHA256TagSize+RandomIVSize).
	TagSize int
	// Mode is 'J' (journal, the default), 'D' (direct: no journal, so a
	// crash can leave data and tag out of step), 'B' (bitmap) or 'R'
	// (recovery: read-only, no checks).
	Mode byte
	// BlockSize is the data block of one tag: 512 (default) to 4096, a
	// power of two; it must equal the sector_size of the crypt target.
	BlockSize uint32
	// FixPadding asks for the space-efficient tag layout cryptsetup 2.3+
	// formats with (fix_padding); an existing superblock records it
	// (IntegrityFlagFixedPadding).
	FixPadding bool
}

// IntegritySuperblockSize is the area at the start of a dm-integrity
// device that must be all zeros for the kernel to format a new superblock
// when the table is loaded (else loading fails with "The device is not
// initialized").
const IntegritySuperblockSize = 4096

// IntegrityTarget is the table line of a dm-integrity target:
// "<dev> <offset> <tag_size> <mode> <#opts> [block_size:<n>] [fix_padding]".
func IntegrityTarget(p IntegrityParams) (Target, error) {
	if err := checkDevice("device", p.Device); err != nil {
		return Target{}, err
	}
	if p.Length == 0 {
		return Target{}, fmt.Errorf("length: must not be 0: %w", errdefs.ErrInvalidArgument)
	}
	if p.TagSize <= 0 || p.TagSize > 1024 {
		return Target{}, fmt.Errorf("tag size %d: must be 1 to 1024 bytes: %w", p.TagSize, errdefs.ErrInvalidArgument)
	}
	mode := p.Mode
	switch mode {
	case 0:
		mode = 'J'
	case 'J', 'D', 'B', 'R':
	default:
		return Target{}, fmt.Errorf("mode %q: must be J, D, B or R: %w", mode, errdefs.ErrInvalidArgument)
	}
	var opt []string
	switch bs := p.BlockSize; {
	case bs == 0 || bs == 512:
	case bs > 512 && bs <= 4096 && bs&(bs-1) == 0:
		if per := uint64(bs / SectorSize); p.Length%per != 0 {
			return Target{}, fmt.Errorf("block size %d: length %d must be a multiple of %d sectors: %w", bs, p.Length, per, errdefs.ErrInvalidArgument)
		}
		opt = append(opt, fmt.Sprintf("block_size:%d", bs))
	default:
		return Target{}, fmt.Errorf("block size %d: must be a power of two from 512 to 4096: %w", bs, errdefs.ErrInvalidArgument)
	}
	if p.FixPadding {
		opt = append(opt, "fix_padding")
	}
	params := fmt.Sprintf("%s %d %d %c %d", p.Device, p.Offset, p.TagSize, mode, len(opt))
	if len(opt) > 0 {
		params += " " + strings.Join(opt, " ")
	}
	return Target{Start: 0, Length: p.Length, Type: "integrity", Params: params}, nil
}

// IntegrityProvidedSectors reads the data sectors a dm-integrity target
// offers from its status line ("<mismatches> <provided sectors>
// <recalculation position or ->").
func IntegrityProvidedSectors(status string) (uint64, error) {
	f := strings.Fields(status)
	if len(f) < 2 {
		return 0, fmt.Errorf("integrity status %q: want at least two fields: %w", status, errdefs.ErrInvalidArgument)
	}
	n, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("integrity status %q: provided sectors: %w", status, errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// IntegrityMismatches reads the number of tag mismatches a dm-integrity
// target has seen from its status line.
func IntegrityMismatches(status string) (uint64, error) {
	f := strings.Fields(status)
	if len(f) < 1 {
		return 0, fmt.Errorf("integrity status %q: empty: %w", status, errdefs.ErrInvalidArgument)
	}
	n, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("integrity status %q: mismatches: %w", status, errdefs.ErrInvalidArgument)
	}
	return n, nil
}
