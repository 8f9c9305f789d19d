// Package cpio writes cpio archives in the "newc" (SVR4, no CRC) format, the
// one the Linux kernel unpacks as an initramfs. It writes only: Cova builds
// initrds, it never reads untrusted archives.
//
// Each entry is a 110-byte ASCII header ("070701" and thirteen 8-digit hex
// fields), the NUL-terminated name padded to a multiple of four bytes, and
// the data padded to a multiple of four. The archive ends with an entry
// named "TRAILER!!!". The writer adds nothing of its own (no timestamps, no
// owner, no inode numbers): every byte comes from the headers it is given,
// so the same headers and data give the same archive.
package cpio

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// Type bits of Header.Mode (the S_IFMT values of stat(2)).
const (
	TypeMask    = 0o170000
	TypeSocket  = 0o140000
	TypeSymlink = 0o120000
	TypeReg     = 0o100000
	TypeBlock   = 0o060000
	TypeDir     = 0o040000
	TypeChar    = 0o020000
	TypeFIFO    = 0o010000
)

// Magic is the newc header magic.
const Magic = "070701"

// TrailerName names the entry that ends an archive.
const TrailerName = "TRAILER!!!"

const (
	headerLen = 110
	maxField  = 0xffffffff
	// MaxNameLen bounds entry names (PATH_MAX, as the kernel does).
	MaxNameLen = 4095
)

// Header is one entry. Mode carries the type bits and the permissions.
// Size is the data length for regular files; for a symlink the data is
// Linkname and Size is ignored. All numbers must fit in 32 bits.
type Header struct {
	Name     string // path without a leading "/", e.g. "dev/console"
	Mode     uint32
	UID, GID uint32
	NLink    uint32
	MTime    int64 // seconds since the epoch
	Size     int64
	Ino      uint32
	DevMajor uint32
	DevMinor uint32
	// RDevMajor and RDevMinor are the device numbers of a character or
	// block device node.
	RDevMajor, RDevMinor uint32
	Linkname             string // symlink target
}

// ErrWriteTooLong is returned when more data is written than Header.Size.
var ErrWriteTooLong = errors.New("cpio: write too long")

// Writer writes a newc archive to an io.Writer. Call WriteHeader, then Write
// exactly Size bytes for a regular file; Close writes the trailer. Close
// does not close the underlying writer.
type Writer struct {
	w       io.Writer
	n       int64 // bytes written so far, for padding
	remain  int64 // data bytes still owed for the current entry
	padData bool  // the current entry's data needs padding when done
	closed  bool
	err     error
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

func (w *Writer) write(b []byte) error {
	if w.err != nil {
		return w.err
	}
	n, err := w.w.Write(b)
	w.n += int64(n)
	if err != nil {
		w.err = err
	}
	return err
}

func (w *Writer) pad() error {
	if r := w.n % 4; r != 0 {
		return w.write(make([]byte, 4-r))
	}
	return nil
}

// finishEntry checks the previous entry's data is complete and pads it.
func (w *Writer) finishEntry() error {
	if w.remain > 0 {
		return fmt.Errorf("cpio: previous entry is missing %d bytes of data", w.remain)
	}
	if w.padData {
		w.padData = false
		return w.pad()
	}
	return nil
}

// WriteHeader finishes the previous entry and writes h. For a symlink it
// also writes the target as the entry's data.
func (w *Writer) WriteHeader(h *Header) error {
	if w.closed {
		return errors.New("cpio: write after close")
	}
	if err := w.finishEntry(); err != nil {
		return err
	}
	if err := checkHeader(h); err != nil {
		return err
	}
	size := h.Size
	var data []byte
	switch h.Mode & TypeMask {
	case TypeReg:
	case TypeSymlink:
		data = []byte(h.Linkname)
		size = int64(len(data))
	default:
		size = 0
	}
	if err := w.writeRaw(h, size); err != nil {
		return err
	}
	if data != nil {
		if err := w.write(data); err != nil {
			return err
		}
		return w.pad()
	}
	w.remain = size
	w.padData = size > 0
	return nil
}

func (w *Writer) writeRaw(h *Header, size int64) error {
	var b strings.Builder
	b.Grow(headerLen + len(h.Name) + 4)
	b.WriteString(Magic)
	for _, v := range []uint64{
		uint64(h.Ino), uint64(h.Mode), uint64(h.UID), uint64(h.GID), uint64(h.NLink),
		uint64(h.MTime), uint64(size), uint64(h.DevMajor), uint64(h.DevMinor),
		uint64(h.RDevMajor), uint64(h.RDevMinor), uint64(len(h.Name) + 1), 0, // check: unused in newc
	} {
		fmt.Fprintf(&b, "%08x", v)
	}
	b.WriteString(h.Name)
	b.WriteByte(0)
	if err := w.write([]byte(b.String())); err != nil {
		return err
	}
	return w.pad()
}

func checkHeader(h *Header) error {
	switch {
	case h.Name == "":
		return errors.New("cpio: empty name")
	case len(h.Name) > MaxNameLen:
		return fmt.Errorf("cpio: name %.40q...: longer than %d bytes", h.Name, MaxNameLen)
	case strings.IndexByte(h.Name, 0) >= 0:
		return fmt.Errorf("cpio: name %q contains NUL", h.Name)
	case h.Name == TrailerName:
		return fmt.Errorf("cpio: name %q is reserved for the trailer", h.Name)
	case h.MTime < 0 || h.MTime > maxField:
		return fmt.Errorf("cpio: %s: mtime %d does not fit in 32 bits", h.Name, h.MTime)
	}
	switch h.Mode & TypeMask {
	case TypeReg:
		if h.Size < 0 || h.Size > maxField {
			return fmt.Errorf("cpio: %s: size %d does not fit in 32 bits", h.Name, h.Size)
		}
	case TypeSymlink:
		if h.Linkname == "" || len(h.Linkname) > MaxNameLen || strings.IndexByte(h.Linkname, 0) >= 0 {
			return fmt.Errorf("cpio: %s: bad symlink target %q", h.Name, h.Linkname)
		}
	case TypeDir, TypeChar, TypeBlock, TypeFIFO, TypeSocket:
	default:
		return fmt.Errorf("cpio: %s: unknown file type %#o", h.Name, h.Mode&TypeMask)
	}
	if h.Mode&^uint32(TypeMask|0o7777) != 0 {
		return fmt.Errorf("cpio: %s: unknown mode bits %#o", h.Name, h.Mode)
	}
	return nil
}

// Write writes data of the current regular file.
func (w *Writer) Write(b []byte) (int, error) {
	if int64(len(b)) > w.remain {
		return 0, ErrWriteTooLong
	}
	if err := w.write(b); err != nil {
		return 0, err
	}
	w.remain -= int64(len(b))
	return len(b), nil
}

// Close finishes the last entry and writes the trailer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if err := w.finishEntry(); err != nil {
		return err
	}
	w.closed = true
	if err := w.writeRaw(&Header{Name: TrailerName, NLink: 1}, 0); err != nil {
		return err
	}
	return w.err
}

// ModeOf converts a Go file mode to Header.Mode bits.
func ModeOf(m fs.FileMode) (uint32, error) {
	perm := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	switch t := m.Type(); {
	case t == 0:
		return TypeReg | perm, nil
	case t == fs.ModeDir:
		return TypeDir | perm, nil
	case t == fs.ModeSymlink:
		return TypeSymlink | perm, nil
	case t == fs.ModeDevice|fs.ModeCharDevice:
		return TypeChar | perm, nil
	case t == fs.ModeDevice:
		return TypeBlock | perm, nil
	case t == fs.ModeNamedPipe:
		return TypeFIFO | perm, nil
	case t == fs.ModeSocket:
		return TypeSocket | perm, nil
	}
	return 0, fmt.Errorf("cpio: unsupported file type %v", m.Type())
}
