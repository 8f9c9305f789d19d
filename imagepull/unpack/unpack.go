// Package unpack extracts one image layer (a tar stream) into a directory in
// overlayfs form, treating the archive as hostile.
//
// Every path is resolved with openat2(RESOLVE_IN_ROOT|RESOLVE_NO_MAGICLINKS|
// RESOLVE_NO_XDEV) against the layer root (pathrs-lite emulates it on older
// kernels), and every change is made with an *at system call relative to the
// resolved parent, never following a symlink in the last component. Entry
// names are cleaned lexically against "/" first, so "..", absolute names and
// symlinked parents can only land inside the root. Hardlink targets resolve
// the same way and must already exist in this layer.
//
// Whiteouts (".wh.NAME") become 0/0 character devices and opaque markers
// (".wh..wh..opq") set the overlay opaque xattr on their directory; layer
// xattrs in the trusted.* and security.* namespaces are dropped (except
// security.capability under AllowSetuid), device nodes are never created,
// and setuid/setgid bits are cleared unless AllowSetuid is set.
package unpack

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/internal/textclip"
)

// Overlay xattr names for opaque directories.
const (
	OpaqueXattrTrusted = "trusted.overlay.opaque"
	OpaqueXattrUser    = "user.overlay.opaque"

	whiteoutPrefix = ".wh."
	whiteoutMeta   = ".wh..wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// Defaults for Options limits.
const (
	DefaultMaxEntries     = 1 << 20
	DefaultMaxBytes       = 32 << 30
	DefaultMaxNameLen     = 4096
	DefaultMaxHeaderBytes = 1<<20 + 4096
	maxComponent          = 255
	maxXattrValue         = 64 << 10
)

// ErrInvalidArchive marks a layer that breaks the rules; it wraps
// errdefs.ErrInvalidArgument.
var ErrInvalidArchive = fmt.Errorf("invalid layer archive: %w", errdefs.ErrInvalidArgument)

// Options controls an unpack. The zero value is safe.
type Options struct {
	// OpaqueXattr is the xattr set on opaque directories:
	// OpaqueXattrTrusted (default; needs CAP_SYS_ADMIN) or OpaqueXattrUser
	// for overlay mounts with the userxattr option.
	OpaqueXattr string
	// AllowSetuid keeps setuid/setgid bits and security.capability xattrs.
	AllowSetuid bool
	// IgnoreOwnership skips chown. Ownership is also skipped when not root.
	IgnoreOwnership bool
	// MaxEntries bounds the number of tar entries.
	MaxEntries int64
	// MaxBytes bounds the uncompressed bytes of file content.
	MaxBytes int64
	// MaxNameLen bounds entry names and link targets (bytes).
	MaxNameLen int
	// MaxHeaderBytes bounds the header bytes (PAX records, GNU long names)
	// of one entry.
	MaxHeaderBytes int64
	// Logger receives notes about dropped content; nil discards.
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.OpaqueXattr == "" {
		o.OpaqueXattr = OpaqueXattrTrusted
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = DefaultMaxEntries
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	if o.MaxNameLen <= 0 {
		o.MaxNameLen = DefaultMaxNameLen
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Stats counts what an unpack did.
type Stats struct {
	Entries, Files, Dirs, Symlinks, Hardlinks, Fifos int64
	Whiteouts, Opaques                               int64
	Bytes                                            int64 // file content written
	SkippedDevices, DroppedXattrs, ClearedSetuid     int64
}

// Unpack reads a tar stream from r and extracts it into root, an existing
// directory that only this call writes to (a staging directory). It stops at
// the end of the archive without draining r. On error root is left partly
// written: the caller removes it.
func Unpack(ctx context.Context, r io.Reader, root string, opts Options) (Stats, error) {
	opts.defaults()
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return Stats{}, fmt.Errorf("opening unpack root %s: %w", root, err)
	}
	u := &unpacker{
		ctx:     ctx,
		opts:    opts,
		rootFD:  rootFD,
		rootF:   os.NewFile(uintptr(rootFD), root),
		chown:   !opts.IgnoreOwnership && os.Geteuid() == 0,
		cacheFD: -1,
		buf:     make([]byte, 256<<10),
	}
	defer u.close()
	cr := &countingReader{r: r}
	err = u.run(tar.NewReader(cr), cr)
	if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
		// The work dir (a tmpfs sized for the guest) is full.
		err = fmt.Errorf("%w: %w", err, errdefs.ErrResourceExhausted)
	}
	return u.stats, err
}

type dirMeta struct {
	rel   string
	mode  uint32
	mtime time.Time
	atime time.Time
}

type unpacker struct {
	ctx    context.Context
	opts   Options
	rootFD int
	rootF  *os.File
	chown  bool
	stats  Stats
	buf    []byte
	dirs   []dirMeta

	// one-entry cache of the last resolved parent directory
	cachePath string
	cacheFD   int
}

func (u *unpacker) close() {
	u.dropCache()
	u.rootF.Close()
}

func (u *unpacker) dropCache() {
	if u.cacheFD >= 0 {
		unix.Close(u.cacheFD)
		u.cacheFD = -1
		u.cachePath = ""
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrInvalidArchive)
}

func (u *unpacker) run(tr *tar.Reader, cr *countingReader) error {
	for {
		if err := u.ctx.Err(); err != nil {
			return err
		}
		before := cr.n
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, tar.ErrHeader) || errors.Is(err, tar.ErrFieldTooLong) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("reading tar header: %v: %w", err, ErrInvalidArchive)
			}
			return fmt.Errorf("reading tar header: %w", err)
		}
		if cr.n-before > u.opts.MaxHeaderBytes {
			return invalid("entry %q: %d header bytes exceeds the limit of %d", clip(hdr.Name), cr.n-before, u.opts.MaxHeaderBytes)
		}
		u.stats.Entries++
		if u.stats.Entries > u.opts.MaxEntries {
			return invalid("more than %d entries", u.opts.MaxEntries)
		}
		if err := u.entry(tr, hdr); err != nil {
			return err
		}
		// Consume what the entry did not (data of skipped entries), so the
		// header accounting above sees only headers and padding. Bounded:
		// a sparse entry can claim terabytes of holes.
		n, err := io.CopyBuffer(io.Discard, io.LimitReader(tr, u.opts.MaxBytes-u.stats.Bytes+1), u.buf)
		u.stats.Bytes += n
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("entry %q: archive ended inside its data: %w", clip(hdr.Name), ErrInvalidArchive)
			}
			return fmt.Errorf("entry %q: reading data: %w", clip(hdr.Name), err)
		}
		if u.stats.Bytes > u.opts.MaxBytes {
			return invalid("content exceeds %d bytes", u.opts.MaxBytes)
		}
	}
	return u.finishDirs()
}

// cleanName turns an entry name into a path relative to the root: "" is the
// root itself. ".." cannot climb above the root (lexical clean against "/").
func (u *unpacker) cleanName(field, name string) (string, error) {
	if len(name) > u.opts.MaxNameLen {
		return "", invalid("%s: %d bytes exceeds the limit of %d", field, len(name), u.opts.MaxNameLen)
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", invalid("%s %q: contains NUL", field, clip(name))
	}
	p := path.Clean("/" + name)[1:]
	for _, c := range strings.Split(p, "/") {
		if len(c) > maxComponent {
			return "", invalid("%s %q: component longer than %d", field, clip(name), maxComponent)
		}
	}
	return p, nil
}

func (u *unpacker) entry(tr *tar.Reader, hdr *tar.Header) error {
	rel, err := u.cleanName("name", hdr.Name)
	if err != nil {
		return err
	}
	dir, base := path.Split(rel)
	dir = strings.TrimSuffix(dir, "/")

	if strings.HasPrefix(base, whiteoutPrefix) {
		return u.whiteout(dir, base)
	}

	if hdr.Uid < 0 || hdr.Gid < 0 || int64(hdr.Uid) >= 1<<32-1 || int64(hdr.Gid) >= 1<<32-1 {
		return invalid("entry %q: uid/gid %d/%d out of range", clip(hdr.Name), hdr.Uid, hdr.Gid)
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		return u.mkdir(rel, dir, base, hdr)
	case tar.TypeReg, tar.TypeCont, tar.TypeGNUSparse: // the reader turns TypeRegA into TypeReg
		if rel == "" {
			return invalid("regular file entry names the root")
		}
		return u.file(tr, dir, base, hdr)
	case tar.TypeSymlink:
		if rel == "" {
			return invalid("symlink entry %q names the root", clip(hdr.Name))
		}
		return u.symlink(dir, base, hdr)
	case tar.TypeLink:
		if rel == "" {
			return invalid("hardlink entry %q names the root", clip(hdr.Name))
		}
		return u.hardlink(dir, base, hdr)
	case tar.TypeFifo:
		if rel == "" {
			return invalid("fifo entry names the root")
		}
		return u.fifo(dir, base, hdr)
	case tar.TypeChar, tar.TypeBlock:
		u.stats.SkippedDevices++
		u.opts.Logger.Debug("layer device node not created", "name", clip(rel))
		return nil
	case tar.TypeXGlobalHeader:
		return nil
	default:
		return invalid("entry %q: unsupported type %q", clip(hdr.Name), hdr.Typeflag)
	}
}

// parent returns an fd (O_PATH) for the directory dir inside the root,
// creating missing directories. The fd is owned by the cache or is the root:
// callers must not close it.
func (u *unpacker) parent(dir string) (int, error) {
	if dir == "" {
		return u.rootFD, nil
	}
	if u.cacheFD >= 0 && u.cachePath == dir {
		return u.cacheFD, nil
	}
	fd, err := openInRoot(u.rootFD, u.rootF, dir, unix.O_PATH|unix.O_DIRECTORY)
	if errors.Is(err, unix.ENOENT) {
		var f *os.File
		f, err = pathrs.MkdirAllHandle(u.rootF, dir, 0o755)
		if err == nil {
			fd, err = unix.Dup(int(f.Fd()))
			f.Close()
		}
	}
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
			return -1, invalid("parent %q is not a directory inside the layer: %v", clip(dir), err)
		}
		return -1, fmt.Errorf("resolving parent %q: %w", clip(dir), err)
	}
	u.dropCache()
	u.cachePath, u.cacheFD = dir, fd
	return fd, nil
}

// removeAt removes whatever is at parent/base (recursively for a
// directory) without following symlinks.
func (u *unpacker) removeAt(parent int, base string) error {
	err := removeAllAt(parent, base, 0)
	// What was removed may have been (or led to) the cached directory.
	u.dropCache()
	return err
}

func removeAllAt(parent int, base string, depth int) error {
	if depth > 4096 {
		return invalid("directory nesting too deep to remove")
	}
	err := unix.Unlinkat(parent, base, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return fmt.Errorf("removing %q: %w", clip(base), err)
	}
	fd, err := unix.Openat(parent, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %q to remove it: %w", clip(base), err)
	}
	f := os.NewFile(uintptr(fd), base)
	defer f.Close()
	for {
		names, err := f.Readdirnames(256)
		for _, n := range names {
			if err := removeAllAt(fd, n, depth+1); err != nil {
				return err
			}
		}
		if err == io.EOF || len(names) == 0 {
			break
		}
		if err != nil {
			return fmt.Errorf("listing %q: %w", clip(base), err)
		}
	}
	if err := unix.Unlinkat(parent, base, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing directory %q: %w", clip(base), err)
	}
	return nil
}

func (u *unpacker) mode(hdr *tar.Header) uint32 {
	m := uint32(hdr.Mode) & 0o7777
	if !u.opts.AllowSetuid && m&(unix.S_ISUID|unix.S_ISGID) != 0 {
		m &^= unix.S_ISUID | unix.S_ISGID
		u.stats.ClearedSetuid++
	}
	return m
}

func (u *unpacker) lchown(parent int, base string, hdr *tar.Header) error {
	if !u.chown {
		return nil
	}
	if err := unix.Fchownat(parent, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown %q: %w", clip(base), err)
	}
	return nil
}

func times(hdr *tar.Header) []unix.Timespec {
	at := hdr.AccessTime
	if at.IsZero() {
		at = hdr.ModTime
	}
	return []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
}

func (u *unpacker) settimes(parent int, base string, hdr *tar.Header) error {
	if err := unix.UtimesNanoAt(parent, base, times(hdr), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting times of %q: %w", clip(base), err)
	}
	return nil
}

// xattrs applies the allowed xattrs of hdr to fd.
func (u *unpacker) xattrs(fd int, name string, hdr *tar.Header) error {
	for k, v := range hdr.PAXRecords {
		attr, ok := strings.CutPrefix(k, "SCHILY.xattr.")
		if !ok {
			continue
		}
		// user.overlay.* steers overlayfs mounted with userxattr (opaque,
		// redirect, metacopy, whiteout): only this package may set it.
		keep := (strings.HasPrefix(attr, "user.") && !strings.HasPrefix(attr, "user.overlay.")) ||
			(attr == "security.capability" && u.opts.AllowSetuid)
		if !keep || len(attr) > 255 || len(v) > maxXattrValue {
			u.stats.DroppedXattrs++
			u.opts.Logger.Debug("layer xattr dropped", "name", clip(name), "xattr", clip(attr))
			continue
		}
		if err := unix.Fsetxattr(fd, attr, []byte(v), 0); err != nil {
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EOPNOTSUPP) {
				u.stats.DroppedXattrs++
				continue
			}
			return fmt.Errorf("setting xattr %q on %q: %w", clip(attr), clip(name), err)
		}
	}
	return nil
}

func hasXattrs(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			return true
		}
	}
	return false
}

func (u *unpacker) mkdir(rel, dir, base string, hdr *tar.Header) error {
	var fd int
	if rel == "" {
		// The root itself: only metadata.
		var err error
		fd, err = unix.Openat(u.rootFD, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening the root: %w", err)
		}
		if u.chown {
			if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
				unix.Close(fd)
				return fmt.Errorf("chown of the root: %w", err)
			}
		}
	} else {
		parent, err := u.parent(dir)
		if err != nil {
			return err
		}
		err = unix.Mkdirat(parent, base, 0o700)
		if errors.Is(err, unix.EEXIST) {
			var st unix.Stat_t
			if err := unix.Fstatat(parent, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("stat %q: %w", clip(rel), err)
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				if err := u.removeAt(parent, base); err != nil {
					return err
				}
				if parent, err = u.parent(dir); err != nil {
					return err
				}
				err = unix.Mkdirat(parent, base, 0o700)
			} else {
				err = nil
			}
		}
		if err != nil {
			return fmt.Errorf("mkdir %q: %w", clip(rel), err)
		}
		if err := u.lchown(parent, base, hdr); err != nil {
			return err
		}
		if !hasXattrs(hdr) {
			u.stats.Dirs++
			u.dirs = append(u.dirs, dirMeta{rel: rel, mode: u.mode(hdr), mtime: hdr.ModTime, atime: hdr.AccessTime})
			return nil
		}
		fd, err = unix.Openat(parent, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening %q: %w", clip(rel), err)
		}
	}
	defer unix.Close(fd)
	if err := u.xattrs(fd, rel, hdr); err != nil {
		return err
	}
	u.stats.Dirs++
	u.dirs = append(u.dirs, dirMeta{rel: rel, mode: u.mode(hdr), mtime: hdr.ModTime, atime: hdr.AccessTime})
	return nil
}

// finishDirs sets directory modes and times last, so that read-only
// directories can still be filled and their mtimes stay as recorded.
func (u *unpacker) finishDirs() error {
	for i := len(u.dirs) - 1; i >= 0; i-- {
		d := u.dirs[i]
		var fd int
		var err error
		if d.rel == "" {
			fd, err = unix.Openat(u.rootFD, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		} else {
			fd, err = openInRoot(u.rootFD, u.rootF, d.rel, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
		}
		if err != nil {
			// Replaced by a later entry (a file, a symlink, a whiteout).
			continue
		}
		err = unix.Fchmod(fd, d.mode)
		if err == nil {
			at := d.atime
			if at.IsZero() {
				at = d.mtime
			}
			err = futimens(fd, []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(d.mtime.UnixNano())})
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("setting mode and times of %q: %w", clip(d.rel), err)
		}
	}
	return nil
}

func (u *unpacker) file(tr *tar.Reader, dir, base string, hdr *tar.Header) error {
	if hdr.Size < 0 {
		return invalid("file %q: negative size", clip(hdr.Name))
	}
	if u.stats.Bytes+hdr.Size > u.opts.MaxBytes {
		return invalid("content exceeds %d bytes", u.opts.MaxBytes)
	}
	parent, err := u.parent(dir)
	if err != nil {
		return err
	}
	const flags = unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(parent, base, flags, 0o600)
	if errors.Is(err, unix.EEXIST) {
		if err := u.removeAt(parent, base); err != nil {
			return err
		}
		if parent, err = u.parent(dir); err != nil {
			return err
		}
		fd, err = unix.Openat(parent, base, flags, 0o600)
	}
	if err != nil {
		return fmt.Errorf("creating %q: %w", clip(hdr.Name), err)
	}
	defer unix.Close(fd)
	n, err := u.copyData(fd, tr, hdr.Size)
	u.stats.Bytes += n
	if err != nil {
		return fmt.Errorf("writing %q: %w", clip(hdr.Name), err)
	}
	if u.chown {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return fmt.Errorf("chown %q: %w", clip(hdr.Name), err)
		}
	}
	if err := unix.Fchmod(fd, u.mode(hdr)); err != nil {
		return fmt.Errorf("chmod %q: %w", clip(hdr.Name), err)
	}
	if err := u.xattrs(fd, hdr.Name, hdr); err != nil {
		return err
	}
	if err := u.settimes(parent, base, hdr); err != nil {
		return err
	}
	u.stats.Files++
	return nil
}

// copyData writes exactly size bytes from r to fd, leaving holes for
// all-zero blocks (sparse entries and zero-filled files stay small).
func (u *unpacker) copyData(fd int, r io.Reader, size int64) (int64, error) {
	var done int64
	hole := false
	for done < size {
		want := int64(len(u.buf))
		if size-done < want {
			want = size - done
		}
		n, err := io.ReadFull(r, u.buf[:want])
		if n > 0 {
			chunk := u.buf[:n]
			if n == len(u.buf) && allZero(chunk) {
				if _, err := unix.Seek(fd, int64(n), io.SeekCurrent); err != nil {
					return done, err
				}
				hole = true
			} else {
				for len(chunk) > 0 {
					w, err := unix.Write(fd, chunk)
					if err != nil {
						if errors.Is(err, unix.EINTR) {
							continue
						}
						return done, err
					}
					chunk = chunk[w:]
				}
				hole = false
			}
			done += int64(n)
		}
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return done, fmt.Errorf("archive ended inside the file: %w", ErrInvalidArchive)
			}
			return done, err
		}
	}
	if hole {
		if err := unix.Ftruncate(fd, size); err != nil {
			return done, err
		}
	}
	return done, nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (u *unpacker) symlink(dir, base string, hdr *tar.Header) error {
	target := hdr.Linkname
	if target == "" || len(target) > u.opts.MaxNameLen || strings.IndexByte(target, 0) >= 0 {
		return invalid("symlink %q: bad target length or NUL", clip(hdr.Name))
	}
	parent, err := u.parent(dir)
	if err != nil {
		return err
	}
	err = unix.Symlinkat(target, parent, base)
	if errors.Is(err, unix.EEXIST) {
		if err := u.removeAt(parent, base); err != nil {
			return err
		}
		if parent, err = u.parent(dir); err != nil {
			return err
		}
		err = unix.Symlinkat(target, parent, base)
	}
	if err != nil {
		return fmt.Errorf("symlink %q: %w", clip(hdr.Name), err)
	}
	if err := u.lchown(parent, base, hdr); err != nil {
		return err
	}
	if hasXattrs(hdr) {
		u.stats.DroppedXattrs++
	}
	if err := u.settimes(parent, base, hdr); err != nil {
		return err
	}
	u.stats.Symlinks++
	return nil
}

func (u *unpacker) hardlink(dir, base string, hdr *tar.Header) error {
	trel, err := u.cleanName("link target", hdr.Linkname)
	if err != nil {
		return err
	}
	if trel == "" {
		return invalid("hardlink %q: target is the root", clip(hdr.Name))
	}
	tdir, tbase := path.Split(trel)
	tdir = strings.TrimSuffix(tdir, "/")
	tparent := u.rootFD
	if tdir != "" {
		fd, err := openInRoot(u.rootFD, u.rootF, tdir, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return invalid("hardlink %q: target %q is not in this layer: %v", clip(hdr.Name), clip(hdr.Linkname), err)
		}
		defer unix.Close(fd)
		tparent = fd
	}
	var st unix.Stat_t
	if err := unix.Fstatat(tparent, tbase, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return invalid("hardlink %q: target %q is not in this layer: %v", clip(hdr.Name), clip(hdr.Linkname), err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return invalid("hardlink %q: target %q is a directory", clip(hdr.Name), clip(hdr.Linkname))
	}
	if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
		return invalid("hardlink %q: target %q is a whiteout", clip(hdr.Name), clip(hdr.Linkname))
	}
	parent, err := u.parent(dir)
	if err != nil {
		return err
	}
	// flags 0: a symlink target is linked itself, never followed.
	err = unix.Linkat(tparent, tbase, parent, base, 0)
	if errors.Is(err, unix.EEXIST) {
		var dst unix.Stat_t
		if unix.Fstatat(parent, base, &dst, unix.AT_SYMLINK_NOFOLLOW) == nil && dst.Ino == st.Ino && dst.Dev == st.Dev {
			u.stats.Hardlinks++
			return nil // already the same file
		}
		if err := u.removeAt(parent, base); err != nil {
			return err
		}
		if parent, err = u.parent(dir); err != nil {
			return err
		}
		err = unix.Linkat(tparent, tbase, parent, base, 0)
	}
	if err != nil {
		return fmt.Errorf("hardlink %q -> %q: %w", clip(hdr.Name), clip(hdr.Linkname), err)
	}
	u.stats.Hardlinks++
	return nil
}

func (u *unpacker) fifo(dir, base string, hdr *tar.Header) error {
	parent, err := u.parent(dir)
	if err != nil {
		return err
	}
	perm := u.mode(hdr)
	mode := unix.S_IFIFO | perm
	err = unix.Mknodat(parent, base, mode, 0)
	if errors.Is(err, unix.EEXIST) {
		if err := u.removeAt(parent, base); err != nil {
			return err
		}
		if parent, err = u.parent(dir); err != nil {
			return err
		}
		err = unix.Mknodat(parent, base, mode, 0)
	}
	if err != nil {
		return fmt.Errorf("mkfifo %q: %w", clip(hdr.Name), err)
	}
	if err := u.lchown(parent, base, hdr); err != nil {
		return err
	}
	// mknod applied the umask; set the exact mode. base is the fifo just
	// created in a directory nothing else writes to, so this cannot follow
	// a symlink.
	if err := unix.Fchmodat(parent, base, perm, 0); err != nil {
		return fmt.Errorf("chmod fifo %q: %w", clip(hdr.Name), err)
	}
	if err := u.settimes(parent, base, hdr); err != nil {
		return err
	}
	u.stats.Fifos++
	return nil
}

// whiteout converts an AUFS whiteout entry to overlay form.
func (u *unpacker) whiteout(dir, base string) error {
	switch {
	case base == whiteoutOpaque:
		return u.opaque(dir)
	case strings.HasPrefix(base, whiteoutMeta):
		// Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): ignored.
		return nil
	}
	name := strings.TrimPrefix(base, whiteoutPrefix)
	if name == "" || name == "." || name == ".." {
		return invalid("whiteout %q names no file", clip(path.Join(dir, base)))
	}
	parent, err := u.parent(dir)
	if err != nil {
		return err
	}
	err = unix.Mknodat(parent, name, unix.S_IFCHR, 0)
	if errors.Is(err, unix.EEXIST) {
		if err := u.removeAt(parent, name); err != nil {
			return err
		}
		if parent, err = u.parent(dir); err != nil {
			return err
		}
		err = unix.Mknodat(parent, name, unix.S_IFCHR, 0)
	}
	if err != nil {
		return fmt.Errorf("creating whiteout for %q: %w", clip(path.Join(dir, name)), err)
	}
	u.stats.Whiteouts++
	return nil
}

func (u *unpacker) opaque(dir string) error {
	var fd int
	var err error
	if dir == "" {
		fd, err = unix.Openat(u.rootFD, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	} else {
		if _, err = u.parent(dir); err != nil { // creates it if missing
			return err
		}
		fd, err = openInRoot(u.rootFD, u.rootF, dir, unix.O_RDONLY|unix.O_DIRECTORY)
	}
	if err != nil {
		return fmt.Errorf("opening opaque directory %q: %w", clip(dir), err)
	}
	defer unix.Close(fd)
	if err := unix.Fsetxattr(fd, u.opts.OpaqueXattr, []byte("y"), 0); err != nil {
		return fmt.Errorf("marking %q opaque with %s: %w", clip(dir), u.opts.OpaqueXattr, err)
	}
	u.stats.Opaques++
	return nil
}

func clip(s string) string { return textclip.Clip(s, 120) }
