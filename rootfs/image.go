// Package rootfs builds Cova's guest image: a reproducible initrd (cpio
// newc, optionally gzip) with the static agent as /init, the directories and
// device nodes PID 1 needs before it mounts anything, optional kernel
// modules with a modules.dep of their own, and extra files. The same inputs
// give the same bytes: entries are sorted, owned by 0:0, stamped with one
// fixed mtime, numbered in order, and the gzip header carries no name or
// time. It also computes the digests a verifier compares the image against.
package rootfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/rootfs/cpio"
)

// maxMTime is the largest mtime a newc header holds.
const maxMTime = 0xffffffff

// entry is one file of an Image. Data comes from src (read at write time)
// or data.
type entry struct {
	mode         uint32 // cpio type and permission bits
	src          string
	data         []byte
	link         string
	major, minor uint32
	implicit     bool // a parent directory nobody added explicitly
}

// Image is the file tree of an initrd, kept in memory as paths and sources;
// file contents are read when the archive is written. The zero value is not
// usable: call NewImage.
type Image struct {
	entries map[string]*entry
}

// NewImage returns an empty image.
func NewImage() *Image { return &Image{entries: map[string]*entry{}} }

// cleanDst turns an image path ("/dev/console" or "dev/console") into the
// archive name ("dev/console"). The root itself and paths with ".." are
// refused.
func cleanDst(field, p string) (string, error) {
	if p == "" || strings.IndexByte(p, 0) >= 0 {
		return "", fmt.Errorf("%s %q: must be a non-empty path without NUL: %w", field, p, errdefs.ErrInvalidArgument)
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." {
			return "", fmt.Errorf("%s %q: must not contain \"..\": %w", field, p, errdefs.ErrInvalidArgument)
		}
	}
	n := strings.TrimPrefix(path.Clean("/"+p), "/")
	if n == "" {
		return "", fmt.Errorf("%s %q: names the image root: %w", field, p, errdefs.ErrInvalidArgument)
	}
	if len(n) > cpio.MaxNameLen {
		return "", fmt.Errorf("%s: longer than %d bytes: %w", field, cpio.MaxNameLen, errdefs.ErrInvalidArgument)
	}
	return n, nil
}

// add records e at dst. A directory may be added again (the last mode
// wins); anything else added twice is an error, as is a path whose parent
// is not a directory.
func (im *Image) add(dst string, e *entry) error {
	name, err := cleanDst("destination", dst)
	if err != nil {
		return err
	}
	if old, ok := im.entries[name]; ok {
		bothDirs := old.mode&cpio.TypeMask == cpio.TypeDir && e.mode&cpio.TypeMask == cpio.TypeDir
		if !bothDirs && old.implicit {
			return fmt.Errorf("destination /%s: already a directory holding other entries: %w", name, errdefs.ErrAlreadyExists)
		}
		if !bothDirs {
			return fmt.Errorf("destination /%s: added twice: %w", name, errdefs.ErrAlreadyExists)
		}
		if e.implicit {
			return nil
		}
	}
	for p := path.Dir(name); p != "."; p = path.Dir(p) {
		if pe, ok := im.entries[p]; ok {
			if pe.mode&cpio.TypeMask != cpio.TypeDir {
				return fmt.Errorf("destination /%s: parent /%s is not a directory: %w", name, p, errdefs.ErrInvalidArgument)
			}
			break // its own parents were checked when it was added
		}
		im.entries[p] = &entry{mode: cpio.TypeDir | 0o755, implicit: true}
	}
	im.entries[name] = e
	return nil
}

func checkPerm(perm fs.FileMode) (uint32, error) {
	if perm&^(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
		return 0, fmt.Errorf("permissions %v: only permission, setuid, setgid and sticky bits are allowed: %w", perm, errdefs.ErrInvalidArgument)
	}
	m, err := cpio.ModeOf(perm)
	if err != nil {
		return 0, err
	}
	return m &^ cpio.TypeMask, nil
}

// AddDir adds a directory.
func (im *Image) AddDir(dst string, perm fs.FileMode) error {
	p, err := checkPerm(perm)
	if err != nil {
		return err
	}
	return im.add(dst, &entry{mode: cpio.TypeDir | p})
}

// AddFile adds the regular file src (symlinks followed) at dst. A zero perm
// keeps the source's permission bits.
func (im *Image) AddFile(dst, src string, perm fs.FileMode) error {
	fi, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("source of %s: %w", dst, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("source %s of %s: not a regular file: %w", src, dst, errdefs.ErrInvalidArgument)
	}
	if perm == 0 {
		perm = fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	}
	p, err := checkPerm(perm)
	if err != nil {
		return err
	}
	return im.add(dst, &entry{mode: cpio.TypeReg | p, src: src})
}

// AddBytes adds a regular file holding data.
func (im *Image) AddBytes(dst string, data []byte, perm fs.FileMode) error {
	p, err := checkPerm(perm)
	if err != nil {
		return err
	}
	if int64(len(data)) > maxMTime {
		return fmt.Errorf("destination %s: file too large for cpio: %w", dst, errdefs.ErrInvalidArgument)
	}
	return im.add(dst, &entry{mode: cpio.TypeReg | p, data: append([]byte(nil), data...)})
}

// AddSymlink adds a symbolic link to target.
func (im *Image) AddSymlink(dst, target string) error {
	if target == "" || strings.IndexByte(target, 0) >= 0 || len(target) > cpio.MaxNameLen {
		return fmt.Errorf("symlink %s: target %q: must be non-empty, without NUL, at most %d bytes: %w", dst, target, cpio.MaxNameLen, errdefs.ErrInvalidArgument)
	}
	return im.add(dst, &entry{mode: cpio.TypeSymlink | 0o777, link: target})
}

// AddCharDevice adds a character device node.
func (im *Image) AddCharDevice(dst string, perm fs.FileMode, major, minor uint32) error {
	p, err := checkPerm(perm)
	if err != nil {
		return err
	}
	return im.add(dst, &entry{mode: cpio.TypeChar | p, major: major, minor: minor})
}

// AddTree adds the directory src and everything below it at dst: regular
// files, directories and symlinks (kept as links) with their permission
// bits. Other file types are refused.
func (im *Image) AddTree(dst, src string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("walking %s: %w", src, err)
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := path.Join(dst, filepath.ToSlash(rel))
		fi, err := d.Info()
		if err != nil {
			return fmt.Errorf("walking %s: %w", src, err)
		}
		perm := fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		switch {
		case d.IsDir():
			return im.AddDir(target, perm)
		case d.Type().IsRegular():
			return im.AddFile(target, p, perm)
		case d.Type() == fs.ModeSymlink:
			l, err := os.Readlink(p)
			if err != nil {
				return fmt.Errorf("reading link %s: %w", p, err)
			}
			return im.AddSymlink(target, l)
		}
		return fmt.Errorf("%s: file type %v not supported in an image: %w", p, d.Type(), errdefs.ErrInvalidArgument)
	})
}

// Len returns the number of entries, implicit parent directories included.
func (im *Image) Len() int { return len(im.entries) }

// Names returns the archive names in the order they are written.
func (im *Image) Names() []string {
	names := make([]string, 0, len(im.entries))
	for n := range im.entries {
		names = append(names, n)
	}
	// Byte order puts every directory before what it holds: a child's name
	// is its parent's name followed by "/...".
	sort.Strings(names)
	return names
}

// WriteCPIO writes the image as a newc archive: entries in name order, owned
// by 0:0, all with mtime, numbered from 1 in that order.
func (im *Image) WriteCPIO(w io.Writer, mtime int64) error {
	if mtime < 0 || mtime > maxMTime {
		return fmt.Errorf("mtime %d: must be in 0..%d: %w", mtime, int64(maxMTime), errdefs.ErrInvalidArgument)
	}
	cw := cpio.NewWriter(w)
	for i, name := range im.Names() {
		e := im.entries[name]
		h := &cpio.Header{
			Name:      name,
			Mode:      e.mode,
			NLink:     1,
			MTime:     mtime,
			Ino:       uint32(i + 1),
			RDevMajor: e.major,
			RDevMinor: e.minor,
			Linkname:  e.link,
		}
		if e.mode&cpio.TypeMask == cpio.TypeDir {
			h.NLink = 2
		}
		if err := im.writeEntry(cw, h, e); err != nil {
			return err
		}
	}
	if err := cw.Close(); err != nil {
		return fmt.Errorf("writing cpio trailer: %w", err)
	}
	return nil
}

func (im *Image) writeEntry(cw *cpio.Writer, h *cpio.Header, e *entry) error {
	if e.mode&cpio.TypeMask != cpio.TypeReg {
		if err := cw.WriteHeader(h); err != nil {
			return fmt.Errorf("writing /%s: %w", h.Name, err)
		}
		return nil
	}
	if e.src == "" {
		h.Size = int64(len(e.data))
		if err := cw.WriteHeader(h); err != nil {
			return fmt.Errorf("writing /%s: %w", h.Name, err)
		}
		if _, err := cw.Write(e.data); err != nil {
			return fmt.Errorf("writing /%s: %w", h.Name, err)
		}
		return nil
	}
	f, err := os.Open(e.src)
	if err != nil {
		return fmt.Errorf("writing /%s: %w", h.Name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("writing /%s: %w", h.Name, err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("writing /%s: source %s is no longer a regular file: %w", h.Name, e.src, errdefs.ErrFailedPrecondition)
	}
	h.Size = fi.Size()
	if err := cw.WriteHeader(h); err != nil {
		return fmt.Errorf("writing /%s: %w", h.Name, err)
	}
	n, err := io.Copy(cw, f)
	if err == nil && n != h.Size {
		err = io.ErrUnexpectedEOF
	}
	if errors.Is(err, cpio.ErrWriteTooLong) {
		err = fmt.Errorf("source %s grew while being read: %w", e.src, errdefs.ErrFailedPrecondition)
	}
	if err != nil {
		return fmt.Errorf("writing /%s from %s: %w", h.Name, e.src, err)
	}
	return nil
}
