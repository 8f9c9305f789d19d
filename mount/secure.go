package mount

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cova-project/cova/internal/runtool"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/mount/dm"
	"github.com/cova-project/cova/rootfs/verity"
)

// SecureMounter sets up encrypted block volumes: the Confidential Data
// Hub's SecureMount (*securemount.Service is one). The blk and scsi drivers
// call it for a storage with driver option encryption_key=ephemeral, the
// way the Kata agent asks its CDH.
type SecureMounter interface {
	// SecureMount maps and mounts a volume at mountPoint
	// (cdh/api.SecureMounter's signature).
	SecureMount(ctx context.Context, volumeType string, options map[string]string, flags []string, mountPoint string) (string, error)
	// Unmount undoes SecureMount at mountPoint, device-mapper device
	// included.
	Unmount(ctx context.Context, mountPoint string) error
}

// DeviceMapper creates and removes device-mapper devices; *dm.Client is
// one.
type DeviceMapper interface {
	CreateDevice(ctx context.Context, name, uuid string, targets []dm.Target, readOnly bool) (string, error)
	RemoveDevice(ctx context.Context, name string) error
}

// Runner runs a program (mkfs.ext4) and returns its combined output.
type Runner func(ctx context.Context, name string, args ...string) ([]byte, error)

// The SecureMount request the Kata agent sends for an ephemeral encrypted
// block volume (guest-components' block-device option names and values).
const (
	secureVolumeType = "block-device"
	// EphemeralMkfsOpts are the mkfs.ext4 options Kata uses for a block
	// emptyDir: no journal, no reserved blocks, few inodes.
	EphemeralMkfsOpts = "-O ^has_journal -m 0 -i 163840 -I 128"
)

// EphemeralSecureOptions are the SecureMount options for an ephemeral
// encrypted volume on the block device deviceID ("MAJ:MIN"): a fresh key,
// a fresh ext4, no dm-integrity (setupEncrypted sets dataIntegrity from
// WithSecureStorageIntegrity).
func EphemeralSecureOptions(deviceID string) map[string]string {
	return map[string]string{
		"deviceId":       deviceID,
		"encryptionType": "luks2",
		"sourceType":     "empty",
		"targetType":     "fileSystem",
		"filesystemType": "ext4",
		"mkfsOpts":       EphemeralMkfsOpts,
		"dataIntegrity":  "false",
	}
}

// WithSecureStorageIntegrity returns sm set to ask for dm-integrity
// (dataIntegrity=true: an authenticated dm-crypt volume over dm-integrity)
// on the ephemeral encrypted volumes of blk and scsi storages when
// integrity is true, as kata-agent does when agent.secure_storage_integrity
// is set; give it to Options.SecureMounter. The choice comes from the
// agent's configuration, never from the storage request. A nil sm stays
// nil.
func WithSecureStorageIntegrity(sm SecureMounter, integrity bool) SecureMounter {
	if sm == nil {
		return nil
	}
	if w, ok := sm.(integritySecureMounter); ok {
		sm = w.SecureMounter
	}
	return integritySecureMounter{SecureMounter: sm, integrity: integrity}
}

// integritySecureMounter carries the secure_storage_integrity choice.
type integritySecureMounter struct {
	SecureMounter
	integrity bool
}

// secureStorageIntegrity reports whether ephemeral volumes get
// dm-integrity.
func (m *Manager) secureStorageIntegrity() bool {
	w, ok := m.secure.(integritySecureMounter)
	return ok && w.integrity
}

// Kata's dm-verity storage options (kata-agent: the erofs and block
// rootfs with containerd's dm-verity metadata). They are storage options,
// not mount options: the driver strips them before mount(2).
const (
	// OptionVerityEnabled turns dm-verity on ("X-kata.dmverity-enabled=true").
	OptionVerityEnabled = "X-kata.dmverity-enabled"
	// OptionVerityPrefix starts the parameters: roothash (64 hex digits,
	// required), hashoffset (bytes from the start of the device to the
	// verity superblock, or to the tree with no-superblock; it is also the
	// size of the protected data; required), salt (hex, or "-" for none;
	// default none), no-superblock (true|false; default false: a
	// veritysetup superblock sits at hashoffset), blocksize and hashsize
	// (4096 only).
	OptionVerityPrefix = "X-kata.dmverity."
	kataOptionPrefix   = "X-kata."
)

// verityStorage is a parsed set of dm-verity options.
type verityStorage struct {
	params verity.Params
}

// parseVerityOptions takes the X-kata.dmverity options out of opts and
// returns the rest. v is nil when dm-verity is not asked for. Every other
// X-kata option (GPT partitions, multi-layer overlays) is refused.
func parseVerityOptions(opts []string) (v *verityStorage, rest []string, err error) {
	enabled := false
	kv := map[string]string{}
	for _, o := range opts {
		k, val, _ := keyValue(o)
		switch {
		case k == OptionVerityEnabled:
			switch val {
			case "true":
				enabled = true
			case "false":
			default:
				return nil, nil, invalid("options", "%s=%q: want true or false", OptionVerityEnabled, val)
			}
		case strings.HasPrefix(k, OptionVerityPrefix):
			name := strings.TrimPrefix(k, OptionVerityPrefix)
			if _, dup := kv[name]; dup {
				return nil, nil, invalid("options", "%s given twice", k)
			}
			kv[name] = val
		case strings.HasPrefix(k, kataOptionPrefix):
			return nil, nil, notImplemented("options", "option %q is not supported", o)
		default:
			rest = append(rest, o)
		}
	}
	if !enabled {
		if len(kv) != 0 {
			return nil, nil, invalid("options", "dm-verity parameters without %s=true", OptionVerityEnabled)
		}
		return nil, rest, nil
	}
	p := verity.Params{Superblock: true}
	for name, val := range kv {
		field := OptionVerityPrefix + name
		switch name {
		case "roothash":
			h, err := hex.DecodeString(val)
			if err != nil || len(h) != sha256.Size {
				return nil, nil, invalid("options", "%s: want %d hex digits (sha256)", field, 2*sha256.Size)
			}
			p.RootHash = h
		case "hashoffset":
			off, err := strconv.ParseInt(val, 10, 64)
			if err != nil || off <= 0 || off%verity.BlockSize != 0 {
				return nil, nil, invalid("options", "%s=%q: want a positive multiple of %d", field, val, verity.BlockSize)
			}
			p.HashOffset = off
			p.DataBlocks = uint64(off / verity.BlockSize)
		case "salt":
			if val == "-" || val == "" {
				p.Salt = nil
				continue
			}
			s, err := hex.DecodeString(val)
			if err != nil || len(s) > verity.MaxSaltSize {
				return nil, nil, invalid("options", "%s: want at most %d bytes in hex", field, verity.MaxSaltSize)
			}
			p.Salt = s
		case "no-superblock":
			b, err := strconv.ParseBool(val)
			if err != nil {
				return nil, nil, invalid("options", "%s=%q: want true or false", field, val)
			}
			p.Superblock = !b
		case "blocksize", "hashsize":
			if val != strconv.Itoa(verity.BlockSize) {
				return nil, nil, notImplemented("options", "%s=%q: only %d-byte blocks are supported", field, val, verity.BlockSize)
			}
		case "hashtype", "algorithm":
			if val != verity.Algorithm {
				return nil, nil, notImplemented("options", "%s=%q: only %s is supported", field, val, verity.Algorithm)
			}
		default:
			return nil, nil, notImplemented("options", "dm-verity parameter %q is not supported", field)
		}
	}
	if p.RootHash == nil {
		return nil, nil, invalid("options", "%sroothash is required with %s=true", OptionVerityPrefix, OptionVerityEnabled)
	}
	if p.HashOffset == 0 {
		return nil, nil, invalid("options", "%shashoffset is required with %s=true", OptionVerityPrefix, OptionVerityEnabled)
	}
	return &verityStorage{params: p}, rest, nil
}

// blockRequest is a validated block storage.
type blockRequest struct {
	createFS  bool
	ephemeral bool
	verity    *verityStorage
	flags     uintptr
	data      string
}

// parseBlock validates a blk or scsi storage without touching the system.
func (m *Manager) parseBlock(s Storage) (blockRequest, error) {
	var r blockRequest
	if s.Fstype == "" {
		return r, invalid("fstype", "a block storage needs a file system type")
	}
	for _, o := range s.DriverOptions {
		switch o {
		case DriverOptionCreateFS:
			r.createFS = true
		case DriverOptionEphemeralEncryption:
			r.ephemeral = true
		default:
			return r, invalid("driver_options", "driver option %q is not supported by the %s driver", o, s.Driver)
		}
	}
	v, rest, err := parseVerityOptions(s.Options)
	if err != nil {
		return r, err
	}
	r.verity = v
	if r.flags, r.data, err = ParseOptions(rest); err != nil {
		return r, err
	}
	if err := checkFlags(r.flags); err != nil {
		return r, err
	}
	if (r.createFS || r.ephemeral) && s.Fstype != "ext4" {
		return r, notImplemented("fstype", "%s and %s make ext4 only, not %q", DriverOptionCreateFS, DriverOptionEphemeralEncryption, s.Fstype)
	}
	switch {
	case r.verity != nil && (r.createFS || r.ephemeral):
		return r, invalid("driver_options", "a dm-verity volume is read-only: no %s or %s", DriverOptionCreateFS, DriverOptionEphemeralEncryption)
	case r.ephemeral && m.secure == nil:
		return r, notImplemented("driver_options", "%s needs the confidential data hub, which this agent runs without", DriverOptionEphemeralEncryption)
	case r.ephemeral && r.flags&unix.MS_RDONLY != 0:
		return r, invalid("options", "an ephemeral encrypted volume cannot be read-only")
	case r.createFS && r.flags&unix.MS_RDONLY != 0:
		return r, invalid("options", "%s on a read-only storage", DriverOptionCreateFS)
	}
	return r, nil
}

// deviceNumber returns "major:minor" of the block device node dev.
func deviceNumber(dev string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", dev, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return "", fmt.Errorf("%s is not a block device: %w", dev, errdefs.ErrInvalidArgument)
	}
	return fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)), nil
}

// setupEncrypted hands dev to the SecureMounter: a plain dm-crypt mapping
// with a key that exists only in guest memory, a fresh ext4, mounted at
// pl. The SecureMounter works with path names, so the mount point is
// created inside its root first and checked to resolve, by name, to that
// same directory (no symlink on the way).
func (m *Manager) setupEncrypted(ctx context.Context, id string, s Storage, pl place, dev string) (teardownFunc, error) {
	devID, err := deviceNumber(dev)
	if err != nil {
		return nil, err
	}
	dir, err := mkdirIn(pl, 0o755)
	if err != nil {
		return nil, err
	}
	var want unix.Stat_t
	err = unix.Fstat(int(dir.Fd()), &want)
	_ = dir.Close()
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", pl.abs, err)
	}
	var got unix.Stat_t
	if err := unix.Lstat(pl.abs, &got); err != nil || got.Dev != want.Dev || got.Ino != want.Ino {
		return nil, fmt.Errorf("mount_point: %s does not resolve to the directory made for it (a symlink on the way?): %w", pl.abs, errdefs.ErrInvalidArgument)
	}
	opts := EphemeralSecureOptions(devID)
	integrity := m.secureStorageIntegrity()
	opts["dataIntegrity"] = strconv.FormatBool(integrity)
	if _, err := m.secure.SecureMount(ctx, secureVolumeType, opts, nil, pl.abs); err != nil {
		m.removeEmptyDir(pl)
		return nil, fmt.Errorf("encrypted volume on %s (%s): %w", dev, devID, err)
	}
	m.log.InfoContext(ctx, "ephemeral encrypted volume mounted", "id", id, "device", dev, "mount_point", pl.abs, "integrity", integrity)
	teardown := func(ctx context.Context) error {
		if err := m.secure.Unmount(ctx, pl.abs); err != nil {
			return err
		}
		m.removeEmptyDir(pl)
		return nil
	}
	if err := m.finishMount(ctx, s, pl, 0, nil); err != nil {
		_ = teardown(context.WithoutCancel(ctx))
		return nil, err
	}
	return teardown, nil
}

// verityName is the device-mapper name of the verity device for a mount
// point: one mount point holds one storage, so it is unique.
func verityName(pl place) string {
	sum := sha256.Sum256([]byte(pl.abs))
	return "cova-verity-" + hex.EncodeToString(sum[:8])
}

// setupVerity maps dev through dm-verity (data and tree on the same
// device) and mounts the verified device read-only. A block whose hash
// does not match the pinned root hash reads as EIO.
func (m *Manager) setupVerity(ctx context.Context, id string, s Storage, pl place, dev string, r blockRequest) (teardownFunc, error) {
	devID, err := deviceNumber(dev)
	if err != nil {
		return nil, err
	}
	target, err := dm.VerityTarget(r.verity.params, devID, devID)
	if err != nil {
		return nil, fmt.Errorf("options: %w", err)
	}
	name := verityName(pl)
	mapped, err := m.dm.CreateDevice(ctx, name, "", []dm.Target{target}, true)
	if err != nil {
		return nil, fmt.Errorf("creating dm-verity device for %s: %w", dev, err)
	}
	remove := func(ctx context.Context) error {
		if _, err := dm.RemoveBusy(ctx, m.dm, name, 0); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return fmt.Errorf("removing dm-verity device %s: %w", name, err)
		}
		return nil
	}
	flags := r.flags | unix.MS_RDONLY
	if err := m.mountAt(pl, mapped, s.Fstype, flags, r.data); err != nil {
		_ = remove(context.WithoutCancel(ctx))
		return nil, err
	}
	m.log.InfoContext(ctx, "dm-verity volume mounted", "id", id, "device", dev, "root_hash", r.verity.params.RootHashHex(), "mount_point", pl.abs)
	teardown := func(ctx context.Context) error {
		if err := m.unmountAt(pl); err != nil {
			return err
		}
		return remove(ctx)
	}
	if err := m.finishMount(ctx, s, pl, flags, nil); err != nil {
		_ = teardown(context.WithoutCancel(ctx))
		return nil, err
	}
	return teardown, nil
}

// makeExt4 formats a fresh block emptyDir the way Kata does.
func (m *Manager) makeExt4(ctx context.Context, dev string) error {
	args := append(append([]string{"-F"}, strings.Fields(EphemeralMkfsOpts)...), dev)
	if out, err := m.run(ctx, "mkfs.ext4", args...); err != nil {
		return fmt.Errorf("mkfs.ext4 on %s: %w: %s", dev, err, clipOutput(out))
	}
	return nil
}

// runTool runs name (through PATH or the system directories) with args.
func runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	return runtool.Run(ctx, name, args...)
}

// clipOutput keeps tool output short in errors.
func clipOutput(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 512 {
		s = s[:512] + "…"
	}
	return s
}
