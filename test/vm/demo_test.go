package vm

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/agent/policy"
	"github.com/cova-project/cova/cdh/sealed/sealedtest"
	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/ocicrypt"
	"github.com/cova-project/cova/imagepull/ocicrypt/ocicrypttest"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/test/kbs"
	"github.com/cova-project/cova/test/regtest"
)

// Resources the demo's KBS holds.
const (
	demoKEK       = "default/key/demo-kek"
	demoCosignKey = "default/cosign-key/demo"
	demoPolicy    = "default/security-policy/demo"
	demoSealKey   = "default/sealed-secret-key/1"
	demoSecret    = "default/secret/greeting"
	demoConfig    = "default/config/app"
)

// TestDemo is `make demo`: the confidential pod flow, step by step with
// timings. The host runs a local registry and the development KBS; it
// pushes busybox with its layer encrypted (key in the KBS) and a cosign
// signature (public key and image security policy in the KBS). A measured
// initrd boots under QEMU (TCG) with a vTPM (swtpm) and an initdata disk
// naming the KBS, the registry and the workload policy. The harness drives
// the agent as the Kata shim would; the guest attests to the KBS with its
// vTPM, fetches the policy and the key, verifies the signature, decrypts
// and runs the image with a sealed secret unsealed into its environment;
// the policy refuses the host a shell; the VM powers itself off.
func TestDemo(t *testing.T) {
	e := needEnv(t)
	regtest.Require(t, "docker-registry")
	step := func(start time.Time, format string, args ...any) {
		t.Logf("%-66s %8v", fmt.Sprintf(format, args...), time.Since(start).Round(time.Millisecond))
	}
	t0 := time.Now()
	digest := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		s := sha256.Sum256(b)
		return hex.EncodeToString(s[:8])
	}
	step(t0, "initrd %s (sha256 %s…), kernel %s", filepath.Base(e.initrd), digest(e.initrd), e.kernel.Release)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()

	// The image: busybox in one gzip layer, encrypted with a fresh layer
	// key wrapped by the KEK the KBS holds, signed with cosign's format.
	t1 := time.Now()
	reg := regtest.Start(t)
	guestReg := "10.0.2.2:" + reg.Host[strings.LastIndexByte(reg.Host, ':')+1:]
	image := guestReg + "/demo/busybox:latest"
	kek := make([]byte, 32)
	if _, err := rand.Read(kek); err != nil {
		t.Fatal(err)
	}
	layer, diffID := busyboxLayer(t, e.busybox)
	enc, err := ocicrypttest.Encrypt(layer)
	if err != nil {
		t.Fatal(err)
	}
	packet, err := ocicrypttest.Packet(enc.PrivOpts, kek, "kbs:///"+demoKEK, ocicrypt.WrapA256GCM, true)
	if err != nil {
		t.Fatal(err)
	}
	md, err := regtest.PushImage(ctx, reg.Host, "demo/busybox", "latest", []regtest.Layer{{
		Blob: enc.Blob, MediaType: oci.MediaTypeOCILayerGzip + "+encrypted", DiffID: diffID,
		Annotations: map[string]string{ocicrypt.AnnotationAttestationAgent: packet, ocicrypt.AnnotationPubOpts: enc.PubOpts},
	}})
	if err != nil {
		t.Fatal(err)
	}
	signKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := regtest.PushCosign(ctx, reg.Host, "demo/busybox", image, md, signKey); err != nil {
		t.Fatal(err)
	}
	step(t1, "registry: demo/busybox encrypted (KEK in the KBS), cosign-signed")

	// The KBS: key, signature policy and key, the sealed secret's signing
	// key and value. It logs what it releases.
	t2 := time.Now()
	pubDER, err := x509.MarshalPKIXPublicKey(&signKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	secPolicy, _ := json.Marshal(map[string]any{
		"default": []any{map[string]string{"type": "reject"}},
		"transports": map[string]any{"docker": map[string]any{
			guestReg + "/demo/busybox": []any{map[string]string{"type": "sigstoreSigned", "keyPath": "kbs:///" + demoCosignKey}},
		}},
	})
	signer, err := sealedtest.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	released := map[string]string{}
	k := kbs.StartTB(t, kbs.Options{CertNames: []string{"10.0.2.2"}, Resources: map[string][]byte{
		demoKEK:       kek,
		demoCosignKey: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}),
		demoPolicy:    secPolicy,
		demoSealKey:   signer.JWK,
		demoSecret:    []byte("a secret released by the KBS"),
		demoConfig:    []byte("config fetched through the CDH REST API"),
	}, Policy: func(_ context.Context, in kbs.PolicyInput) error {
		mu.Lock()
		defer mu.Unlock()
		released[strings.Join(in.Path, "/")] = attestedTEE(in.Claims)
		return nil
	}})
	kbsURL := "https://10.0.2.2:" + k.URL()[strings.LastIndexByte(k.URL(), ':')+1:]
	sealedEnv, err := signer.Vault("kbs:///"+demoSealKey, "kbs:///"+demoSecret)
	if err != nil {
		t.Fatal(err)
	}
	step(t2, "dev KBS %s: key, cosign key, image policy, sealed-secret key", kbsURL)

	// initdata: the KBS (aa.toml, cdh.toml), the image policy and registry
	// (cdh.toml), the workload policy: everything but a shell for the host.
	pol := strings.Replace(policy.AllowAllPolicy(), "default ExecProcessRequest := true", "default ExecProcessRequest := false", 1)
	aaTOML := fmt.Sprintf("[token_configs.kbs]\nurl = %q\ncert = \"\"\"\n%s\"\"\"\n", kbsURL, k.CACertPEM())
	cdhTOML := fmt.Sprintf("[kbc]\nname = \"cc_kbc\"\nurl = %q\nkbs_cert = \"\"\"\n%s\"\"\"\n\n[image]\nimage_security_policy_uri = %q\n[[image.registry_config.registry]]\nprefix = %q\ninsecure = true\n",
		kbsURL, k.CACertPEM(), "kbs:///"+demoPolicy, guestReg)
	doc := "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n" + aaTOML + "'''\n\"cdh.toml\" = '''\n" + cdhTOML + "'''\n\"policy.rego\" = '''\n" + pol + "'''\n"
	sum := sha256.Sum256([]byte(doc))
	disk := Disk{Path: initdataDisk(t, []byte(doc), false), ReadOnly: true, Slot: 3}
	t.Logf("initdata sha256 %s… (aa.toml+cdh.toml: the KBS; image policy from the KBS; policy.rego: no exec)", hex.EncodeToString(sum[:8]))

	t3 := time.Now()
	dir := vmDir(t)
	tp := startVTPM(ctx, t, dir)
	v := bootConfig(t, Config{Kernel: e.kernel.Image, Initrd: e.initrd, Append: e.cmdline(), Dir: dir, Disks: []Disk{disk}, Net: true, TPM: tp.CtrlSocket})
	a, tm := connect(ctx, t, v)
	if !strings.Contains(v.Console(), `"tee":"tpm"`) {
		t.Fatalf("the guest did not detect its vTPM; console:\n%s", tail(v.Console(), 30))
	}
	step(t3, "VM booted (TCG, vTPM), initdata bound to PCR 8, agent answers Check (%.0f ms)", tm.agentMS)

	t4 := time.Now()
	guestNetwork(ctx, t, a)
	const sid = "demo"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova-demo"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	step(t4, "network (UpdateInterface, UpdateRoutes) and CreateSandbox")

	t5 := time.Now()
	mp := filepath.Join("/run/kata-containers", sid, "rootfs")
	storages := []*pb.Storage{{
		Driver: "image_guest_pull", Source: image, Fstype: "overlay", MountPoint: mp,
		DriverOptions: []string{`image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container"}}`},
	}}
	// The container also reads a resource through the guest-components
	// REST API the agent serves on 127.0.0.1:8006 (the pod shares the
	// guest's network namespace, as in Kata). nc, not wget: Debian's static
	// busybox wget segfaults in glibc's NSS; stdin stays open a moment, as
	// Go's HTTP server cancels a request whose client half-closes.
	spec := containerSpec(mp, "sh", "-c", `echo "$GREETING, in a decrypted and verified image on $(uname -s) $(cat /proc/sys/kernel/hostname)"; `+
		`echo "REST: $({ printf 'GET /cdh/resource/`+demoConfig+` HTTP/1.0\r\n\r\n'; sleep 1; } | nc 127.0.0.1 8006 | tail -n 1)"`)
	spec.Process.Env = append(spec.Process.Env, "GREETING="+sealedEnv)
	spec.Root.Readonly = false
	spec.Hostname = ""
	w, errOut, st := runContainer(ctx, t, a, sid, spec, storages)
	step(t5, "attest (vTPM) + policy + signature + pull/decrypt + unseal + run (exit %d)", st)
	mu.Lock()
	var got []string
	rel := map[string]bool{}
	for p, tee := range released {
		got = append(got, p+" ("+tee+")")
		rel[p] = true
	}
	mu.Unlock()
	sort.Strings(got)
	t.Logf("KBS released: %s; %d attestation(s)", strings.Join(got, ", "), k.Stats().Attest)
	for _, l := range strings.Split(strings.TrimSpace(w), "\n") {
		t.Logf("container output: %s", l)
	}
	if st != 0 || !strings.Contains(w, "a secret released by the KBS, in a decrypted and verified image") ||
		!strings.Contains(w, "REST: config fetched through the CDH REST API") {
		t.Fatalf("container: %q %q %d\nconsole:\n%s", w, errOut, st, tail(v.Console(), 40))
	}
	for _, want := range []string{demoKEK, demoPolicy, demoCosignKey, demoSecret, demoConfig} {
		if !rel[want] {
			t.Errorf("the KBS never released %s", want)
		}
	}
	for _, g := range got {
		if !strings.Contains(g, "(tpm") {
			t.Errorf("released without vTPM evidence: %s", g)
		}
	}
	if strings.Contains(v.Console(), "a secret released by the KBS") {
		t.Error("the secret's plaintext reached the guest console log")
	}

	_, err = a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: sid, ExecId: "shell"})
	s, _ := status.FromError(err)
	t.Logf("host asks for a shell: %s", s.Message())
	if err == nil {
		t.Fatal("exec was allowed")
	}
	t6 := time.Now()
	off := powerOff(ctx, t, a, v)
	step(t6, "DestroySandbox: VM powered off (%v)", off.Round(time.Millisecond))
	step(t0, "total")
}

// busyboxLayer is a gzip layer holding busybox as /bin/busybox and the
// applets the demo uses; it returns the blob and its diffID.
func busyboxLayer(t *testing.T, busybox string) ([]byte, oci.Digest) {
	t.Helper()
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	hdrs := []*tar.Header{{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, {Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))}}
	for _, h := range hdrs {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tw.Write(bb); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"sh", "echo", "cat", "uname", "nc", "tail", "sleep"} {
		if err := tw.WriteHeader(&tar.Header{Name: "bin/" + app, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var gb bytes.Buffer
	gw := gzip.NewWriter(&gb)
	gw.Write(tb.Bytes())
	gw.Close()
	return gb.Bytes(), oci.FromBytes(tb.Bytes())
}

// attestedTEE names the TEE whose evidence an EAR token's claims carry
// (submods.cpu0."ear.veraison.annotated-evidence".<tee>).
func attestedTEE(claims map[string]any) string {
	sub, _ := claims["submods"].(map[string]any)
	cpu, _ := sub["cpu0"].(map[string]any)
	ann, _ := cpu["ear.veraison.annotated-evidence"].(map[string]any)
	var tees []string
	for k := range ann {
		if k != "report_data" && k != "runtime_data_claims" && k != "init_data" && k != "init_data_claims" {
			tees = append(tees, k)
		}
	}
	sort.Strings(tees)
	return strings.Join(tees, "+")
}
