package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/agent/ocispec"
	"github.com/cova-project/cova/cdh/sealed/sealedtest"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/rootfs/refvalues"
	"github.com/cova-project/cova/test/kbs"
)

// Measured boots run with this much RAM: QEMU writes the initrd's address,
// which depends on it, into the kernel image OVMF measures (PCR 4).
const (
	measuredMemory      = "512M"
	measuredMemoryBytes = 512 << 20
)

// measuredPCRs are the PCRs the dev KBS's resource policy checks against
// `cova-rootfs refvalues --firmware ovmf`: the kernel (4), the initdata
// binding (8), the command line and the initrd (9).
var measuredPCRs = []int{4, 8, 9}

// The sealed secret's KBS resources.
const (
	measuredKeyKid   = "kbs:///default/sealed-secret-key/1"
	measuredSecretID = "kbs:///default/secret/measured"
)

// TestMeasuredBootKBS is the measured image end to end: OVMF and a swtpm
// vTPM boot the kernel and initrd directly; OVMF measures the kernel into
// PCR 4, the kernel's EFI stub the command line and the initrd into PCR 9,
// the agent the initdata into PCR 8. The dev KBS's resource policy
// compares the TPM verifier's PCR claims with what package refvalues
// predicts for the reference image (what `cova-rootfs refvalues --firmware
// ovmf` prints). A container's env holds a sealed secret that the agent
// unseals through the KBS after attesting.
//
//   - The reference image: the container prints the secret, and every PCR
//     refvalues predicts (2-10, given the firmware's 0 and 1) is what the
//     KBS saw.
//   - The same image with one initrd byte changed (the gzip header's OS
//     byte: the content and the boot are the same, the measured bytes are
//     not): refvalues predict another PCR 9, the guest measures exactly
//     that, attestation itself succeeds, and the policy refuses the secret,
//     so CreateContainer fails naming the KBS and the policy.
func TestMeasuredBootKBS(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	for _, p := range []string{DebianOVMFCode, DebianOVMFVars} {
		if _, err := os.Stat(p); err != nil {
			unavailable(t, "OVMF is not installed (apt-get install ovmf): %v", err)
		}
	}
	tampered := tamperGzipOS(t, e.initrd)
	cmdline := strings.TrimSpace(BaseCmdline + " " + e.cmdline())

	good := measuredRefvalues(t, e, e.initrd, cmdline, nil, nil)
	bad := measuredRefvalues(t, e, tampered, cmdline, nil, nil)
	if good["initrd_sha256"][0] == bad["initrd_sha256"][0] || good[refvalues.TPMPCRName(9)][0] == bad[refvalues.TPMPCRName(9)][0] {
		t.Fatalf("a changed initrd byte does not change the reference values:\n%v\n%v", good, bad)
	}
	if good[refvalues.TPMPCRName(4)][0] != bad[refvalues.TPMPCRName(4)][0] {
		t.Errorf("PCR 4 differs for initrds of the same size: %v, %v", good[refvalues.TPMPCRName(4)], bad[refvalues.TPMPCRName(4)])
	}
	t.Logf("reference PCR 4 %s, PCR 9 %s; one initrd byte changed: PCR 9 %s",
		good[refvalues.TPMPCRName(4)][0], good[refvalues.TPMPCRName(9)][0], bad[refvalues.TPMPCRName(9)][0])

	t.Run("reference image", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
		defer cancel()
		start := time.Now()
		m := bootMeasured(ctx, t, e, e.initrd, cmdline)
		out, errOut, status := runContainer(ctx, t, m.a, m.sid, m.spec, nil)
		if out != "secret="+m.secret+"\n" || status != 0 {
			t.Fatalf("container: stdout %q stderr %q status %d; want the unsealed secret", out, errOut, status)
		}
		t.Logf("sealed secret released and unsealed: create..remove %v after boot", time.Since(start)-m.booted)
		claims := m.seen()
		if claims == nil {
			t.Fatal("the KBS policy saw no tpm claims")
		}
		// Cross-check: every PCR refvalues predicts, including IMA's PCR 10
		// once the firmware's PCRs 0 and 1 are given, is what the guest's
		// vTPM quoted.
		given := map[int][]byte{}
		for _, i := range []int{0, 1} {
			b, err := hex.DecodeString(claimPCR(claims, i))
			if err != nil {
				t.Fatalf("claim pcr%02d: %v", i, err)
			}
			given[i] = b
		}
		full := measuredRefvalues(t, e, e.initrd, cmdline, m.initdata, given)
		for i := 2; i <= 10; i++ {
			name := refvalues.TPMPCRName(i)
			want, ok := full[name]
			if !ok {
				t.Errorf("refvalues predict no %s", name)
				continue
			}
			if got := claimPCR(claims, i); len(want) != 1 || got != want[0] {
				t.Errorf("PCR %d = %s; refvalues %s = %v", i, got, name, want)
			}
		}
		for i := 0; i < 24; i++ {
			t.Logf("PCR %2d = %s", i, claimPCR(claims, i))
		}
		t.Logf("poweroff: QEMU exited %v after DestroySandbox", powerOff(ctx, t, m.a, m.v).Round(time.Millisecond))
	})

	t.Run("one initrd byte changed", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
		defer cancel()
		m := bootMeasured(ctx, t, e, tampered, cmdline)
		w, err := ocispec.FromSpec(m.spec)
		if err != nil {
			t.Fatal(err)
		}
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		defer ccancel()
		start := time.Now()
		_, err = m.a.CreateContainer(cctx, &pb.CreateContainerRequest{ContainerId: m.sid, ExecId: m.sid, OCI: w})
		took := time.Since(start)
		if err == nil {
			t.Fatal("CreateContainer succeeded: the KBS released the secret to a changed image")
		}
		if msg := err.Error(); !strings.Contains(msg, "kbs https://10.0.2.2:") || !strings.Contains(msg, "PolicyDeny") ||
			!strings.Contains(msg, "PCR 9") || strings.Contains(msg, m.secret) {
			t.Fatalf("CreateContainer: %v; want a refusal naming the KBS, PolicyDeny and PCR 9", err)
		}
		t.Logf("refused in %v: %v", took.Round(time.Millisecond), err)
		if st := m.kbs.Stats(); st.Attest == 0 {
			t.Errorf("the guest never attested: %+v", st)
		}
		// The guest measured exactly what refvalues predict for the
		// changed initrd: attestation is sound, the image is not the
		// reference.
		if got, want := claimPCR(m.seen(), 9), bad[refvalues.TPMPCRName(9)][0]; got != want {
			t.Errorf("PCR 9 = %s; refvalues of the changed initrd predict %s", got, want)
		}
		if got, want := claimPCR(m.seen(), 4), good[refvalues.TPMPCRName(4)][0]; got != want {
			t.Errorf("PCR 4 = %s; want the reference kernel's %s", got, want)
		}
		m.v.Kill()
	})
}

// measuredRefvalues is `cova-rootfs refvalues --firmware ovmf` for one boot
// of the harness's kernel with initrd.
func measuredRefvalues(t *testing.T, e *env, initrd, cmdline string, initdata []byte, pcrs map[int][]byte) map[string][]string {
	t.Helper()
	v, err := refvalues.Compute(refvalues.Inputs{
		Kernel: e.kernel.Image, Initrd: initrd, Cmdline: cmdline, HasCmdline: true,
		Initdata: initdata, TPMPCRs: pcrs, Firmware: refvalues.FirmwareOVMF, Memory: measuredMemoryBytes,
	})
	if err != nil {
		t.Fatal(err)
	}
	return v.Sample()
}

// tamperGzipOS copies a gzip initrd and changes one byte: the header's OS
// field, which decompressors ignore.
func tamperGzipOS(t *testing.T, initrd string) string {
	t.Helper()
	b, err := os.ReadFile(initrd)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 10 || !bytes.Equal(b[:3], []byte{0x1f, 0x8b, 8}) {
		t.Fatalf("%s is not a gzip stream", initrd)
	}
	if b[9] == 3 { // Unix
		b[9] = 0xff
	} else {
		b[9] = 3
	}
	p := filepath.Join(t.TempDir(), "initrd-changed.img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// measuredBoot is one booted guest with its KBS, ready to create the
// container m.spec in sandbox m.sid.
type measuredBoot struct {
	v        *VM
	a        *Agent
	kbs      *kbs.Server
	initdata []byte
	sid      string
	spec     *specs.Spec
	secret   string
	booted   time.Duration

	mu     sync.Mutex
	ref    map[string][]string // the reference image's values, this initdata
	claims map[string]any      // the tpm claims of the last resource request
}

func (m *measuredBoot) seen() map[string]any {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.claims
}

// policy is the dev KBS's resource policy: the TPM verifier's claims for
// measuredPCRs must be reference values of the reference image.
func (m *measuredBoot) policy(_ context.Context, in kbs.PolicyInput) error {
	c, err := tpmClaims(in.Claims)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.claims = c
	ref := m.ref
	m.mu.Unlock()
	for _, i := range measuredPCRs {
		name := refvalues.TPMPCRName(i)
		if got := claimPCR(c, i); !slices.Contains(ref[name], got) {
			return fmt.Errorf("PCR %d = %s is not a reference value (%s %v)", i, got, name, ref[name])
		}
	}
	return nil
}

// tpmClaims digs the tpm verifier's claims out of the dev KBS's token
// claims (submods.cpu0.ear.veraison.annotated-evidence.tpm).
func tpmClaims(claims map[string]any) (map[string]any, error) {
	cur := any(claims)
	for _, k := range []string{"submods", "cpu0", "ear.veraison.annotated-evidence", "tpm"} {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("token claims: no %s", k)
		}
		cur = m[k]
	}
	m, ok := cur.(map[string]any)
	if !ok {
		return nil, errors.New("token claims: no tpm evidence claims")
	}
	return m, nil
}

func claimPCR(c map[string]any, i int) string {
	s, _ := c[fmt.Sprintf("pcr%02d", i)].(string)
	return s
}

// bootMeasured starts a dev KBS (on loopback, its certificate naming
// 10.0.2.2) holding a sealed secret's key and value, and boots initrd under
// OVMF with a fresh vTPM and an initdata disk whose aa.toml and cdh.toml
// name that KBS; then sets up the guest network and the sandbox with a
// busybox rootfs.
func bootMeasured(ctx context.Context, t *testing.T, e *env, initrd, cmdline string) *measuredBoot {
	t.Helper()
	signer, err := sealedtest.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	m := &measuredBoot{sid: "sandbox-measured", secret: "measured-secret-" + rand.Text()[:8]}
	m.kbs = kbs.StartTB(t, kbs.Options{
		CertNames: []string{"10.0.2.2"},
		Resources: map[string][]byte{
			strings.TrimPrefix(measuredKeyKid, "kbs:///"):   signer.JWK,
			strings.TrimPrefix(measuredSecretID, "kbs:///"): []byte(m.secret),
		},
		Policy: m.policy,
	})
	guestURL := "https://10.0.2.2:" + m.kbs.URL()[strings.LastIndexByte(m.kbs.URL(), ':')+1:]
	m.initdata = []byte(fmt.Sprintf(`version = "0.1.0"
algorithm = "sha256"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = %q
cert = """
%s"""
'''
"cdh.toml" = '''
[kbc]
name = "cc_kbc"
url = %q
'''
`, guestURL, m.kbs.CACertPEM(), guestURL))
	ref := measuredRefvalues(t, e, e.initrd, cmdline, m.initdata, nil)
	m.mu.Lock()
	m.ref = ref
	m.mu.Unlock()
	sealed, err := signer.Vault(measuredKeyKid, measuredSecretID)
	if err != nil {
		t.Fatal(err)
	}

	dir := vmDir(t)
	tp := startVTPM(ctx, t, dir)
	disk := Disk{Path: initdataDisk(t, m.initdata, false), ReadOnly: true, Slot: 3}
	c := Config{
		Kernel: e.kernel.Image, Initrd: initrd, Append: e.cmdline(), Dir: dir, Memory: measuredMemory,
		Disks: []Disk{disk}, Net: true, TPM: tp.CtrlSocket,
		OVMF: &OVMF{Code: DebianOVMFCode, Vars: DebianOVMFVars},
	}
	if args := c.Args(); args[slices.Index(args, "-append")+1] != cmdline {
		t.Fatalf("QEMU's -append is not the command line refvalues measure (%q): %q", cmdline, args)
	}
	m.v = bootConfig(t, c)
	var tm timings
	m.a, tm = connect(ctx, t, m.v)
	m.booted = time.Since(m.v.Started)
	t.Logf("OVMF boot: %v", tm)

	guestNetwork(ctx, t, m.a)
	if _, err := m.a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: m.sid, Hostname: "cova"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	host := t.TempDir()
	makeBusybox(t, e.busybox, host, nil)
	root := filepath.Join(sharedKataDir, m.sid, "rootfs")
	if _, _, err := m.a.CopyDir(ctx, host, root); err != nil {
		t.Fatal(err)
	}
	m.spec = containerSpec(root, "sh", "-c", `echo "secret=$SECRET"`)
	m.spec.Process.Env = append(m.spec.Process.Env, "SECRET="+sealed)
	return m
}

func TestArgsOVMF(t *testing.T) {
	c := Config{Kernel: "K", Initrd: "I", Dir: "/d", OVMF: &OVMF{Code: "/fw/CODE.fd", Vars: "/fw/VARS.fd"}}
	args := c.Args()
	joined := strings.Join(args, " ")
	for _, want := range []string{
		"-drive if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd",
		"-drive if=pflash,format=raw,unit=1,file=/d/ovmf-vars.fd", // the VM's copy, never the template
		"-kernel K -initrd I",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	if strings.Contains(joined, "/fw/VARS.fd") {
		t.Error("QEMU would write the variable store template")
	}
	if strings.Contains(strings.Join(Config{Kernel: "K", Initrd: "I", Dir: "/d"}.Args(), " "), "pflash") {
		t.Error("a VM without Config.OVMF has pflash drives")
	}
}
