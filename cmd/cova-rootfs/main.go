// Command cova-rootfs builds Cova's guest image and prints the digests a
// verifier compares it against.
//
//	cova-rootfs build --agent bin/cova-agent --out initrd.img \
//	    [--kernel-modules DIR --modules a,b] [--add SRC:DST]... [--compress gzip|none]
//	cova-rootfs digest FILE...
//	cova-rootfs refvalues [--kernel K] [--initrd I] [--cmdline C] [--initdata F] \
//	    [--firmware seabios|ovmf [--memory 512M]] [--tpm-pcr N=HEX]... [--ovmf F --vcpus N --vcpu-type T --guest-features X] [--rvps-message]
//
// build is reproducible: the same inputs give the same bytes. Every entry is
// stamped with SOURCE_DATE_EPOCH (0 when unset). It prints the output's
// digests and, with modules, the agent.kernel_modules value that loads them
// in dependency order. digest prints BSD-style lines ("SHA256 (FILE) = HEX")
// that `sha256sum -c` and `sha384sum -c` check. refvalues prints the
// reference values a verifier expects for those artifacts as trustee's RVPS
// "sample" provenance (name -> list of hex values), or wrapped as an RVPS
// message; package rootfs/refvalues documents the names and how each value
// is derived.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/rootfs"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(os.Stderr, "cova-rootfs: %v\n", err)
		}
		os.Exit(2)
	}
}

const usage = `usage:
  cova-rootfs build --agent FILE --out FILE [--kernel-modules DIR --modules a,b] [--kernel-release REL]
                    [--add SRC:DST]... [--compress gzip|none]
  cova-rootfs digest FILE...
  cova-rootfs verity --image FILE [--hash FILE] [--salt HEX|-] [--uuid UUID]
  cova-rootfs refvalues [--kernel K] [--initrd I] [--cmdline C] [--initdata F]
                    [--firmware seabios|ovmf [--memory 512M]] [--tpm-pcr N=HEX]... [--ovmf F [--vcpus N] [--vcpu-type T] [--guest-features X]] [--rvps-message]`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return errors.New("missing command")
	}
	switch args[0] {
	case "build":
		return cmdBuild(ctx, args[1:], stdout, stderr)
	case "digest":
		return cmdDigest(args[1:], stdout, stderr)
	case "refvalues":
		return cmdRefvalues(args[1:], stdout, stderr)
	case "verity":
		return cmdVerity(args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	fmt.Fprintln(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

func cmdBuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		o        rootfs.Options
		out      string
		modules  string
		compress string
		adds     multiFlag
	)
	fs.StringVar(&o.Agent, "agent", "", "static agent binary, installed as /init (required)")
	fs.StringVar(&out, "out", "", "output file (required)")
	fs.StringVar(&o.KernelDir, "kernel-modules", "", "extracted kernel tree (holding lib/modules/REL) or a lib/modules/REL directory")
	fs.StringVar(&o.KernelRelease, "kernel-release", "", "kernel release in --kernel-modules (default: the only one)")
	fs.StringVar(&modules, "modules", "", "comma-separated module names to include with their dependencies")
	fs.StringVar(&compress, "compress", "gzip", "gzip or none")
	fs.Var(&adds, "add", "SRC:DST: add a host file or directory at DST (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("build: unexpected arguments %q", fs.Args())
	}
	if o.Agent == "" || out == "" {
		return errors.New("build: --agent and --out are required")
	}
	var err error
	if o.Compression, err = rootfs.ParseCompression(compress); err != nil {
		return fmt.Errorf("build: --compress: %w", err)
	}
	for _, m := range strings.Split(modules, ",") {
		if m = strings.TrimSpace(m); m != "" {
			o.Modules = append(o.Modules, m)
		}
	}
	for _, a := range adds {
		fm, err := rootfs.ParseFileMapping(a)
		if err != nil {
			return fmt.Errorf("build: --add: %w", err)
		}
		o.Files = append(o.Files, fm)
	}
	if o.MTime, err = rootfs.ParseSourceDateEpoch(os.Getenv("SOURCE_DATE_EPOCH")); err != nil {
		return fmt.Errorf("build: %w", err)
	}

	res, err := writeAtomic(out, func(w io.Writer) (rootfs.Result, error) { return rootfs.Build(ctx, w, o) })
	if err != nil {
		return fmt.Errorf("build: %w", err)
	}
	d, err := rootfs.DigestFile(out)
	if err != nil {
		return fmt.Errorf("build: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s: %d entries, %d bytes (%s)\n", out, res.Entries, res.Size, o.Compression)
	printDigests(stdout, out, d)
	if len(res.Modules) > 0 {
		fmt.Fprintf(stdout, "kernel release: %s\nagent.kernel_modules=%s\n", res.Release, strings.Join(res.Modules, ","))
	}
	if len(res.Builtin) > 0 {
		fmt.Fprintf(stdout, "built into the kernel (not included): %s\n", strings.Join(res.Builtin, ","))
	}
	return nil
}

// writeAtomic writes to a temporary file beside out and renames it into
// place only when fn succeeded, so a failed build never leaves a partial
// image (nor truncates an existing one).
func writeAtomic(out string, fn func(io.Writer) (rootfs.Result, error)) (rootfs.Result, error) {
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp*")
	if err != nil {
		return rootfs.Result{}, err
	}
	tmp := f.Name()
	defer func() {
		if tmp != "" {
			_ = os.Remove(tmp)
		}
	}()
	res, err := fn(f)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return res, err
	}
	if err := os.Rename(tmp, out); err != nil {
		return res, err
	}
	tmp = ""
	return res, nil
}

func cmdDigest(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, usage)
		return errors.New("digest: no files")
	}
	for _, p := range args {
		d, err := rootfs.DigestFile(p)
		if err != nil {
			return err
		}
		printDigests(stdout, p, d)
	}
	return nil
}

func printDigests(w io.Writer, name string, d rootfs.Digests) {
	fmt.Fprintf(w, "SHA256 (%s) = %s\nSHA384 (%s) = %s\n", name, d.SHA256, name, d.SHA384)
}
