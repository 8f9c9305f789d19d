package copyfile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"
)

// Copier applies CopyFile requests under one root directory. It is safe for
// concurrent use; requests are applied one at a time.
type Copier struct {
	root   string
	logger *slog.Logger
	mu     sync.Mutex
}

// New returns a Copier that writes under root (normally DefaultRoot). The
// root is created on first use if it does not exist. A nil logger discards.
func New(root string, logger *slog.Logger) (*Copier, error) {
	if !filepath.IsAbs(root) || filepath.Clean(root) != root || root == "/" {
		return nil, fmt.Errorf("copyfile root %q must be a clean absolute path other than /: %w", root, errdefs.ErrInvalidArgument)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Copier{root: root, logger: logger}, nil
}

// Root returns the directory the Copier writes under.
func (c *Copier) Root() string { return c.root }

// Validate checks r without touching the file system. Copy performs the same
// checks; the agent calls Validate before the policy so that requests kata
// would refuse to translate for the policy fail the same way.
func (c *Copier) Validate(r Request) error {
	_, err := checkRequest(c.root, r)
	return err
}

// Copy applies one CopyFile request. Errors for bad input wrap
// errdefs.ErrInvalidArgument and name the field.
func (c *Copier) Copy(ctx context.Context, r Request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := checkRequest(c.root, r)
	if err != nil {
		return fmt.Errorf("copy file: %w", err)
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	parent, err := c.openParent(p, r)
	if err != nil {
		return fmt.Errorf("copy file %s: %w", r.Path, err)
	}
	defer parent.Close()

	switch p.kind {
	case FileTypeRegular:
		err = c.writeChunk(parent, p, r)
	case FileTypeDirectory:
		err = makeDir(parent, p, r)
	case FileTypeSymlink:
		err = makeSymlink(parent, p, r)
	}
	if err != nil {
		return fmt.Errorf("copy file %s: %w", r.Path, err)
	}
	c.logger.DebugContext(ctx, "copied file", "path", r.Path, "type", string(p.kind),
		"offset", r.Offset, "len", len(r.Data), "file_size", r.FileSize)
	return nil
}

// openParent returns a directory handle (not O_PATH) for the parent of the
// target, creating missing directories with dir_mode. The lookup is scoped to
// the root: symlinks are resolved as if the root were "/", so they can never
// lead outside it.
func (c *Copier) openParent(p parsed, r Request) (*os.File, error) {
	if err := os.MkdirAll(c.root, 0o755); err != nil {
		return nil, fmt.Errorf("creating root: %w", err)
	}
	root, err := os.OpenFile(c.root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("opening root: %w", err)
	}
	if p.dir == "" {
		return root, nil
	}
	defer root.Close()
	dir, err := pathrs.MkdirAllHandle(root, p.dir, os.FileMode(r.DirMode&implicitDirMask))
	if err != nil {
		return nil, fmt.Errorf("creating parent directory: %w", err)
	}
	if err := unix.Fchown(int(dir.Fd()), int(r.UID), int(r.GID)); err != nil {
		_ = dir.Close()
		return nil, fmt.Errorf("chown parent directory: %w", err)
	}
	return dir, nil
}

// writeChunk writes one chunk of a regular file into the temporary file and,
// after the last chunk, moves the complete file into place.
func (c *Copier) writeChunk(parent *os.File, p parsed, r Request) error {
	dfd := int(parent.Fd())
	tmp := tempName(p.name)

	var fd int
	var err error
	if r.Offset == 0 {
		// A new transfer: drop any leftover of an abandoned one and create
		// the temporary file exclusively, never through a symlink.
		if err := unix.Unlinkat(dfd, tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("removing stale temporary file: %w", err)
		}
		fd, err = unix.Openat(dfd, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return fmt.Errorf("creating temporary file: %w", err)
		}
	} else {
		fd, err = unix.Openat(dfd, tmp, unix.O_RDWR|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("offset: chunk at %d but no transfer in progress: %w", r.Offset, errdefs.ErrFailedPrecondition)
		}
		if err != nil {
			return fmt.Errorf("opening temporary file: %w", err)
		}
	}
	f := os.NewFile(uintptr(fd), tmp)
	defer f.Close()
	abandon := func(err error) error {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return err
	}

	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return abandon(fmt.Errorf("stat temporary file: %w", err))
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Nlink != 1 {
		return abandon(fmt.Errorf("temporary file is not a private regular file: %w", errdefs.ErrFailedPrecondition))
	}
	if r.Offset > st.Size {
		return abandon(fmt.Errorf("offset: chunk at %d leaves a gap after %d bytes: %w", r.Offset, st.Size, errdefs.ErrInvalidArgument))
	}
	if _, err := f.WriteAt(r.Data, r.Offset); err != nil {
		return abandon(fmt.Errorf("writing chunk: %w", err))
	}
	if r.Offset+int64(len(r.Data)) != r.FileSize {
		return nil // more chunks to come
	}

	// Last chunk: the file must be exactly file_size long.
	if err := unix.Fstat(fd, &st); err != nil {
		return abandon(fmt.Errorf("stat temporary file: %w", err))
	}
	if st.Size != r.FileSize {
		return abandon(fmt.Errorf("file_size: transfer produced %d bytes, want %d: %w", st.Size, r.FileSize, errdefs.ErrInvalidArgument))
	}
	// chown before chmod: chown clears setuid/setgid, chmod sets the final mode.
	if err := unix.Fchown(fd, int(r.UID), int(r.GID)); err != nil {
		return abandon(fmt.Errorf("chown: %w", err))
	}
	if err := unix.Fchmod(fd, r.FileMode&filePermMask); err != nil {
		return abandon(fmt.Errorf("chmod: %w", err))
	}
	if err := f.Sync(); err != nil {
		return abandon(fmt.Errorf("sync: %w", err))
	}
	if err := replace(parent, tmp, p.name); err != nil {
		return abandon(err)
	}
	return nil
}

// makeDir creates (or keeps) the directory p.name and applies mode and owner.
func makeDir(parent *os.File, p parsed, r Request) error {
	dfd := int(parent.Fd())
	// Like kata: a non-directory at the target is replaced, an existing
	// directory is kept.
	if err := unix.Unlinkat(dfd, p.name, 0); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EISDIR) {
		return fmt.Errorf("removing existing file: %w", err)
	}
	if err := unix.Mkdirat(dfd, p.name, r.FileMode&implicitDirMask); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mkdir: %w", err)
	}
	fd, err := unix.Openat(dfd, p.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening directory: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Fchown(fd, int(r.UID), int(r.GID)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, r.FileMode&dirPermMask); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	return nil
}

// makeSymlink creates the link under a temporary name and renames it over
// the target.
func makeSymlink(parent *os.File, p parsed, r Request) error {
	dfd := int(parent.Fd())
	tmp := tempName(p.name)
	if err := unix.Unlinkat(dfd, tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing stale temporary link: %w", err)
	}
	if err := unix.Symlinkat(p.target, dfd, tmp); err != nil {
		return fmt.Errorf("symlink: %w", err)
	}
	if err := unix.Fchownat(dfd, tmp, int(r.UID), int(r.GID), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return fmt.Errorf("chown symlink: %w", err)
	}
	if err := replace(parent, tmp, p.name); err != nil {
		_ = unix.Unlinkat(dfd, tmp, 0)
		return err
	}
	return nil
}

// replace renames tmp over name inside parent. A directory at name is
// removed first (kata replaces whatever is at the target); files and symlinks
// are replaced atomically by the rename itself.
func replace(parent *os.File, tmp, name string) error {
	dfd := int(parent.Fd())
	var st unix.Stat_t
	err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW)
	switch {
	case errors.Is(err, unix.ENOENT):
	case err != nil:
		return fmt.Errorf("stat target: %w", err)
	case st.Mode&unix.S_IFMT == unix.S_IFDIR:
		// os.Root never leaves the directory it was opened on.
		root, err := os.OpenRoot(fmt.Sprintf("/proc/self/fd/%d", dfd))
		if err != nil {
			return fmt.Errorf("opening parent directory: %w", err)
		}
		err = root.RemoveAll(name)
		_ = root.Close()
		if err != nil {
			return fmt.Errorf("removing directory at target: %w", err)
		}
	}
	if err := unix.Renameat(dfd, tmp, dfd, name); err != nil {
		return fmt.Errorf("rename into place: %w", err)
	}
	if err := parent.Sync(); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}
