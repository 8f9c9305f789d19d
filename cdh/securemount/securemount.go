// Package securemount is the Confidential Data Hub's SecureMount for
// "block-device" volumes (guest-components' options: deviceId or
// devicePath, sourceType empty|encrypted, encryptionType luks2, key
// sealed.…|kbs:///…|file:///…, dataIntegrity, mapperName, targetType
// fileSystem|device, filesystemType ext4, mkfsOpts). It is also what the
// Kata blk storage with driver option encryption_key=ephemeral uses
// (EphemeralOptions).
//
// There is no cryptsetup in the guest, so Cova drives dm-crypt itself
// (mount/dm):
//
//   - sourceType empty: the device gets a fresh random 512-bit volume key
//     and a plain aes-xts-plain64 mapping with 4096-byte sectors, then
//     mkfs.ext4 and a mount (or a symlink to the mapped device for
//     targetType device). guest-components puts a LUKS2 header for such a
//     volume in a detached file under /run and deletes it at unmount, so
//     its data is unreadable once the volume goes away; a plain mapping with
//     a key that lives only in guest memory gives the same property without
//     a header. A key, when given, is still resolved (so a key the KBS
//     refuses fails the request as upstream) and then wiped.
//   - sourceType encrypted: the LUKS2 header at the start of the device is
//     read and a keyslot unlocked with the key (cdh/securemount/luks2); the
//     volume key then drives the same dm-crypt mapping cryptsetup would
//     load, and the file system on it is mounted as is. A segment with
//     integrity (cryptsetup luksFormat --integrity hmac-sha256, as
//     guest-components formats with dataIntegrity) is opened as cryptsetup
//     2.6 opens it: a dm-integrity device "<name>_dif" in journal mode over
//     the data area (its size and padding from the superblock the kernel
//     wrote there; 32-byte tags per 4096-byte block for aes-xts-plain64, 48
//     for aes-xts-random) under a dm-crypt device with
//     capi:authenc(hmac(sha256),xts(aes))-plain64 (or -random) and
//     integrity:<tag>:aead. dataIntegrity=true refuses a segment without
//     integrity: the header is not authenticated, and a host that strips
//     the member must not turn an authenticated volume into a plain one.
//     test/vm TestLUKS2SecureMount opens volumes cryptsetup made and has
//     cryptsetup read back what the agent wrote.
//
// dataIntegrity=true on sourceType empty builds what cryptsetup builds for
// luksFormat --cipher aes-xts-random --integrity hmac-sha256 --sector-size
// 4096, from kernel targets and without a header (the random IV makes a
// rewritten block encrypt differently; guest-components' aes-xts-plain64
// would give 32-byte tags): a dm-integrity device "<name>_dif" on the
// disk (no internal hash, 48-byte tags per 4096-byte block, no journal)
// under a dm-crypt device with the AEAD cipher
// capi:authenc(hmac(sha256),xts(aes))-random and integrity:48:aead (the
// 32-byte HMAC and the 16-byte random IV). The key is 96 fresh random
// bytes (a 512-bit XTS key and a 256-bit HMAC key) that live only in guest
// memory. Every 4096-byte block then carries an HMAC over its ciphertext,
// its sector number and a random IV: a block the host changed or moved
// fails to read (EILSEQ; the kernel logs "INTEGRITY AEAD ERROR") instead
// of reading as garbage. (A block the
// host puts back to an older version with its older tag is not detected:
// dm-integrity has no freshness.) The volume is set up in four steps:
//
//  1. The first 4096 bytes of the disk are zeroed: the kernel formats a
//     new integrity superblock only over a zeroed one (and refuses to load
//     otherwise), and a superblock left by the host must not choose the
//     layout.
//  2. A one-block dm-integrity device is loaded, which formats the
//     superblock; its status line gives the data sectors the disk
//     provides; it is removed.
//  3. The dm-integrity device is loaded at that size and the
//     authenticated dm-crypt device on top of it.
//  4. The whole dm-crypt device is written with zeros (BLKZEROOUT, which
//     the kernel turns into ordinary writes through dm-crypt), so every
//     block has a valid tag; until then a read of a block never written
//     (mkfs probes some) fails. dm-integrity can recalculate tags itself
//     only with an internal hash, not for dm-crypt's AEAD tags. This is
//     what cryptsetup does too unless told --integrity-no-wipe; it costs
//     one authenticated write of the whole volume (16 MiB took 2-3 s in
//     an emulated (TCG) test guest; AES-NI and SHA-NI make it far faster).
//
// No journal: an ephemeral volume does not outlive a crash of the guest
// (its key is gone), so the journal's crash consistency would buy nothing
// and cost every write twice. Key material never reaches logs or errors.
package securemount

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cova-project/cova/internal/runtool"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/cdh/securemount/luks2"
	"github.com/cova-project/cova/mount/dm"
)

// KeyGetter resolves key references: sealed secrets and KBS resources. The
// CDH's *sealed.Unsealer and KBS client provide the two halves.
type KeyGetter interface {
	Unseal(ctx context.Context, secret string) ([]byte, error)
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// KeyFuncs adapts two functions (for example (*sealed.Unsealer).Unseal and
// the KBS client's resource getter) to KeyGetter; a nil one fails with
// errdefs.ErrFailedPrecondition.
type KeyFuncs struct {
	UnsealFunc   func(ctx context.Context, secret string) ([]byte, error)
	ResourceFunc func(ctx context.Context, uri string) ([]byte, error)
}

// Unseal calls UnsealFunc.
func (k KeyFuncs) Unseal(ctx context.Context, secret string) ([]byte, error) {
	if k.UnsealFunc == nil {
		return nil, fmt.Errorf("no sealed-secret service: %w", errdefs.ErrFailedPrecondition)
	}
	return k.UnsealFunc(ctx, secret)
}

// GetResource calls ResourceFunc.
func (k KeyFuncs) GetResource(ctx context.Context, uri string) ([]byte, error) {
	if k.ResourceFunc == nil {
		return nil, fmt.Errorf("no KBS client: %w", errdefs.ErrFailedPrecondition)
	}
	return k.ResourceFunc(ctx, uri)
}

// Mapper creates and removes device-mapper devices; *dm.Client is one.
type Mapper interface {
	CreateDevice(ctx context.Context, name, uuid string, targets []dm.Target, readOnly bool) (string, error)
	RemoveDevice(ctx context.Context, name string) error
}

// StatusMapper is a Mapper that also reads target status lines (*dm.Client
// is one); dataIntegrity needs it to learn the size of a dm-integrity
// device.
type StatusMapper interface {
	Mapper
	Status(ctx context.Context, name string) (dm.DeviceInfo, []dm.TargetStatus, error)
}

// Runner runs a program and returns its combined output.
type Runner func(ctx context.Context, name string, args ...string) ([]byte, error)

// Config holds the Service's dependencies; zero fields get the real
// system.
type Config struct {
	Log    *slog.Logger
	Keys   KeyGetter // nil: sealed and kbs keys fail with ErrFailedPrecondition
	Mapper Mapper    // required
	Run    Runner    // mkfs.ext4; default os/exec
	// Mount and Unmount default to unix.Mount and unix.Unmount.
	Mount   func(source, target, fstype string, flags uintptr, data string) error
	Unmount func(target string, flags int) error
	// StatDevice returns major:minor of a block device node; default
	// stat(2), which refuses anything that is not a block device.
	StatDevice func(path string) (major, minor uint32, err error)
	// OpenDevice opens a block device for reading a LUKS2 header.
	OpenDevice func(path string) (io.ReaderAt, io.Closer, error)
	// ReadKeyFile reads a file:// key (default os.ReadFile with a size
	// limit).
	ReadKeyFile func(path string) ([]byte, error)
	// Zero writes zeros over length bytes of the block device at path,
	// from offset, and flushes them (dataIntegrity: the superblock area of
	// the disk, then the whole dm-crypt device). Default: the BLKZEROOUT
	// ioctl, or plain writes where that is not supported.
	Zero   func(ctx context.Context, path string, offset, length int64) error
	SysDir string    // "/sys"
	DevDir string    // "/dev"
	Rand   io.Reader // crypto/rand
}

// Service serves SecureMount and remembers what it set up so Unmount can
// take it down.
type Service struct {
	cfg     Config
	log     *slog.Logger
	backoff time.Duration // between removals of a busy device
	mu      sync.Mutex
	volumes map[string]*volume // by mount point
}

type volume struct {
	mapper  string
	lower   string // the dm-integrity device under mapper, if any
	mounted bool   // else a symlink
}

// maxKeySize bounds a key or passphrase read from anywhere.
const maxKeySize = 1 << 20

// volumeKeySize is the aes-xts-plain64 key for AES-256.
const volumeKeySize = 64

// Integrity layout (dataIntegrity): dm-crypt's HMAC-SHA256 tag and its
// random IV per 4096-byte block.
const (
	integrityKeySize   = volumeKeySize + 32 // XTS key, then HMAC key
	integrityBlockSize = 4096
	integrityTagSize   = dm.HMACSHA256TagSize + dm.RandomIVSize
	integritySuffix    = "_dif" // cryptsetup's name for the integrity device
)

// New checks cfg and fills in the defaults.
func New(cfg Config) (*Service, error) {
	if cfg.Mapper == nil {
		return nil, fmt.Errorf("securemount: a device-mapper client is required: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Run == nil {
		cfg.Run = runTool
	}
	if cfg.Mount == nil {
		cfg.Mount = unix.Mount
	}
	if cfg.Unmount == nil {
		cfg.Unmount = unix.Unmount
	}
	if cfg.StatDevice == nil {
		cfg.StatDevice = statBlockDevice
	}
	if cfg.OpenDevice == nil {
		cfg.OpenDevice = func(p string) (io.ReaderAt, io.Closer, error) {
			f, err := os.Open(p)
			if err != nil {
				return nil, nil, err
			}
			return f, f, nil
		}
	}
	if cfg.ReadKeyFile == nil {
		cfg.ReadKeyFile = readLimited
	}
	if cfg.Zero == nil {
		cfg.Zero = zeroDevice
	}
	if cfg.SysDir == "" {
		cfg.SysDir = "/sys"
	}
	if cfg.DevDir == "" {
		cfg.DevDir = "/dev"
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	return &Service{cfg: cfg, log: cfg.Log, backoff: dm.BusyBackoff, volumes: map[string]*volume{}}, nil
}

// runTool runs name (through PATH or the system directories) with args.
func runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	return runtool.Run(ctx, name, args...)
}

func statBlockDevice(p string) (uint32, uint32, error) {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return 0, 0, fmt.Errorf("stat %s: %w", p, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, 0, invalid(OptDevicePath, "%s is not a block device", p)
	}
	return unix.Major(st.Rdev), unix.Minor(st.Rdev), nil
}

func readLimited(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeySize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxKeySize {
		clear(b)
		return nil, fmt.Errorf("larger than %d bytes: %w", maxKeySize, errdefs.ErrInvalidArgument)
	}
	return b, nil
}

// SecureMount sets up the volume and returns mountPoint (the signature of
// cdh/api.SecureMounter).
func (s *Service) SecureMount(ctx context.Context, volumeType string, options map[string]string, flags []string, mountPoint string) (string, error) {
	if volumeType != VolumeBlockDevice {
		return "", notImplemented("volume_type", "%q is not supported (only %s)", volumeType, VolumeBlockDevice)
	}
	p, err := parseParams(options, flags, mountPoint)
	if err != nil {
		return "", fmt.Errorf("secure mount: %w", err)
	}
	if p.integrity && p.source == SourceEmpty {
		if _, ok := s.cfg.Mapper.(StatusMapper); !ok {
			return "", fmt.Errorf("secure mount: %w", notImplemented(OptDataIntegrity, "the device-mapper client cannot read target status"))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, busy := s.volumes[mountPoint]; busy {
		return "", fmt.Errorf("secure mount: mount_point %s already holds a secure volume: %w", mountPoint, errdefs.ErrAlreadyExists)
	}
	v, err := s.setup(ctx, p)
	if err != nil {
		return "", fmt.Errorf("secure mount at %s: %w", mountPoint, err)
	}
	s.volumes[mountPoint] = v
	return mountPoint, nil
}

// device is the resolved backing device.
type device struct {
	major, minor uint32
	path         string // a node to read (for LUKS2); may be ""
	sectors      uint64
}

// resolveDevice finds major:minor, a readable node and the size (from
// sysfs, so no ioctl on the device is needed).
func (s *Service) resolveDevice(p params) (device, error) {
	var d device
	if p.hasDevID {
		d.major, d.minor = p.major, p.minor
		uevent, err := os.ReadFile(filepath.Join(s.cfg.SysDir, "dev", "block", fmt.Sprintf("%d:%d", d.major, d.minor), "uevent"))
		if err != nil {
			return d, fmt.Errorf("%s %d:%d: no such block device: %w: %w", OptDeviceID, d.major, d.minor, err, errdefs.ErrNotFound)
		}
		for _, line := range strings.Split(string(uevent), "\n") {
			if name, ok := strings.CutPrefix(line, "DEVNAME="); ok {
				if name == "" || !filepath.IsLocal(name) {
					return d, invalid(OptDeviceID, "sysfs gives the odd device name %q", name)
				}
				d.path = filepath.Join(s.cfg.DevDir, name)
			}
		}
	} else {
		maj, min, err := s.cfg.StatDevice(p.devicePath)
		if err != nil {
			return d, fmt.Errorf("%s: %w", OptDevicePath, err)
		}
		d.major, d.minor, d.path = maj, min, p.devicePath
	}
	raw, err := os.ReadFile(filepath.Join(s.cfg.SysDir, "dev", "block", fmt.Sprintf("%d:%d", d.major, d.minor), "size"))
	if err != nil {
		return d, fmt.Errorf("size of block device %d:%d: %w: %w", d.major, d.minor, err, errdefs.ErrNotFound)
	}
	d.sectors, err = strconv.ParseUint(strings.TrimSpace(string(raw)), 10, 64)
	if err != nil {
		return d, fmt.Errorf("size of block device %d:%d: %q: %w", d.major, d.minor, raw, errdefs.ErrInvalidArgument)
	}
	return d, nil
}

// resolveKey fetches the key a request names. The caller wipes it.
func (s *Service) resolveKey(ctx context.Context, p params) ([]byte, error) {
	var key []byte
	var err error
	switch p.keyKind {
	case keyRandom:
		return nil, nil
	case keySealed, keyKBS:
		if s.cfg.Keys == nil {
			return nil, fmt.Errorf("%s: no KBS or sealed-secret service configured: %w", OptKey, errdefs.ErrFailedPrecondition)
		}
		if p.keyKind == keySealed {
			key, err = s.cfg.Keys.Unseal(ctx, p.keyRef)
			if err != nil {
				return nil, fmt.Errorf("%s: unsealing the sealed secret: %w", OptKey, err)
			}
		} else {
			key, err = s.cfg.Keys.GetResource(ctx, p.keyRef)
			if err != nil {
				return nil, fmt.Errorf("%s: fetching %s: %w", OptKey, p.keyRef, err)
			}
		}
	case keyFile:
		key, err = s.cfg.ReadKeyFile(p.keyRef)
		if err != nil {
			return nil, fmt.Errorf("%s: reading file %s: %w", OptKey, p.keyRef, err)
		}
	}
	if len(key) == 0 {
		return nil, invalid(OptKey, "the key is empty")
	}
	if len(key) > maxKeySize {
		clear(key)
		return nil, invalid(OptKey, "the key is larger than %d bytes", maxKeySize)
	}
	return key, nil
}

func (s *Service) randomName() (string, error) {
	b := make([]byte, 8)
	if _, err := io.ReadFull(s.cfg.Rand, b); err != nil {
		return "", fmt.Errorf("drawing a mapper name: %w", err)
	}
	return "cova-sm-" + hex.EncodeToString(b), nil
}

// setup does the work; on error it leaves nothing behind.
func (s *Service) setup(ctx context.Context, p params) (*volume, error) {
	dev, err := s.resolveDevice(p)
	if err != nil {
		return nil, err
	}
	key, err := s.resolveKey(ctx, p)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	name := p.mapperName
	if name == "" {
		if name, err = s.randomName(); err != nil {
			return nil, err
		}
	}

	var target dm.Target
	var uuid, lower string
	switch {
	case p.source == SourceEmpty && p.integrity:
		if len(name)+len(integritySuffix) > maxMapperName {
			return nil, invalid(OptMapperName, "at most %d characters with %s=true", maxMapperName-len(integritySuffix), OptDataIntegrity)
		}
		lower = name + integritySuffix
		target, err = s.integrityStack(ctx, dev, lower)
		if err != nil {
			return nil, err
		}
		uuid = "CRYPT-INTEGRITY-" + name
	case p.source == SourceEmpty:
		// The passphrase, if any, protects nothing that outlives the
		// volume (see the package comment): the volume key is fresh.
		sectors := dev.sectors &^ 7 // whole 4096-byte sectors
		if sectors == 0 {
			return nil, invalid("device", "%d:%d is smaller than 4096 bytes", dev.major, dev.minor)
		}
		vk := make([]byte, volumeKeySize)
		defer clear(vk)
		if _, err := io.ReadFull(s.cfg.Rand, vk); err != nil {
			return nil, fmt.Errorf("drawing a volume key: %w", err)
		}
		target, err = dm.CryptTarget(dm.CryptParams{Key: vk, Device: fmt.Sprintf("%d:%d", dev.major, dev.minor), Length: sectors, SectorSize: 4096})
		if err != nil {
			return nil, err
		}
		uuid = "CRYPT-PLAIN-" + name
	case p.source == SourceEncrypted:
		target, uuid, lower, err = s.openLUKS2(ctx, dev, name, key, p.integrity)
		if err != nil {
			return nil, err
		}
	}

	removeLower := func() {
		if lower == "" {
			return
		}
		if err := s.cfg.Mapper.RemoveDevice(context.WithoutCancel(ctx), lower); err != nil {
			s.log.WarnContext(ctx, "removing the dm-integrity device after a failure", "name", lower, "error", err)
		}
	}
	cryptSectors := target.Length
	devPath, err := s.cfg.Mapper.CreateDevice(ctx, name, uuid, []dm.Target{target}, false)
	target = dm.Target{} // drop the only reference to the key's hex form
	if err != nil {
		removeLower()
		return nil, fmt.Errorf("creating dm-crypt device %s: %w", name, err)
	}
	s.log.InfoContext(ctx, "secure volume mapped", "name", name, "device", fmt.Sprintf("%d:%d", dev.major, dev.minor), "source_type", p.source, "integrity", p.integrity)
	fail := func(cause error) (*volume, error) {
		if err := s.cfg.Mapper.RemoveDevice(context.WithoutCancel(ctx), name); err != nil {
			s.log.WarnContext(ctx, "removing the dm-crypt device after a failure", "name", name, "error", err)
		}
		removeLower()
		return nil, cause
	}
	if lower != "" && p.source == SourceEmpty {
		// Give every block a valid tag (see the package comment).
		if err := s.cfg.Zero(ctx, devPath, 0, int64(cryptSectors)*dm.SectorSize); err != nil {
			return fail(fmt.Errorf("initialising the integrity tags of %s: %w", devPath, err))
		}
		s.log.InfoContext(ctx, "integrity tags initialised", "name", name, "bytes", cryptSectors*dm.SectorSize)
	}

	if p.target == TargetDevice {
		if err := os.Symlink(devPath, p.mountPoint); err != nil {
			return fail(fmt.Errorf("symlinking %s to %s: %w", p.mountPoint, devPath, err))
		}
		return &volume{mapper: name, lower: lower}, nil
	}
	if p.source == SourceEmpty {
		args := append(append([]string{"-F"}, p.mkfsArgs...), devPath)
		if out, err := s.cfg.Run(ctx, "mkfs."+p.fsType, args...); err != nil {
			return fail(fmt.Errorf("mkfs.%s on %s: %w: %s", p.fsType, devPath, err, clip(out)))
		}
	}
	if err := os.MkdirAll(p.mountPoint, 0o755); err != nil {
		return fail(fmt.Errorf("creating mount point: %w", err))
	}
	if err := s.cfg.Mount(devPath, p.mountPoint, p.fsType, unix.MS_NOATIME|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
		return fail(fmt.Errorf("mounting %s on %s: %w", devPath, p.mountPoint, err))
	}
	s.log.InfoContext(ctx, "secure volume mounted", "name", name, "mount_point", p.mountPoint, "fstype", p.fsType)
	return &volume{mapper: name, lower: lower, mounted: true}, nil
}

// integrityStack formats a dm-integrity device named lower on dev and
// returns the authenticated dm-crypt target (with a fresh key) to load on
// top of it; lower is left active. See the package comment for the steps.
func (s *Service) integrityStack(ctx context.Context, dev device, lower string) (dm.Target, error) {
	if dev.path == "" {
		return dm.Target{}, fmt.Errorf("device %d:%d has no node to clear the integrity superblock on: %w", dev.major, dev.minor, errdefs.ErrNotFound)
	}
	const minSectors = 2 * 1024 // 1 MiB: the superblock and some data
	if dev.sectors < minSectors {
		return dm.Target{}, invalid("device", "%d:%d is smaller than 1 MiB, too small for %s", dev.major, dev.minor, OptDataIntegrity)
	}
	sm := s.cfg.Mapper.(StatusMapper) // checked by SecureMount
	if err := s.cfg.Zero(ctx, dev.path, 0, dm.IntegritySuperblockSize); err != nil {
		return dm.Target{}, fmt.Errorf("clearing the integrity superblock of %s: %w", dev.path, err)
	}
	devID := fmt.Sprintf("%d:%d", dev.major, dev.minor)
	params := dm.IntegrityParams{Device: devID, TagSize: integrityTagSize, Mode: 'D', BlockSize: integrityBlockSize, Length: integrityBlockSize / dm.SectorSize}
	probe, err := dm.IntegrityTarget(params)
	if err != nil {
		return dm.Target{}, err
	}
	if _, err := sm.CreateDevice(ctx, lower, "", []dm.Target{probe}, false); err != nil {
		return dm.Target{}, fmt.Errorf("formatting dm-integrity on %s: %w", devID, err)
	}
	_, st, err := sm.Status(ctx, lower)
	if err == nil && (len(st) != 1 || st[0].Type != "integrity") {
		err = fmt.Errorf("status of %s: want one integrity target, got %d: %w", lower, len(st), errdefs.ErrInvalidArgument)
	}
	var provided uint64
	if err == nil {
		provided, err = dm.IntegrityProvidedSectors(st[0].Params)
	}
	if rerr := sm.RemoveDevice(context.WithoutCancel(ctx), lower); rerr != nil && err == nil {
		err = fmt.Errorf("removing the dm-integrity probe %s: %w", lower, rerr)
	}
	if err != nil {
		return dm.Target{}, fmt.Errorf("sizing dm-integrity on %s: %w", devID, err)
	}
	params.Length = provided &^ (integrityBlockSize/dm.SectorSize - 1)
	if params.Length == 0 || params.Length > dev.sectors {
		return dm.Target{}, invalid("device", "%d:%d: dm-integrity provides %d sectors of %d", dev.major, dev.minor, provided, dev.sectors)
	}
	it, err := dm.IntegrityTarget(params)
	if err != nil {
		return dm.Target{}, err
	}
	lowerPath, err := sm.CreateDevice(ctx, lower, "", []dm.Target{it}, false)
	if err != nil {
		return dm.Target{}, fmt.Errorf("creating dm-integrity device %s: %w", lower, err)
	}
	s.log.InfoContext(ctx, "dm-integrity device active", "name", lower, "device", devID, "sectors", params.Length, "tag_size", integrityTagSize)
	vk := make([]byte, integrityKeySize)
	defer clear(vk)
	t, err := func() (dm.Target, error) {
		if _, err := io.ReadFull(s.cfg.Rand, vk); err != nil {
			return dm.Target{}, fmt.Errorf("drawing a volume key: %w", err)
		}
		return dm.CryptTarget(dm.CryptParams{
			Cipher: dm.AuthencHMACSHA256XTS, Key: vk, Device: lowerPath, Length: params.Length,
			SectorSize: integrityBlockSize, IntegrityTagSize: integrityTagSize, IntegrityType: "aead",
		})
	}()
	if err != nil {
		if rerr := sm.RemoveDevice(context.WithoutCancel(ctx), lower); rerr != nil {
			s.log.WarnContext(ctx, "removing the dm-integrity device after a failure", "name", lower, "error", rerr)
		}
		return dm.Target{}, err
	}
	return t, nil
}

// openLUKS2 reads the LUKS2 header on the device, unlocks it with key and
// returns the dm-crypt target to load as name, its dm uuid and, for a
// segment with integrity, the dm-integrity device it created below (the
// caller removes it if the rest fails). wantIntegrity (dataIntegrity=true)
// refuses a segment without integrity: the header is not authenticated,
// so a host that strips the integrity member must not get an
// unauthenticated volume where the pod asked for an authenticated one.
func (s *Service) openLUKS2(ctx context.Context, dev device, name string, key []byte, wantIntegrity bool) (dm.Target, string, string, error) {
	if dev.path == "" {
		return dm.Target{}, "", "", fmt.Errorf("device %d:%d has no node to read the LUKS2 header from: %w", dev.major, dev.minor, errdefs.ErrNotFound)
	}
	r, closer, err := s.cfg.OpenDevice(dev.path)
	if err != nil {
		return dm.Target{}, "", "", fmt.Errorf("opening %s: %w", dev.path, err)
	}
	defer closer.Close()
	hdr, err := luks2.ReadHeader(r)
	if err != nil {
		return dm.Target{}, "", "", fmt.Errorf("LUKS2 header of %s: %w", dev.path, err)
	}
	vol, err := hdr.Unlock(ctx, key)
	if err != nil {
		return dm.Target{}, "", "", fmt.Errorf("unlocking %s: %w", dev.path, err)
	}
	defer clear(vol.Key)
	if wantIntegrity && vol.Integrity == "" {
		return dm.Target{}, "", "", fmt.Errorf("%s=true but the LUKS2 segment of %s has no integrity: %w", OptDataIntegrity, dev.path, errdefs.ErrFailedPrecondition)
	}
	total := dev.sectors * dm.SectorSize
	if vol.Offset >= total || vol.Offset%dm.SectorSize != 0 {
		return dm.Target{}, "", "", invalid("device", "%s: LUKS2 data offset %d is past the end (%d bytes) or not whole sectors", dev.path, vol.Offset, total)
	}
	size := total - vol.Offset
	if vol.Size != 0 {
		if vol.Size > size {
			return dm.Target{}, "", "", invalid("device", "%s: LUKS2 segment of %d bytes does not fit", dev.path, vol.Size)
		}
		size = vol.Size
	}
	uuid := "CRYPT-LUKS2-" + strings.ReplaceAll(hdr.UUID, "-", "") + "-" + name
	devID := fmt.Sprintf("%d:%d", dev.major, dev.minor)
	if vol.Integrity == "" {
		size -= size % uint64(vol.SectorSize)
		t, err := dm.CryptTarget(dm.CryptParams{
			Cipher: vol.Cipher, Key: vol.Key, IVOffset: vol.IVTweak,
			Device: devID, Offset: vol.Offset / dm.SectorSize, Length: size / dm.SectorSize, SectorSize: vol.SectorSize,
		})
		if err != nil {
			return dm.Target{}, "", "", err
		}
		return t, uuid, "", nil
	}

	// An integrity segment: the data area is a dm-integrity device (its
	// superblock first) whose per-block tags hold dm-crypt's HMAC (and
	// random IV), as cryptsetup opens it (journal mode).
	cipher, tagSize := dm.AuthencHMACSHA256XTSPlain64, dm.HMACSHA256TagSize
	if vol.Cipher == "aes-xts-random" {
		cipher, tagSize = dm.AuthencHMACSHA256XTS, dm.HMACSHA256TagSize+dm.RandomIVSize
	}
	sb, err := dm.ReadIntegritySuperblock(r, int64(vol.Offset))
	if err != nil {
		return dm.Target{}, "", "", fmt.Errorf("%s: LUKS2 integrity segment: %w", dev.path, err)
	}
	if int(sb.TagSize) != tagSize || sb.BlockSize() != vol.SectorSize {
		return dm.Target{}, "", "", invalid("device", "%s: the dm-integrity superblock has %d-byte tags per %d-byte block; the LUKS2 segment (%s, %s) needs %d per %d", dev.path, sb.TagSize, sb.BlockSize(), vol.Cipher, vol.Integrity, tagSize, vol.SectorSize)
	}
	sectors := sb.ProvidedDataSectors
	if vol.Size != 0 {
		sectors = min(sectors, vol.Size/dm.SectorSize)
	}
	sectors &^= uint64(vol.SectorSize/dm.SectorSize) - 1
	if sectors == 0 || sectors > size/dm.SectorSize {
		return dm.Target{}, "", "", invalid("device", "%s: the dm-integrity superblock offers %d data sectors in a %d-byte area", dev.path, sb.ProvidedDataSectors, size)
	}
	if len(name)+len(integritySuffix) > maxMapperName {
		return dm.Target{}, "", "", invalid(OptMapperName, "at most %d characters for a volume with integrity", maxMapperName-len(integritySuffix))
	}
	lower := name + integritySuffix
	it, err := dm.IntegrityTarget(dm.IntegrityParams{
		Device: devID, Offset: vol.Offset / dm.SectorSize, Length: sectors, TagSize: tagSize,
		Mode: 'J', BlockSize: vol.SectorSize, FixPadding: sb.Flags&dm.IntegrityFlagFixedPadding != 0,
	})
	if err != nil {
		return dm.Target{}, "", "", err
	}
	lowerUUID := "CRYPT-SUBDEV-" + strings.ReplaceAll(hdr.UUID, "-", "") + "-" + lower
	lowerPath, err := s.cfg.Mapper.CreateDevice(ctx, lower, lowerUUID, []dm.Target{it}, false)
	if err != nil {
		return dm.Target{}, "", "", fmt.Errorf("creating dm-integrity device %s: %w", lower, err)
	}
	s.log.InfoContext(ctx, "dm-integrity device active", "name", lower, "device", devID, "sectors", sectors, "tag_size", tagSize, "mode", "journal")
	t, err := dm.CryptTarget(dm.CryptParams{
		Cipher: cipher, Key: vol.Key, IVOffset: vol.IVTweak, Device: lowerPath, Length: sectors,
		SectorSize: vol.SectorSize, IntegrityTagSize: tagSize, IntegrityType: "aead",
	})
	if err != nil {
		if rerr := s.cfg.Mapper.RemoveDevice(context.WithoutCancel(ctx), lower); rerr != nil {
			s.log.WarnContext(ctx, "removing the dm-integrity device after a failure", "name", lower, "error", rerr)
		}
		return dm.Target{}, "", "", err
	}
	return t, uuid, lower, nil
}

// Unmount takes down what SecureMount set up at mountPoint.
func (s *Service) Unmount(ctx context.Context, mountPoint string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.volumes[mountPoint]
	if !ok {
		return fmt.Errorf("secure unmount: no secure volume at %s: %w", mountPoint, errdefs.ErrNotFound)
	}
	if v.mounted {
		// Detached: a container's mount namespace that is still being torn
		// down may hold the file system a moment longer; the device removal
		// below retries until that last reference is gone.
		if err := s.cfg.Unmount(mountPoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("secure unmount of %s: %w", mountPoint, err)
		}
	} else if err := os.Remove(mountPoint); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("secure unmount: removing link %s: %w", mountPoint, err)
	}
	if err := s.removeDevice(ctx, v.mapper); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
		return fmt.Errorf("secure unmount of %s: %w", mountPoint, err)
	}
	if v.lower != "" {
		if err := s.removeDevice(ctx, v.lower); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("secure unmount of %s: %w", mountPoint, err)
		}
	}
	delete(s.volumes, mountPoint)
	s.log.InfoContext(ctx, "secure volume removed", "mount_point", mountPoint, "name", v.mapper)
	return nil
}

// removeDevice removes a mapped device, retrying while the kernel says it
// is busy (dm.RemoveBusy: a device whose file system was just unmounted can
// stay busy while a container's mount namespace drops its reference).
func (s *Service) removeDevice(ctx context.Context, name string) error {
	retries, err := dm.RemoveBusy(ctx, s.cfg.Mapper, name, s.backoff)
	if err == nil && retries > 0 {
		s.log.InfoContext(ctx, "busy device removed after retries", "name", name, "attempts", retries+1)
	}
	return err
}

// clip keeps tool output short in errors.
func clip(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) > 512 {
		b = append(b[:512:512], "…"...)
	}
	return string(b)
}
