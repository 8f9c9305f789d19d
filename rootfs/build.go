package rootfs

import (
	"compress/gzip"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// Compression is how the cpio archive is compressed.
type Compression string

// The compressions Build writes. The kernel unpacks both.
const (
	CompressGzip Compression = "gzip"
	CompressNone Compression = "none"
)

// ParseCompression parses a Compression name ("" means gzip).
func ParseCompression(s string) (Compression, error) {
	switch Compression(s) {
	case "", CompressGzip:
		return CompressGzip, nil
	case CompressNone:
		return CompressNone, nil
	}
	return "", fmt.Errorf("compression %q: want gzip or none: %w", s, errdefs.ErrInvalidArgument)
}

// FileMapping copies the host file or directory Src to Dst in the image.
type FileMapping struct {
	Src, Dst string
}

// ParseFileMapping parses "SRC:DST" (the first ':' separates them).
func ParseFileMapping(s string) (FileMapping, error) {
	src, dst, ok := strings.Cut(s, ":")
	if !ok || src == "" || dst == "" {
		return FileMapping{}, fmt.Errorf("file mapping %q: want SRC:DST: %w", s, errdefs.ErrInvalidArgument)
	}
	return FileMapping{Src: src, Dst: dst}, nil
}

// ParseSourceDateEpoch parses SOURCE_DATE_EPOCH ("" means 0).
func ParseSourceDateEpoch(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || v > maxMTime {
		return 0, fmt.Errorf("SOURCE_DATE_EPOCH %q: want an integer in 0..%d: %w", s, int64(maxMTime), errdefs.ErrInvalidArgument)
	}
	return v, nil
}

// Options are the inputs of an initrd.
type Options struct {
	// Agent is the static agent binary; it becomes /init.
	Agent string
	// KernelDir holds the kernel's modules (see OpenKernelModules); needed
	// only when Modules is not empty.
	KernelDir string
	// KernelRelease picks the release in KernelDir; empty when it holds one.
	KernelRelease string
	// Modules are module names to include with their dependencies.
	Modules []string
	// Files are extra files and directories.
	Files []FileMapping
	// MTime stamps every entry (SOURCE_DATE_EPOCH; 0 by default).
	MTime int64
	// Compression defaults to gzip.
	Compression Compression
}

// Result describes a built initrd.
type Result struct {
	// Entries is the number of archive entries (without the trailer).
	Entries int
	// Size is the number of bytes written.
	Size int64
	// Release is the kernel release of the modules, if any.
	Release string
	// Modules are the included modules in load order: the value for
	// agent.kernel_modules.
	Modules []string
	// Builtin are requested names that the kernel has built in.
	Builtin []string
}

// baseDirs are the directories PID 1 needs before it mounts anything.
var baseDirs = []struct {
	path string
	perm fs.FileMode
}{
	{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755},
	{"tmp", 0o777 | fs.ModeSticky}, {"etc", 0o755}, {"lib/modules", 0o755},
}

// NewBaseImage returns an image with the agent at /init, the base
// directories and the /dev/console and /dev/null nodes (the kernel opens
// /dev/console for init before anything mounts devtmpfs).
func NewBaseImage(agentPath string) (*Image, error) {
	if err := checkStatic(agentPath); err != nil {
		return nil, err
	}
	im := NewImage()
	for _, d := range baseDirs {
		if err := im.AddDir(d.path, d.perm); err != nil {
			return nil, err
		}
	}
	if err := im.AddCharDevice("dev/console", 0o600, 5, 1); err != nil {
		return nil, err
	}
	if err := im.AddCharDevice("dev/null", 0o666, 1, 3); err != nil {
		return nil, err
	}
	if err := im.AddFile("init", agentPath, 0o755); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return im, nil
}

// checkStatic refuses an agent that is not a static ELF executable: in an
// initrd without a dynamic loader it could not start.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("agent %s: not an ELF executable: %w (%w)", p, err, errdefs.ErrInvalidArgument)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("agent %s: dynamically linked (has an ELF interpreter); build it static (make build): %w", p, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// Assemble builds the image of o without writing it.
func Assemble(o Options) (*Image, Result, error) {
	var res Result
	if o.Agent == "" {
		return nil, res, fmt.Errorf("agent: path is empty: %w", errdefs.ErrInvalidArgument)
	}
	im, err := NewBaseImage(o.Agent)
	if err != nil {
		return nil, res, err
	}
	if len(o.Modules) > 0 {
		if o.KernelDir == "" {
			return nil, res, fmt.Errorf("kernel modules %v: no kernel directory given: %w", o.Modules, errdefs.ErrInvalidArgument)
		}
		km, err := OpenKernelModules(o.KernelDir, o.KernelRelease)
		if err != nil {
			return nil, res, err
		}
		mods, builtin, err := km.Resolve(o.Modules)
		if err != nil {
			return nil, res, err
		}
		if err := km.AddModules(im, mods); err != nil {
			return nil, res, err
		}
		res.Release = km.Release
		res.Builtin = builtin
		for _, m := range mods {
			res.Modules = append(res.Modules, m.Name)
		}
	}
	for i, f := range o.Files {
		if err := addMapping(im, f); err != nil {
			return nil, res, fmt.Errorf("files[%d] %s:%s: %w", i, f.Src, f.Dst, err)
		}
	}
	res.Entries = im.Len()
	return im, res, nil
}

func addMapping(im *Image, f FileMapping) error {
	fi, err := os.Stat(f.Src)
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if fi.IsDir() {
		return im.AddTree(f.Dst, f.Src)
	}
	return im.AddFile(f.Dst, f.Src, 0)
}

// Build writes the initrd of o to w.
func Build(ctx context.Context, w io.Writer, o Options) (Result, error) {
	comp := o.Compression
	if comp == "" {
		comp = CompressGzip
	}
	if _, err := ParseCompression(string(comp)); err != nil {
		return Result{}, err
	}
	im, res, err := Assemble(o)
	if err != nil {
		return res, err
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	cw := &countWriter{w: w}
	if comp == CompressNone {
		if err := im.WriteCPIO(cw, o.MTime); err != nil {
			return res, err
		}
		res.Size = cw.n
		return res, nil
	}
	// No name, no mtime, fixed OS byte: the header is the same every time.
	zw, err := gzip.NewWriterLevel(cw, gzip.BestCompression)
	if err != nil {
		return res, err
	}
	if err := im.WriteCPIO(zw, o.MTime); err != nil {
		return res, err
	}
	if err := zw.Close(); err != nil {
		return res, fmt.Errorf("compressing: %w", err)
	}
	res.Size = cw.n
	return res, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}
