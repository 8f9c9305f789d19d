// Package mount implements the agent's storage drivers: it turns the Storage
// objects of CreateSandbox and CreateContainer requests (Kata agent API) into
// directories and mounts inside the guest, and tears them down again.
//
// Built-in drivers: "local" (a directory), "ephemeral" (tmpfs), "overlayfs",
// "virtio-fs", "blk" (virtio-blk by PCI path) and "scsi" (virtio-scsi by
// SCSI address). Other packages can add drivers (for example
// image_guest_pull) through Options.Drivers.
//
// The block drivers follow Kata's trusted-storage conventions: driver
// option create_filesystem makes a fresh ext4 first; encryption_key=ephemeral
// hands the disk to Options.SecureMounter (the CDH), which maps it through
// dm-crypt with a key only the guest holds; the X-kata.dmverity storage
// options mount it read-only through dm-verity against the root hash they
// pin, so the host cannot change a byte unnoticed.
//
// Every Storage comes from the untrusted host. The Manager validates all
// fields before acting, only mounts below its allowed roots, creates and
// resolves mount points with file descriptors scoped to the root (so a
// symlink can never redirect a mount outside it), and mounts onto
// /proc/self/fd/N handles rather than path names. Mount points are reference
// counted: kata shares one storage between containers.
package mount

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Driver names understood by the built-in handlers.
const (
	DriverBlk       = "blk"
	DriverScsi      = "scsi"
	DriverVirtioFS  = "virtio-fs"
	DriverEphemeral = "ephemeral"
	DriverLocal     = "local"
	DriverOverlayFS = "overlayfs"
)

// Option and driver-option keys with a meaning of their own.
const (
	// OptionFSGid sets the group of a local or ephemeral volume's root
	// ("fsgid=<gid>") and adds the setgid bit.
	OptionFSGid = "fsgid"
	// OptionMode sets the permission bits of a local volume ("mode=0777").
	OptionMode = "mode"
	// DriverOptionOverlayCreateDir asks the overlayfs driver to create a
	// directory before mounting ("<key>=<path>").
	DriverOptionOverlayCreateDir = "io.katacontainers.volume.overlayfs.create_directory"
	// DriverOptionCreateFS asks a block driver to make a fresh ext4 first
	// (Kata's block emptyDir).
	DriverOptionCreateFS = "create_filesystem"
	// DriverOptionEphemeralEncryption asks a block driver for an encrypted
	// volume with a key that lives only in guest memory (through the
	// SecureMounter, as Kata asks its CDH).
	DriverOptionEphemeralEncryption = "encryption_key=ephemeral"
)

// Storage is a storage request from the host (agent.Storage).
type Storage struct {
	Driver        string
	DriverOptions []string
	Source        string
	Fstype        string
	Options       []string
	MountPoint    string
	FSGroup       *FSGroup
	Shared        bool
}

// FSGroup asks for the group ownership of a volume's files to be changed
// (Kubernetes fsGroup).
type FSGroup struct {
	GroupID      uint32
	ChangePolicy FSGroupChangePolicy
}

// FSGroupChangePolicy is types.FSGroupChangePolicy.
type FSGroupChangePolicy int32

// The FSGroup change policies.
const (
	FSGroupChangeAlways         FSGroupChangePolicy = 0
	FSGroupChangeOnRootMismatch FSGroupChangePolicy = 1
)

const (
	maxPathLen      = 4096
	maxFieldLen     = 4096
	maxMountDataLen = 4096 // one page, as the kernel copies it
	maxOptions      = 256
	virtioFSTagLen  = 36
)

// propagationFlags are applied with a second mount call after the mount.
const propagationFlags = unix.MS_SHARED | unix.MS_PRIVATE | unix.MS_SLAVE | unix.MS_UNBINDABLE

// forbiddenFlags are never accepted from the host: all drivers create fresh
// mounts of their own source, never binds, moves or remounts of guest paths.
const forbiddenFlags = unix.MS_BIND | unix.MS_REMOUNT | unix.MS_MOVE

type flagOp struct {
	set   bool
	flags uintptr
}

var mountFlags = map[string]flagOp{
	"defaults":      {},
	"async":         {false, unix.MS_SYNCHRONOUS},
	"atime":         {false, unix.MS_NOATIME},
	"dev":           {false, unix.MS_NODEV},
	"diratime":      {false, unix.MS_NODIRATIME},
	"exec":          {false, unix.MS_NOEXEC},
	"loud":          {false, unix.MS_SILENT},
	"noiversion":    {false, unix.MS_I_VERSION},
	"nomand":        {false, unix.MS_MANDLOCK},
	"norelatime":    {false, unix.MS_RELATIME},
	"nostrictatime": {false, unix.MS_STRICTATIME},
	"rw":            {false, unix.MS_RDONLY},
	"suid":          {false, unix.MS_NOSUID},
	"bind":          {true, unix.MS_BIND},
	"dirsync":       {true, unix.MS_DIRSYNC},
	"iversion":      {true, unix.MS_I_VERSION},
	"mand":          {true, unix.MS_MANDLOCK},
	"noatime":       {true, unix.MS_NOATIME},
	"nodev":         {true, unix.MS_NODEV},
	"nodiratime":    {true, unix.MS_NODIRATIME},
	"noexec":        {true, unix.MS_NOEXEC},
	"nosuid":        {true, unix.MS_NOSUID},
	"rbind":         {true, unix.MS_BIND | unix.MS_REC},
	"unbindable":    {true, unix.MS_UNBINDABLE},
	"runbindable":   {true, unix.MS_UNBINDABLE | unix.MS_REC},
	"private":       {true, unix.MS_PRIVATE},
	"rprivate":      {true, unix.MS_PRIVATE | unix.MS_REC},
	"shared":        {true, unix.MS_SHARED},
	"rshared":       {true, unix.MS_SHARED | unix.MS_REC},
	"slave":         {true, unix.MS_SLAVE},
	"rslave":        {true, unix.MS_SLAVE | unix.MS_REC},
	"relatime":      {true, unix.MS_RELATIME},
	"remount":       {true, unix.MS_REMOUNT},
	"ro":            {true, unix.MS_RDONLY},
	"silent":        {true, unix.MS_SILENT},
	"strictatime":   {true, unix.MS_STRICTATIME},
	"sync":          {true, unix.MS_SYNCHRONOUS},
}

// ParseOptions splits fstab-style mount options into mount(2) flags and the
// comma-joined file system data, the way kata does: known flag names (ro,
// nosuid, nodev, noexec, bind, rbind, rprivate, ...) become flags, anything
// else goes to data. "loop" is refused, as are empty options and options
// containing a comma or NUL (they would smuggle extra data options).
func ParseOptions(options []string) (flags uintptr, data string, err error) {
	if len(options) > maxOptions {
		return 0, "", invalid("options", "more than %d options", maxOptions)
	}
	var rest []string
	for _, o := range options {
		switch {
		case o == "":
			return 0, "", invalid("options", "empty option")
		case strings.ContainsAny(o, ",\x00"):
			return 0, "", invalid("options", "option %q contains a comma or NUL", o)
		case o == "loop":
			return 0, "", invalid("options", "option %q is not supported", o)
		}
		if op, ok := mountFlags[o]; ok {
			if op.set {
				flags |= op.flags
			} else {
				flags &^= op.flags
			}
			continue
		}
		rest = append(rest, o)
	}
	data = strings.Join(rest, ",")
	if len(data) > maxMountDataLen {
		return 0, "", invalid("options", "mount data longer than %d bytes", maxMountDataLen)
	}
	return flags, data, nil
}

// checkFlags refuses flags that would bind, move or remount guest paths.
func checkFlags(flags uintptr) error {
	if flags&forbiddenFlags != 0 {
		return invalid("options", "bind, rbind and remount are not allowed for storages")
	}
	return nil
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

func notImplemented(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrNotImplemented)
}

// checkText rejects NUL bytes and oversized values in a free-form field.
func checkText(field, v string) error {
	if strings.IndexByte(v, 0) >= 0 {
		return invalid(field, "contains a NUL byte")
	}
	if len(v) > maxFieldLen {
		return invalid(field, "longer than %d bytes", maxFieldLen)
	}
	return nil
}

// checkCommon validates the fields every driver shares.
func checkCommon(s Storage) error {
	for _, f := range []struct{ name, v string }{
		{"driver", s.Driver}, {"source", s.Source}, {"fstype", s.Fstype}, {"mount_point", s.MountPoint},
	} {
		if err := checkText(f.name, f.v); err != nil {
			return err
		}
	}
	if len(s.DriverOptions) > maxOptions {
		return invalid("driver_options", "more than %d options", maxOptions)
	}
	for _, o := range s.DriverOptions {
		if err := checkText("driver_options", o); err != nil {
			return err
		}
	}
	if len(s.Options) > maxOptions {
		return invalid("options", "more than %d options", maxOptions)
	}
	for _, o := range s.Options {
		if err := checkText("options", o); err != nil {
			return err
		}
	}
	if s.FSGroup != nil && s.FSGroup.ChangePolicy != FSGroupChangeAlways && s.FSGroup.ChangePolicy != FSGroupChangeOnRootMismatch {
		return invalid("fs_group", "unknown group_change_policy %d", s.FSGroup.ChangePolicy)
	}
	return nil
}

// place is a validated absolute path below one allowed root.
type place struct {
	root string // allowed root, clean and absolute
	rel  string // path relative to root, never empty, never ".."
	abs  string // root + "/" + rel
}

// locate validates path (named field in errors) and finds its allowed root.
func locate(roots []string, field, path string) (place, error) {
	switch {
	case path == "":
		return place{}, invalid(field, "must not be empty")
	case len(path) > maxPathLen:
		return place{}, invalid(field, "longer than %d bytes", maxPathLen)
	case strings.IndexByte(path, 0) >= 0:
		return place{}, invalid(field, "contains a NUL byte")
	case !filepath.IsAbs(path):
		return place{}, invalid(field, "%q is not absolute", path)
	}
	for _, c := range strings.Split(path, "/") {
		if c == ".." {
			return place{}, invalid(field, "%q contains a \"..\" component", path)
		}
	}
	if filepath.Clean(path) != path {
		return place{}, invalid(field, "%q is not a clean path", path)
	}
	for _, r := range roots {
		if rel, ok := strings.CutPrefix(path, r+"/"); ok && rel != "" {
			return place{root: r, rel: rel, abs: path}, nil
		}
	}
	return place{}, invalid(field, "%q is not under an allowed root (%s)", path, strings.Join(roots, ", "))
}

// checkLabel validates a source that is only a name (tmpfs, overlay, tag).
func checkLabel(field, v string, maxLen int) error {
	switch {
	case len(v) > maxLen:
		return invalid(field, "longer than %d bytes", maxLen)
	case strings.ContainsAny(v, "/,\x00 \t\n"):
		return invalid(field, "%q must be a plain name", v)
	}
	return nil
}
