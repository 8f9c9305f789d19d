package vm

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseListening(t *testing.T) {
	tests := []struct {
		name string
		line string
		want float64
		ok   bool
	}{
		{"agent line", `{"time":"x","level":"INFO","msg":"agent listening","vm":true,"startup_ms":190.437}` + "\r\n", 190.437, true},
		{"kernel prefix", `[    2.1] {"msg":"agent listening","startup_ms":12}`, 12, true},
		{"other message", `{"msg":"listen failed","startup_ms":1}`, 0, false},
		{"no startup_ms", `{"msg":"agent listening"}`, 0, false},
		{"not json", `agent listening at 3 ms`, 0, false},
		{"truncated", `{"msg":"agent listening","startup_ms":1`, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseListening(tc.line)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("parseListening = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestArgs(t *testing.T) {
	c := Config{Kernel: "K", Initrd: "I", Append: "agent.log=debug", Dir: "/d",
		Disks: []Disk{{Path: "/r.img", ReadOnly: true, Slot: 3}, {Path: "/w.img", Slot: 0x1f}}}
	args := c.Args()
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"-machine q35,accel=tcg", "-no-reboot", "-nodefaults", "-kernel K", "-initrd I",
		"socket,id=ch0,path=/d/agent.sock,server=on,wait=off",
		"virtserialport,bus=vser0.0,chardev=ch0,name=agent.0",
		"pcie-root-port,id=rp0,bus=pcie.0,chassis=1,addr=0x3",
		"file=/r.img,if=none,id=disk0,format=raw,readonly=on",
		"virtio-blk-pci,drive=disk0,bus=rp0,addr=0x0",
		"pcie-root-port,id=rp1,bus=pcie.0,chassis=2,addr=0x1f",
		"file=/w.img,if=none,id=disk1,format=raw -device",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	i := slices.Index(args, "-append")
	if i < 0 || args[i+1] != BaseCmdline+" agent.log=debug" {
		t.Errorf("-append %q", args[i+1])
	}
	if strings.Contains(joined, "kvm") {
		t.Error("args mention kvm: the tests must run under TCG")
	}
	for d, want := range map[Disk]string{{Slot: 3}: "03/00", {Slot: 0x1f}: "1f/00"} {
		if got := d.PCIPath(); got != want {
			t.Errorf("slot %d: PCI path %q, want %q", d.Slot, got, want)
		}
	}
}

// TestWaitKillsOnTimeout checks the harness's safety net: a VM that does not
// exit by itself is killed when Wait's context ends.
func TestWaitKillsOnTimeout(t *testing.T) {
	e := needEnv(t)
	v := boot(t, e)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := v.Wait(ctx)
	if err == nil || !strings.Contains(err.Error(), "did not exit by itself") {
		t.Fatalf("Wait = %v, want a timeout", err)
	}
	select {
	case <-v.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("QEMU still runs after Wait timed out")
	}
}
