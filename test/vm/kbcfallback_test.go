package vm

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/protocols/types"
	"github.com/cova-project/cova/test/kbs"
)

// guestNetwork gives the guest QEMU user networking's address and default
// route through the agent, as the Kata shim does (Config.Net): the host's
// loopback services are then at 10.0.2.2.
func guestNetwork(ctx context.Context, t *testing.T, a *Agent) {
	t.Helper()
	if _, err := a.UpdateInterface(ctx, &pb.UpdateInterfaceRequest{Interface: &types.Interface{
		HwAddr: GuestMAC, Name: "eth0", Mtu: 1500,
		IPAddresses: []*types.IPAddress{{Family: types.IPFamily_v4, Address: "10.0.2.15", Mask: "24"}},
	}}); err != nil {
		t.Fatalf("UpdateInterface: %v", err)
	}
	if _, err := a.UpdateRoutes(ctx, &pb.UpdateRoutesRequest{Routes: &pb.Routes{Routes: []*types.Route{
		{Dest: "0.0.0.0/0", Gateway: "10.0.2.2", Device: "eth0", Family: types.IPFamily_v4},
	}}}); err != nil {
		t.Fatalf("UpdateRoutes: %v", err)
	}
}

// TestKBCParamsFallback: a guest booted without initdata takes its KBS from
// the kernel command line (agent.aa_kbc_params=cc_kbc::<url>, as
// guest-components does): a container reads a resource through the CDH
// REST API after the guest attested (sample evidence) to the dev KBS. With
// an initdata document present the same command line is ignored (the
// measured document is the whole configuration): nothing reaches the KBS.
func TestKBCParamsFallback(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	const resource, marker = "default/fallback/key", "COVA-KBS-FROM-CMDLINE-61a9"
	for _, withInitdata := range []bool{false, true} {
		t.Run(fmt.Sprintf("initdata=%v", withInitdata), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
			defer cancel()
			k := kbs.StartTB(t, kbs.Options{PlainHTTP: true, Resources: map[string][]byte{resource: []byte(marker)}})
			url := "http://10.0.2.2:" + k.URL()[strings.LastIndexByte(k.URL(), ':')+1:]
			var disks []Disk
			if withInitdata {
				doc := "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"cdh.toml\" = '''\n[image]\n'''\n"
				disks = append(disks, Disk{Path: initdataDisk(t, []byte(doc), false), ReadOnly: true, Slot: 3})
			}
			v := bootConfig(t, Config{Kernel: e.kernel.Image, Initrd: e.initrd, Append: e.cmdline() + " agent.aa_kbc_params=cc_kbc::" + url,
				Dir: vmDir(t), Disks: disks, Net: true})
			a, tm := connect(ctx, t, v)
			t.Logf("boot: %v", tm)
			guestNetwork(ctx, t, a)
			sid := "fallback"
			if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova"}); err != nil {
				t.Fatalf("CreateSandbox: %v", err)
			}
			host := t.TempDir()
			makeBusybox(t, e.busybox, host, nil)
			root := filepath.Join(sharedKataDir, sid, "rootfs")
			if _, _, err := a.CopyDir(ctx, host, root); err != nil {
				t.Fatal(err)
			}
			// nc, with stdin held open while the guest attests (Go's HTTP
			// server cancels a request whose client half-closes; see
			// TestDemo); the shell prints the answer once it is complete.
			out, errOut, _ := runContainer(ctx, t, a, sid, containerSpec(root, "sh", "-c",
				`{ printf 'GET /cdh/resource/`+resource+` HTTP/1.0\r\n\r\n'; sleep 30; } | nc 127.0.0.1 8006 >/dev/shm/answer &
i=0; while [ $i -lt 300 ] && ! grep -q -e '`+marker+`' -e 'get resource' /dev/shm/answer; do sleep 0.1; i=$((i+1)); done; cat /dev/shm/answer`), nil)
			st := k.Stats()
			t.Logf("REST answer:\n%s%s\nKBS: %+v", out, errOut, st)
			if withInitdata {
				if strings.Contains(out, marker) || st.Attest != 0 {
					t.Errorf("the command-line KBS was used although initdata is present: attest %d, answer %q", st.Attest, out)
				}
				if !consoleHas(v, "kernel command line KBS settings ignored: initdata configures this guest") {
					t.Error("no warning that the command line was ignored")
				}
			} else {
				if !strings.HasPrefix(out, "HTTP/1.0 200") || !strings.HasSuffix(out, marker) || st.Attest == 0 {
					t.Errorf("resource through the command-line KBS: answer %q, attest %d", out, st.Attest)
				}
				if !consoleHas(v, "KBS taken from the kernel command line") {
					t.Error("no warning that the KBS came from the command line")
				}
			}
			t.Logf("poweroff: %v", powerOff(ctx, t, a, v))
		})
	}
}
