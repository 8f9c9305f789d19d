package securemount

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/cdh/sealed"
)

// VolumeBlockDevice is the only volume type served (guest-components'
// "block-device"); "alibaba-cloud-oss" is not.
const VolumeBlockDevice = "block-device"

// Option keys of a block-device volume, as guest-components spells them.
const (
	OptDeviceID       = "deviceId"       // "MAJ:MIN"; wins over devicePath
	OptDevicePath     = "devicePath"     // absolute path of the block device
	OptSourceType     = "sourceType"     // "empty" | "encrypted"
	OptKey            = "key"            // "sealed.…" | "kbs:///…" | "file:///…"; absent: random
	OptEncryptionType = "encryptionType" // "luks2" ("zfs" is not served)
	OptDataIntegrity  = "dataIntegrity"  // "true" | "false"
	OptMapperName     = "mapperName"     // /dev/mapper/<name>; absent: random
	OptTargetType     = "targetType"     // "fileSystem" | "device"
	OptFilesystemType = "filesystemType" // "ext4" (default)
	OptMkfsOpts       = "mkfsOpts"       // extra mkfs.ext4 arguments, split on blanks

	// Older Kata agents sent {deviceId, encryptType: "LUKS", dataIntegrity}
	// for an ephemeral volume.
	optLegacyEncryptType = "encryptType"
)

// Values.
const (
	SourceEmpty     = "empty"
	SourceEncrypted = "encrypted"
	TargetFS        = "fileSystem"
	TargetDevice    = "device"
	EncryptionLUKS2 = "luks2"
	FSExt4          = "ext4"
)

// EphemeralMkfsOpts are the mkfs.ext4 options the Kata agent passes for an
// ephemeral block volume (no journal, no reserved blocks, few inodes).
const EphemeralMkfsOpts = "-O ^has_journal -m 0 -i 163840 -I 128"

// EphemeralOptions are the options the Kata agent sends for a blk storage
// with driver option encryption_key=ephemeral: the device deviceID
// ("MAJ:MIN") becomes a fresh encrypted ext4 file system.
func EphemeralOptions(deviceID string, integrity bool) map[string]string {
	return map[string]string{
		OptDeviceID:       deviceID,
		OptEncryptionType: EncryptionLUKS2,
		OptSourceType:     SourceEmpty,
		OptTargetType:     TargetFS,
		OptFilesystemType: FSExt4,
		OptMkfsOpts:       EphemeralMkfsOpts,
		OptDataIntegrity:  strconv.FormatBool(integrity),
	}
}

// keyKind is where a key comes from.
type keyKind int

const (
	keyRandom keyKind = iota
	keySealed
	keyKBS
	keyFile
)

// params is a validated block-device request.
type params struct {
	hasDevID     bool
	major, minor uint32
	devicePath   string
	source       string
	keyKind      keyKind
	keyRef       string // the sealed secret, kbs URI or file path; never logged
	integrity    bool
	mapperName   string
	target       string
	fsType       string
	mkfsArgs     []string
	mountPoint   string
}

const (
	maxMkfsArgs   = 32
	maxOptionLen  = 4096
	maxMapperName = 127
)

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

func notImplemented(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrNotImplemented)
}

// normalizeLegacy turns the older Kata agent's {encryptType: LUKS} form
// into the current one.
func normalizeLegacy(opts map[string]string) (map[string]string, error) {
	et, ok := opts[optLegacyEncryptType]
	if !ok {
		return opts, nil
	}
	if _, both := opts[OptEncryptionType]; both {
		return nil, invalid(optLegacyEncryptType, "give %s or the legacy %s, not both", OptEncryptionType, optLegacyEncryptType)
	}
	if !strings.EqualFold(et, "luks") {
		return nil, notImplemented(optLegacyEncryptType, "%q is not supported (only LUKS)", et)
	}
	out := map[string]string{OptEncryptionType: EncryptionLUKS2, OptSourceType: SourceEmpty, OptTargetType: TargetFS, OptFilesystemType: FSExt4}
	for k, v := range opts {
		if k != optLegacyEncryptType {
			out[k] = v
		}
	}
	return out, nil
}

// parseParams validates a block-device request. Errors name the option and
// never echo the key option's value.
func parseParams(opts map[string]string, flags []string, mountPoint string) (params, error) {
	var p params
	if len(flags) != 0 {
		return p, invalid("flags", "the block-device volume takes none")
	}
	opts, err := normalizeLegacy(opts)
	if err != nil {
		return p, err
	}
	known := map[string]bool{OptDeviceID: true, OptDevicePath: true, OptSourceType: true, OptKey: true,
		OptEncryptionType: true, OptDataIntegrity: true, OptMapperName: true, OptTargetType: true,
		OptFilesystemType: true, OptMkfsOpts: true}
	for k, v := range opts {
		if !known[k] {
			return p, invalid("options", "unknown option %q", k)
		}
		if len(v) > maxOptionLen || strings.IndexByte(v, 0) >= 0 {
			return p, invalid(k, "must be at most %d bytes without NUL", maxOptionLen)
		}
	}

	if err := checkAbs("mount_point", mountPoint); err != nil {
		return p, err
	}
	p.mountPoint = mountPoint

	switch id, path := opts[OptDeviceID], opts[OptDevicePath]; {
	case id != "":
		maj, min, ok := strings.Cut(id, ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return p, invalid(OptDeviceID, "%q is not MAJ:MIN", id)
		}
		p.hasDevID, p.major, p.minor = true, uint32(ma), uint32(mi)
	case path != "":
		if err := checkAbs(OptDevicePath, path); err != nil {
			return p, err
		}
		p.devicePath = path
	default:
		return p, invalid(OptDeviceID, "either %s or %s must be set", OptDeviceID, OptDevicePath)
	}

	switch et := opts[OptEncryptionType]; et {
	case EncryptionLUKS2:
	case "zfs":
		return p, notImplemented(OptEncryptionType, "zfs is not supported")
	case "":
		return p, invalid(OptEncryptionType, "missing (luks2)")
	default:
		return p, invalid(OptEncryptionType, "%q is not luks2", et)
	}

	switch p.source = opts[OptSourceType]; p.source {
	case SourceEmpty, SourceEncrypted:
	case "":
		return p, invalid(OptSourceType, "missing (empty or encrypted)")
	default:
		return p, invalid(OptSourceType, "%q is not empty or encrypted", p.source)
	}

	switch k := opts[OptKey]; {
	case k == "":
		if _, set := opts[OptKey]; set {
			return p, invalid(OptKey, "empty; leave it out for a random key")
		}
		p.keyKind = keyRandom
	case strings.HasPrefix(k, sealed.Prefix):
		p.keyKind, p.keyRef = keySealed, k
	case strings.HasPrefix(k, "kbs://") || strings.HasPrefix(k, "kbs+"):
		if _, err := kbs.ParseResourceURI(k); err != nil {
			return p, fmt.Errorf("%s: %w", OptKey, err)
		}
		p.keyKind, p.keyRef = keyKBS, k
	case strings.HasPrefix(k, "file://"):
		path := strings.TrimPrefix(k, "file://")
		if err := checkAbs(OptKey, path); err != nil {
			return p, err
		}
		p.keyKind, p.keyRef = keyFile, path
	default:
		return p, invalid(OptKey, "scheme must be sealed., kbs:// or file://")
	}
	if p.source == SourceEncrypted && p.keyKind == keyRandom {
		return p, invalid(OptKey, "required to open an encrypted source")
	}

	switch v := opts[OptDataIntegrity]; v {
	case "", "false":
	case "true":
		p.integrity = true
	default:
		return p, invalid(OptDataIntegrity, "%q is not true or false", v)
	}

	if name, set := opts[OptMapperName]; set {
		if err := checkMapperName(name); err != nil {
			return p, err
		}
		p.mapperName = name
	}

	switch p.target = opts[OptTargetType]; p.target {
	case TargetFS, TargetDevice:
	case "":
		return p, invalid(OptTargetType, "missing (fileSystem or device)")
	default:
		return p, invalid(OptTargetType, "%q is not fileSystem or device", p.target)
	}
	if p.target == TargetDevice {
		for _, k := range []string{OptFilesystemType, OptMkfsOpts} {
			if _, set := opts[k]; set {
				return p, invalid(k, "only for targetType fileSystem")
			}
		}
		return p, nil
	}
	switch p.fsType = opts[OptFilesystemType]; p.fsType {
	case "":
		p.fsType = FSExt4
	case FSExt4:
	default:
		return p, invalid(OptFilesystemType, "%q is not ext4", p.fsType)
	}
	p.mkfsArgs = strings.Fields(opts[OptMkfsOpts])
	if len(p.mkfsArgs) > maxMkfsArgs {
		return p, invalid(OptMkfsOpts, "more than %d arguments", maxMkfsArgs)
	}
	if _, set := opts[OptMkfsOpts]; set && p.source == SourceEncrypted {
		return p, invalid(OptMkfsOpts, "an encrypted source is not formatted")
	}
	return p, nil
}

// checkAbs accepts a clean absolute path.
func checkAbs(field, p string) error {
	if p == "" || !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.IndexByte(p, 0) >= 0 {
		return invalid(field, "%q is not a clean absolute path", p)
	}
	return nil
}

// checkMapperName accepts names libdevmapper leaves unmangled.
func checkMapperName(n string) error {
	if n == "" || len(n) > maxMapperName || n == "." || n == ".." {
		return invalid(OptMapperName, "%q must be 1 to %d characters", n, maxMapperName)
	}
	for _, r := range n {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("#+-.:=@_", r)) {
			return invalid(OptMapperName, "%q: only letters, digits and #+-.:=@_", n)
		}
	}
	return nil
}
