package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cova-project/cova/rootfs/refvalues"
)

const testInitdata = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = '''\npackage agent_policy\n'''\n"

func refvaluesFiles(t *testing.T) (kernel, initrd, initdata string) {
	t.Helper()
	dir := t.TempDir()
	kernel, initrd, initdata = filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img"), filepath.Join(dir, "initdata.toml")
	for p, b := range map[string]string{kernel: "kernel", initrd: "initrd", initdata: testInitdata} {
		if err := os.WriteFile(p, []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, initrd, initdata
}

func runRefvalues(t *testing.T, args ...string) (map[string][]string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), append([]string{"refvalues"}, args...), &stdout, &stderr)
	if err != nil {
		return nil, stdout.String(), err
	}
	var m map[string][]string
	if strings.Contains(strings.Join(args, " "), "--rvps-message") {
		return nil, stdout.String(), nil
	}
	if err := json.Unmarshal(stdout.Bytes(), &m); err != nil {
		t.Fatalf("output is not a sample provenance: %v\n%s", err, stdout.String())
	}
	return m, stdout.String(), nil
}

func TestRefvaluesCommand(t *testing.T) {
	kernel, initrd, initdata := refvaluesFiles(t)
	const cmdline = "console=ttyS0 panic=-1"
	got, _, err := runRefvalues(t, "--kernel", kernel, "--initrd", initrd, "--cmdline", cmdline, "--initdata", initdata, "--firmware", "seabios")
	if err != nil {
		t.Fatal(err)
	}
	want, err := refvalues.Compute(refvalues.Inputs{Kernel: kernel, Initrd: initrd, Cmdline: cmdline, HasCmdline: true, Initdata: []byte(testInitdata), Firmware: refvalues.FirmwareSeaBIOS})
	if err != nil {
		t.Fatal(err)
	}
	ws := want.Sample()
	if len(got) != len(ws) {
		t.Fatalf("printed %d names, want %d: %v", len(got), len(ws), got)
	}
	for k, v := range ws {
		if len(got[k]) != 1 || got[k][0] != v[0] {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	for _, name := range []string{"kernel_sha384", "initrd_sha256", "cmdline_sha256", "tpm_pcr08", "snp_init_data", "tdx_init_data", "tpm_pcr00"} {
		if _, ok := got[name]; !ok {
			t.Errorf("no %s", name)
		}
	}

	// One changed initrd byte changes its values.
	if err := os.WriteFile(initrd, []byte("initrD"), 0o644); err != nil {
		t.Fatal(err)
	}
	changed, _, err := runRefvalues(t, "--kernel", kernel, "--initrd", initrd)
	if err != nil {
		t.Fatal(err)
	}
	if changed["initrd_sha256"][0] == got["initrd_sha256"][0] || changed["initrd_sha384"][0] == got["initrd_sha384"][0] {
		t.Error("a changed initrd byte left its digests unchanged")
	}
	if changed["kernel_sha256"][0] != got["kernel_sha256"][0] {
		t.Error("the kernel digest changed with the initrd")
	}
}

func TestRefvaluesRVPSMessage(t *testing.T) {
	_, _, initdata := refvaluesFiles(t)
	_, out, err := runRefvalues(t, "--initdata", initdata, "--rvps-message")
	if err != nil {
		t.Fatal(err)
	}
	var msg struct {
		Version, Type, Payload string
	}
	if err := json.Unmarshal([]byte(out), &msg); err != nil || msg.Version != "0.1.0" || msg.Type != "sample" {
		t.Fatalf("not an RVPS message: %v\n%s", err, out)
	}
	p, err := base64.StdEncoding.DecodeString(msg.Payload)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string][]string
	if err := json.Unmarshal(p, &m); err != nil || len(m["tpm_init_data"]) != 1 {
		t.Fatalf("payload %s: %v", p, err)
	}
}

func TestRefvaluesCommandErrors(t *testing.T) {
	kernel, _, _ := refvaluesFiles(t)
	bad := filepath.Join(t.TempDir(), "bad.toml")
	if err := os.WriteFile(bad, []byte("version = \"9\"\nalgorithm = \"sha256\"\n[data]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"nothing", nil, "nothing to compute"},
		{"extra argument", []string{"--kernel", kernel, "x"}, "unexpected arguments"},
		{"bad pcr", []string{"--tpm-pcr", "1=zz"}, "64 hex digits"},
		{"pcr index", []string{"--tpm-pcr", "24=" + strings.Repeat("00", 32)}, "0..23"},
		{"duplicate pcr", []string{"--tpm-pcr", "1=" + strings.Repeat("00", 32), "--tpm-pcr", "1=" + strings.Repeat("00", 32)}, "twice"},
		{"missing initdata", []string{"--initdata", "/nonexistent"}, "--initdata"},
		{"bad initdata", []string{"--initdata", bad}, "version"},
		{"bad features", []string{"--kernel", kernel, "--initrd", kernel, "--ovmf", "x", "--guest-features", "zz"}, "--guest-features"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runRefvalues(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParseMemory(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"512M", 512 << 20, true},
		{"512", 512 << 20, true},
		{"2G", 2 << 30, true},
		{"2g", 2 << 30, true},
		{"524288K", 512 << 20, true},
		{"1T", 1 << 40, true},
		{"", 0, false},
		{"0", 0, false},
		{"M", 0, false},
		{"-1G", 0, false},
		{"1.5G", 0, false},
		{"99999999999999T", 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseMemory(tc.in)
			if (err == nil) != tc.ok || got != tc.want {
				t.Fatalf("parseMemory(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
			}
		})
	}
}

// miniKernel is a tiny bzImage-shaped PE image (rootfs/refvalues testdata).
var miniKernel = filepath.Join("..", "..", "rootfs", "refvalues", "testdata", "mini-bzimage.signed.efi")

func TestRefvaluesOVMF(t *testing.T) {
	_, initrd, initdata := refvaluesFiles(t)
	const cmdline = "console=ttyS0"
	pcr0 := strings.Repeat("a0", 32)
	got, _, err := runRefvalues(t, "--kernel", miniKernel, "--initrd", initrd, "--cmdline", cmdline, "--initdata", initdata,
		"--firmware", "ovmf", "--memory", "1G", "--tpm-pcr", "0="+pcr0, "--tpm-pcr", "1="+strings.Repeat("a1", 32))
	if err != nil {
		t.Fatal(err)
	}
	want, err := refvalues.Compute(refvalues.Inputs{Kernel: miniKernel, Initrd: initrd, Cmdline: cmdline, HasCmdline: true,
		Initdata: []byte(testInitdata), Firmware: refvalues.FirmwareOVMF, Memory: 1 << 30,
		TPMPCRs: map[int][]byte{0: bytes.Repeat([]byte{0xa0}, 32), 1: bytes.Repeat([]byte{0xa1}, 32)}})
	if err != nil {
		t.Fatal(err)
	}
	ws := want.Sample()
	for i := 0; i <= 10; i++ {
		name := refvalues.TPMPCRName(i)
		if g, w := got[name], ws[name]; len(g) != 1 || len(w) != 1 || g[0] != w[0] {
			t.Errorf("%s = %v, want %v", name, g, w)
		}
	}
	// The default memory is the test harness's 512M: another PCR 4.
	def, _, err := runRefvalues(t, "--kernel", miniKernel, "--initrd", initrd, "--cmdline", cmdline, "--firmware", "ovmf")
	if err != nil {
		t.Fatal(err)
	}
	if def[refvalues.TPMPCRName(4)][0] == got[refvalues.TPMPCRName(4)][0] || def[refvalues.TPMPCRName(9)][0] != got[refvalues.TPMPCRName(9)][0] {
		t.Errorf("--memory 1G vs 512M: PCR 4 %v / %v, PCR 9 %v / %v", got[refvalues.TPMPCRName(4)], def[refvalues.TPMPCRName(4)],
			got[refvalues.TPMPCRName(9)], def[refvalues.TPMPCRName(9)])
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad memory", []string{"--kernel", miniKernel, "--initrd", initrd, "--cmdline", cmdline, "--firmware", "ovmf", "--memory", "lots"}, "--memory"},
		{"no cmdline", []string{"--kernel", miniKernel, "--initrd", initrd, "--firmware", "ovmf"}, "cmdline"},
		{"not a bzImage", []string{"--kernel", initrd, "--initrd", initrd, "--cmdline", cmdline, "--firmware", "ovmf"}, "HdrS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := runRefvalues(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}
