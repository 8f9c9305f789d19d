package mount

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// sharedFSPremountTag is the virtio-fs tag that may already be mounted
// before the agent starts (kata's KATA_SHAREDFS_GUEST_PREMOUNT_TAG).
const sharedFSPremountTag = "kataShared"

// blockFSTypes are the file systems a block storage may carry.
var blockFSTypes = []string{"btrfs", "erofs", "ext2", "ext3", "ext4", "squashfs", "vfat", "xfs"}

// overlayDataKeys are the overlay options accepted besides lowerdir,
// upperdir and workdir. Features that trust lower-layer metadata
// (redirect_dir, metacopy) are left out.
var overlayDataKeys = []string{"index", "xino", "volatile", "userxattr", "uuid"}

type teardownFunc = func(context.Context) error

// keyValue splits "key=value"; ok is false without "=".
func keyValue(o string) (key, value string, ok bool) { return strings.Cut(o, "=") }

func parseGid(v string) (uint32, error) {
	g, err := strconv.ParseUint(v, 10, 32)
	if err != nil || g == 0xFFFFFFFF {
		return 0, invalid("options", "bad %s %q", OptionFSGid, v)
	}
	return uint32(g), nil
}

// setupLocal creates a directory (kata: "local" = a dir in the sandbox dir);
// options mode=<octal> and fsgid=<gid>. Nothing is mounted and nothing is
// removed later (kata keeps the directory too).
func (m *Manager) setupLocal(ctx context.Context, id string, s Storage, pl place) (teardownFunc, error) {
	var mode *uint32
	var gid *uint32
	for _, o := range s.Options {
		k, v, _ := keyValue(o)
		switch k {
		case OptionMode:
			md, err := strconv.ParseUint(v, 8, 32)
			if err != nil || md > 0o7777 {
				return nil, invalid("options", "bad %s %q", OptionMode, v)
			}
			m32 := uint32(md)
			mode = &m32
		case OptionFSGid:
			g, err := parseGid(v)
			if err != nil {
				return nil, err
			}
			gid = &g
		default:
			return nil, invalid("options", "option %q is not supported by the local driver", o)
		}
	}
	if len(s.DriverOptions) != 0 {
		return nil, invalid("driver_options", "the local driver takes none")
	}
	dir, err := mkdirIn(pl, 0o755)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	fd := int(dir.Fd())
	if gid != nil {
		if err := unix.Fchown(fd, -1, int(*gid)); err != nil {
			return nil, fmt.Errorf("chown %s: %w", pl.abs, err)
		}
	}
	if mode != nil {
		md := *mode
		if gid != nil {
			md |= unix.S_ISGID
		}
		if err := unix.Fchmod(fd, md); err != nil {
			return nil, fmt.Errorf("chmod %s: %w", pl.abs, err)
		}
	}
	m.log.DebugContext(ctx, "local storage ready", "id", id, "mount_point", pl.abs)
	return nil, nil
}

// setupEphemeral mounts a tmpfs. Options other than fsgid are mount
// options (kata drops them all when fsgid is present; Cova keeps size, mode,
// noexec and friends).
func (m *Manager) setupEphemeral(ctx context.Context, id string, s Storage, pl place) (teardownFunc, error) {
	switch s.Fstype {
	case "", "tmpfs":
	case "hugetlbfs":
		return nil, notImplemented("fstype", "hugetlbfs ephemeral storage is not supported")
	default:
		return nil, invalid("fstype", "ephemeral storage must be tmpfs, not %q", s.Fstype)
	}
	source := s.Source
	if source == "" {
		source = "tmpfs"
	}
	if err := checkLabel("source", source, 64); err != nil {
		return nil, err
	}
	if len(s.DriverOptions) != 0 {
		return nil, invalid("driver_options", "the ephemeral driver takes none")
	}
	var gid *uint32
	var opts []string
	for _, o := range s.Options {
		if k, v, _ := keyValue(o); k == OptionFSGid {
			g, err := parseGid(v)
			if err != nil {
				return nil, err
			}
			gid = &g
			continue
		}
		opts = append(opts, o)
	}
	flags, data, err := ParseOptions(opts)
	if err != nil {
		return nil, err
	}
	if err := checkFlags(flags); err != nil {
		return nil, err
	}
	if err := m.mountAt(pl, source, "tmpfs", flags, data); err != nil {
		return nil, err
	}
	teardown := func(context.Context) error { return m.unmountAt(pl) }
	if err := m.finishMount(ctx, s, pl, flags, gid); err != nil {
		_ = teardown(ctx)
		return nil, err
	}
	return teardown, nil
}

// setupOverlay mounts an overlay whose lower, upper and work directories must
// all lie under the allowed roots; they are handed to the kernel as
// /proc/self/fd paths so no symlink can substitute another directory.
func (m *Manager) setupOverlay(ctx context.Context, id string, s Storage, pl place) (teardownFunc, error) {
	switch s.Fstype {
	case "", "overlay":
	default:
		return nil, invalid("fstype", "overlayfs storage must be overlay, not %q", s.Fstype)
	}
	source := s.Source
	if source == "" {
		source = "overlay"
	}
	if err := checkLabel("source", source, 64); err != nil {
		return nil, err
	}
	var createDirs []place
	for _, o := range s.DriverOptions {
		k, v, _ := keyValue(o)
		if k != DriverOptionOverlayCreateDir {
			return nil, invalid("driver_options", "driver option %q is not supported by the overlayfs driver", o)
		}
		d, err := locate(m.roots, "driver_options", v)
		if err != nil {
			return nil, err
		}
		createDirs = append(createDirs, d)
	}

	var lowers []place
	var upper, work *place
	var rest []string
	for _, o := range s.Options {
		k, v, _ := keyValue(o)
		switch {
		case k == "lowerdir":
			if lowers != nil {
				return nil, invalid("options", "lowerdir given twice")
			}
			for _, l := range strings.Split(v, ":") {
				p, err := locate(m.roots, "options", l)
				if err != nil {
					return nil, err
				}
				lowers = append(lowers, p)
			}
		case k == "upperdir" || k == "workdir":
			p, err := locate(m.roots, "options", v)
			if err != nil {
				return nil, err
			}
			if k == "upperdir" {
				upper = &p
			} else {
				work = &p
			}
		case strings.HasPrefix(o, "io.katacontainers."):
			return nil, notImplemented("options", "option %q is not supported", o)
		default:
			if _, isFlag := mountFlags[o]; !isFlag && !slices.Contains(overlayDataKeys, k) {
				return nil, invalid("options", "overlay option %q is not allowed", o)
			}
			rest = append(rest, o)
		}
	}
	if len(lowers) == 0 {
		return nil, invalid("options", "overlay needs lowerdir")
	}
	if (upper == nil) != (work == nil) {
		return nil, invalid("options", "overlay needs both upperdir and workdir, or neither")
	}
	flags, data, err := ParseOptions(rest)
	if err != nil {
		return nil, err
	}
	if err := checkFlags(flags); err != nil {
		return nil, err
	}

	for _, d := range createDirs {
		f, err := mkdirIn(d, 0o755)
		if err != nil {
			return nil, err
		}
		_ = f.Close()
	}
	var handles []*os.File
	defer func() {
		for _, h := range handles {
			_ = h.Close()
		}
	}()
	open := func(p place) (string, error) {
		h, err := openDirIn(p)
		if err != nil {
			return "", err
		}
		handles = append(handles, h)
		return fdPath(h), nil
	}
	var lowerPaths []string
	for _, l := range lowers {
		p, err := open(l)
		if err != nil {
			return nil, err
		}
		lowerPaths = append(lowerPaths, p)
	}
	opts := []string{"lowerdir=" + strings.Join(lowerPaths, ":")}
	if upper != nil {
		up, err := open(*upper)
		if err != nil {
			return nil, err
		}
		wp, err := open(*work)
		if err != nil {
			return nil, err
		}
		opts = append(opts, "upperdir="+up, "workdir="+wp)
	}
	if data != "" {
		opts = append(opts, data)
	}
	data = strings.Join(opts, ",")
	if len(data) > maxMountDataLen {
		return nil, invalid("options", "mount data longer than %d bytes", maxMountDataLen)
	}
	if err := m.mountAt(pl, source, "overlay", flags, data); err != nil {
		return nil, err
	}
	teardown := func(context.Context) error { return m.unmountAt(pl) }
	if err := m.finishMount(ctx, s, pl, flags, nil); err != nil {
		_ = teardown(ctx)
		return nil, err
	}
	return teardown, nil
}

// setupVirtioFS mounts a virtio-fs share by tag.
func (m *Manager) setupVirtioFS(ctx context.Context, id string, s Storage, pl place) (teardownFunc, error) {
	switch s.Fstype {
	case "", "virtiofs":
	default:
		return nil, invalid("fstype", "virtio-fs storage must be virtiofs, not %q", s.Fstype)
	}
	if s.Source == "" {
		return nil, invalid("source", "virtio-fs tag is empty")
	}
	if err := checkLabel("source", s.Source, virtioFSTagLen); err != nil {
		return nil, err
	}
	if len(s.DriverOptions) != 0 {
		return nil, invalid("driver_options", "the virtio-fs driver takes none")
	}
	flags, data, err := ParseOptions(s.Options)
	if err != nil {
		return nil, err
	}
	if err := checkFlags(flags); err != nil {
		return nil, err
	}
	if s.Source == sharedFSPremountTag {
		if h, err := openIn(pl); err == nil {
			mounted, err := isMountRoot(h)
			_ = h.Close()
			if err == nil && mounted {
				m.log.WarnContext(ctx, "shared file system already mounted, leaving it", "mount_point", pl.abs)
				return nil, nil
			}
		}
	}
	if err := m.mountAt(pl, s.Source, "virtiofs", flags, data); err != nil {
		return nil, err
	}
	teardown := func(context.Context) error { return m.unmountAt(pl) }
	if err := m.finishMount(ctx, s, pl, flags, nil); err != nil {
		_ = teardown(ctx)
		return nil, err
	}
	return teardown, nil
}

// setupBlock waits for a virtio-blk (PCI path) or virtio-scsi (SCSI
// address) disk and mounts it. Driver options: create_filesystem formats
// the disk with ext4 first (a block emptyDir); encryption_key=ephemeral
// hands the disk to the SecureMounter, which maps it through dm-crypt with
// a fresh key and formats and mounts it. The X-kata.dmverity options mount
// it read-only through dm-verity against the root hash they pin.
func (m *Manager) setupBlock(ctx context.Context, id string, s Storage, pl place) (teardownFunc, error) {
	if s.Fstype != "" && !slices.Contains(blockFSTypes, s.Fstype) {
		return nil, invalid("fstype", "%q is not one of %s", s.Fstype, strings.Join(blockFSTypes, ", "))
	}
	r, err := m.parseBlock(s)
	if err != nil {
		return nil, err
	}
	dev, err := m.ResolveDevice(ctx, s.Driver, s.Source)
	if err != nil {
		return nil, err
	}
	m.log.DebugContext(ctx, "block device found", "id", id, "source", s.Source, "device", dev)
	switch {
	case r.ephemeral:
		return m.setupEncrypted(ctx, id, s, pl, dev)
	case r.verity != nil:
		return m.setupVerity(ctx, id, s, pl, dev, r)
	case r.createFS:
		if err := m.makeExt4(ctx, dev); err != nil {
			return nil, err
		}
	}
	if err := m.mountAt(pl, dev, s.Fstype, r.flags, r.data); err != nil {
		return nil, err
	}
	teardown := func(context.Context) error { return m.unmountAt(pl) }
	if err := m.finishMount(ctx, s, pl, r.flags, nil); err != nil {
		_ = teardown(ctx)
		return nil, err
	}
	return teardown, nil
}

// finishMount applies fsgid (ephemeral) and fs_group ownership to a fresh
// mount.
func (m *Manager) finishMount(ctx context.Context, s Storage, pl place, flags uintptr, fsgid *uint32) error {
	if fsgid == nil && s.FSGroup == nil {
		return nil
	}
	dir, err := openDirIn(pl)
	if err != nil {
		return err
	}
	defer dir.Close()
	if fsgid != nil {
		var st unix.Stat_t
		if err := unix.Fstat(int(dir.Fd()), &st); err != nil {
			return err
		}
		if err := unix.Fchown(int(dir.Fd()), -1, int(*fsgid)); err != nil {
			return fmt.Errorf("chown %s: %w", pl.abs, err)
		}
		if err := unix.Fchmod(int(dir.Fd()), st.Mode&0o7777|unix.S_ISGID); err != nil {
			return fmt.Errorf("chmod %s: %w", pl.abs, err)
		}
	}
	if s.FSGroup != nil {
		if flags&unix.MS_RDONLY != 0 {
			m.log.InfoContext(ctx, "read-only storage, skipping fs_group", "mount_point", pl.abs)
			return nil
		}
		if err := applyFSGroup(dir, *s.FSGroup); err != nil {
			return fmt.Errorf("fs_group on %s: %w", pl.abs, err)
		}
	}
	return nil
}
