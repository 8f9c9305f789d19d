package dm

import (
	"encoding/hex"
	"fmt"
	"regexp"
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
}

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
