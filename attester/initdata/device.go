package initdata

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultDevDir is where Find looks for block devices.
const DefaultDevDir = "/dev"

// devicePrefixes name the disks kata attaches initdata as: virtio-blk (vd*)
// and virtio-scsi (sd*).
var devicePrefixes = []string{"vd", "sd"}

// Devices is where Find looks for the initdata device; the zero value scans
// the real /dev.
type Devices struct {
	// Dir is scanned for block devices named vd* and sd*, in name order;
	// DefaultDevDir when empty.
	Dir string
	// Path, when set, names the initdata device and nothing is scanned;
	// a device there without the magic is ErrBadMagic, not absence.
	Path string
	// IncludeRegular also accepts regular files (disk images), for tests
	// and tools; only block devices are candidates otherwise.
	IncludeRegular bool
	// Open opens a candidate for reading; os.Open when nil. Tests inject
	// read errors through it.
	Open func(path string) (io.ReadCloser, error)
}

func (d Devices) open(path string) (io.ReadCloser, error) {
	if d.Open != nil {
		return d.Open(path)
	}
	return os.Open(path)
}

// Find locates the initdata device, reads and checks the document. It
// returns ErrNotPresent only when no candidate device starts with the magic
// (empty and short devices, and devices without a medium, do not carry it);
// any I/O error, or more than one device with the magic, is an error.
func Find(ctx context.Context, d Devices, log *slog.Logger) (*Initdata, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if d.Path != "" {
		return readDevice(d, d.Path)
	}
	paths, err := d.candidates()
	if err != nil {
		return nil, err
	}
	var found []string
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("scanning for the initdata device: %w", err)
		}
		ok, err := d.hasMagic(p)
		if err != nil {
			return nil, err
		}
		log.Debug("initdata: checked device", "device", p, "magic", ok)
		if ok {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%d candidate devices in %s: %w", len(paths), d.dir(), ErrNotPresent)
	case 1:
		return readDevice(d, found[0])
	default:
		return nil, fmt.Errorf("%s: %w", strings.Join(found, ", "), ErrAmbiguous)
	}
}

func (d Devices) dir() string {
	if d.Dir == "" {
		return DefaultDevDir
	}
	return d.Dir
}

// candidates lists the block devices (or, with IncludeRegular, files) named
// vd* or sd*, in name order. Entries that vanish while listing are skipped.
func (d Devices) candidates() ([]string, error) {
	dir := d.dir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("listing %s: %w: %w", dir, ErrIO, err)
	}
	var out []string
	for _, e := range entries {
		name := e.Name()
		if !hasAnyPrefix(name, devicePrefixes) {
			continue
		}
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p) // follows symlinks, as kata does
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: stat: %w: %w", p, ErrIO, err)
		}
		m := fi.Mode()
		block := m&fs.ModeDevice != 0 && m&fs.ModeCharDevice == 0
		if block || (d.IncludeRegular && m.IsRegular()) {
			out = append(out, p)
		}
	}
	return out, nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// noMedium reports open errors that mean "nothing to read here" rather than
// a failing read: no medium in the drive, no such device behind the node.
func noMedium(err error) bool {
	return errors.Is(err, syscall.ENOMEDIUM) || errors.Is(err, syscall.ENXIO)
}

// hasMagic reports whether the device at p starts with Magic. A device
// shorter than the magic does not carry it.
func (d Devices) hasMagic(p string) (bool, error) {
	f, err := d.open(p)
	if err != nil {
		if noMedium(err) {
			return false, nil
		}
		return false, fmt.Errorf("%s: open: %w: %w", p, ErrIO, err)
	}
	defer f.Close()
	var magic [len(Magic)]byte
	if _, err := io.ReadFull(f, magic[:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return false, nil
		}
		return false, fmt.Errorf("%s: read magic: %w: %w", p, ErrIO, err)
	}
	return string(magic[:]) == Magic, nil
}

func readDevice(d Devices, p string) (*Initdata, error) {
	f, err := d.open(p)
	if err != nil {
		return nil, fmt.Errorf("%s: open: %w: %w", p, ErrIO, err)
	}
	defer f.Close()
	doc, err := Decode(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	id, err := Parse(doc)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	id.Device = p
	return id, nil
}

// Decode reads an initdata device image from r and returns the decompressed
// TOML document: the magic, the u64 little-endian length of the gzip data
// (1..MaxCompressedSize), exactly one gzip member of that length that
// decompresses to at most MaxTOMLSize bytes. Whatever follows the gzip data
// (the zero padding) is not read.
func Decode(r io.Reader) ([]byte, error) {
	var hdr [HeaderSize]byte
	n, err := io.ReadFull(r, hdr[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read header: %w: %w", ErrIO, err)
	}
	if m := min(n, len(Magic)); string(hdr[:m]) != Magic[:m] {
		return nil, fmt.Errorf("first %d bytes %q: %w", m, hdr[:m], ErrBadMagic)
	}
	if n < HeaderSize {
		return nil, fmt.Errorf("header: %d of %d bytes: %w", n, HeaderSize, ErrTruncated)
	}
	size := binary.LittleEndian.Uint64(hdr[len(Magic):])
	if size == 0 {
		return nil, fmt.Errorf("length field: 0: %w", ErrCompression)
	}
	if size > MaxCompressedSize {
		return nil, fmt.Errorf("length field: %d bytes, limit %d: %w", size, MaxCompressedSize, ErrTooLarge)
	}
	gz := make([]byte, size)
	if n, err := io.ReadFull(r, gz); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("gzip data: %d of %d bytes: %w", n, size, ErrTruncated)
		}
		return nil, fmt.Errorf("read gzip data: %w: %w", ErrIO, err)
	}
	return gunzip(gz)
}

// gunzip decompresses exactly one gzip member filling b, bounded by
// MaxTOMLSize.
func gunzip(b []byte) ([]byte, error) {
	br := bytes.NewReader(b)
	zr, err := gzip.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCompression, err)
	}
	zr.Multistream(false)
	out, err := io.ReadAll(io.LimitReader(zr, MaxTOMLSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCompression, err)
	}
	if len(out) > MaxTOMLSize {
		return nil, fmt.Errorf("decompressed document over %d bytes: %w", MaxTOMLSize, ErrTooLarge)
	}
	if err := zr.Close(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCompression, err)
	}
	if br.Len() != 0 {
		return nil, fmt.Errorf("%d bytes after the gzip stream: %w", br.Len(), ErrCompression)
	}
	return out, nil
}
