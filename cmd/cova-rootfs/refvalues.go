package main

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/cova-project/cova/rootfs/refvalues"
)

// pcrFlag is a repeatable N=HEX flag.
type pcrFlag map[int][]byte

func (p pcrFlag) String() string { return fmt.Sprint(map[int][]byte(p)) }

func (p pcrFlag) Set(s string) error {
	n, h, ok := strings.Cut(s, "=")
	if !ok {
		return errors.New("want N=HEX")
	}
	i, err := strconv.Atoi(n)
	if err != nil || i < 0 || i > 23 {
		return fmt.Errorf("PCR index %q: want 0..23", n)
	}
	b, err := hex.DecodeString(strings.TrimPrefix(h, "0x"))
	if err != nil || len(b) != 32 {
		return fmt.Errorf("PCR %d value: want 64 hex digits (SHA-256)", i)
	}
	if _, dup := p[i]; dup {
		return fmt.Errorf("PCR %d given twice", i)
	}
	p[i] = b
	return nil
}

// maxInitdata bounds the initdata file read (the guest's own limit).
const maxInitdata = 8 << 20

func cmdRefvalues(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("refvalues", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		in       refvalues.Inputs
		initdata string
		message  bool
		snp      refvalues.SNPInputs
		features string
		pcrs     = pcrFlag{}
		memory   string
	)
	fs.StringVar(&in.Kernel, "kernel", "", "kernel image (bzImage) as booted")
	fs.StringVar(&in.Initrd, "initrd", "", "initrd as booted")
	fs.StringVar(&in.Cmdline, "cmdline", "", "the whole kernel command line as passed (QEMU -append)")
	fs.StringVar(&initdata, "initdata", "", "initdata TOML document, exactly as delivered to the guest")
	fs.StringVar(&in.Firmware, "firmware", "", "seabios: add the vTPM PCRs a SeaBIOS direct boot determines (0, 3, 5, 6, 7; 10 with --tpm-pcr 1, 2 and 4);\n"+
		"ovmf: those an OVMF direct boot determines (2-7 and 9: 4 binds --kernel, 9 --cmdline and --initrd; 10 with --tpm-pcr 0 and 1)")
	fs.StringVar(&memory, "memory", "512M", "--firmware ovmf: guest RAM as QEMU -m takes it (the kernel image OVMF measures depends on it)")
	fs.Var(pcrs, "tpm-pcr", "N=HEX: a vTPM PCR value known from a reference boot of the same machine (repeatable)")
	fs.StringVar(&snp.OVMF, "ovmf", "", "OVMF image (edk2 AmdSevX64 build): add snp_launch_measurement of the direct boot")
	fs.IntVar(&snp.VCPUs, "vcpus", 1, "SEV-SNP: number of vCPUs")
	fs.StringVar(&snp.VCPUType, "vcpu-type", "EPYC-v4", "SEV-SNP: QEMU CPU model")
	fs.StringVar(&features, "guest-features", "0x21", "SEV-SNP: SEV_FEATURES of the VMSA")
	fs.BoolVar(&message, "rvps-message", false, "print an RVPS message (type sample, base64 payload) instead of the bare provenance")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("refvalues: unexpected arguments %q", fs.Args())
	}
	fs.Visit(func(f *flag.Flag) { in.HasCmdline = in.HasCmdline || f.Name == "cmdline" })
	if in.Kernel == "" && in.Initrd == "" && !in.HasCmdline && initdata == "" && in.Firmware == "" && len(pcrs) == 0 {
		return errors.New("refvalues: nothing to compute: give --kernel, --initrd, --cmdline, --initdata, --firmware or --tpm-pcr")
	}
	if len(pcrs) > 0 {
		in.TPMPCRs = pcrs
	}
	if in.Firmware == refvalues.FirmwareOVMF {
		m, err := parseMemory(memory)
		if err != nil {
			return fmt.Errorf("refvalues: --memory %q: %w", memory, err)
		}
		in.Memory = m
	}
	if initdata != "" {
		b, err := refvalues.ReadFileLimited(initdata, maxInitdata)
		if err != nil {
			return fmt.Errorf("refvalues: --initdata: %w", err)
		}
		in.Initdata = b
	}
	if snp.OVMF != "" {
		f, err := strconv.ParseUint(features, 0, 64)
		if err != nil {
			return fmt.Errorf("refvalues: --guest-features %q: not a number", features)
		}
		snp.GuestFeatures = f
		in.SNP = &snp
	}
	v, err := refvalues.Compute(in)
	if err != nil {
		return fmt.Errorf("refvalues: %w", err)
	}
	var out []byte
	if message {
		out, err = v.RVPSMessage()
	} else {
		out, err = v.SampleJSON()
	}
	if err != nil {
		return fmt.Errorf("refvalues: %w", err)
	}
	_, err = fmt.Fprintf(stdout, "%s\n", out)
	return err
}

// parseMemory parses a size as QEMU's -m does: a number of MiB, or a
// number with a K, M, G or T suffix (binary units).
func parseMemory(s string) (uint64, error) {
	shift := 20
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'K', 'k':
			shift, s = 10, s[:n-1]
		case 'M', 'm':
			shift, s = 20, s[:n-1]
		case 'G', 'g':
			shift, s = 30, s[:n-1]
		case 'T', 't':
			shift, s = 40, s[:n-1]
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v == 0 || v > 1<<(64-shift)-1 {
		return 0, errors.New("want a size such as 512M or 2G")
	}
	return v << shift, nil
}
