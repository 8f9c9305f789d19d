package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/agent"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	"github.com/cova-project/cova/attester/tpm"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/rootfs/refvalues"
	"github.com/cova-project/cova/test/kbs"
	"github.com/cova-project/cova/test/swtpm"
)

// vtpm is a swtpm for one boot, with the tpm attester's AK provisioned.
type vtpm struct {
	*SWTPM
	akSPKI []byte // DER SubjectPublicKeyInfo of the AK
}

// startVTPM provisions an AK at the attester's default handle in a fresh
// state directory (swtpm with a command socket), then serves that state
// for QEMU.
func startVTPM(ctx context.Context, t *testing.T, dir string) *vtpm {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		unavailable(t, "swtpm is not installed (apt-get install swtpm swtpm-tools)")
	}
	state := filepath.Join(dir, "tpmstate")
	srv, err := StartSWTPMServer(ctx, bin, state, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop) // a no-op after the Stop below
	tp, err := srv.Open()
	if err != nil {
		t.Fatal(err)
	}
	swtpm.ProvisionAK(t, tp, attester.DefaultAKHandle)
	pub, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(attester.DefaultAKHandle)}.Execute(tp)
	if err != nil {
		t.Fatalf("read AK: %v", err)
	}
	tp.Close()
	srv.Stop()
	spki := rsaSPKI(t, pub.OutPublic)
	s, err := StartSWTPM(ctx, bin, state, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return &vtpm{SWTPM: s, akSPKI: spki}
}

func rsaSPKI(t *testing.T, p tpm2.TPM2BPublic) []byte {
	t.Helper()
	pub, err := p.Contents()
	if err != nil {
		t.Fatal(err)
	}
	detail, err := pub.Parameters.RSADetail()
	if err != nil {
		t.Fatal(err)
	}
	unique, err := pub.Unique.RSA()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm2.RSAPub(detail, unique)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// runtimePCR is the PCR runtime measurements go to on a TPM: not the
// reference's default 17, which locality 0 (Linux's /dev/tpm0) cannot
// extend, but PCR 23, which the agent picks by itself for TPM-backed
// attesters (aa.toml below leaves init_pcr unset to prove it).
const runtimePCR = 23

// vtpmInitdata turns the event log on and keeps the initrd's allow-all
// policy.
var vtpmInitdata = `version = "0.1.0"
algorithm = "sha256"

[data]
"aa.toml" = '''
[eventlog_config]
enable_eventlog = true
'''
`

// expectedStartEvent is the AAEL event the agent records before it starts
// container cid with spec s, built from the documented vocabulary
// (docs/measurements.md): a verifier that knows the pod computes the same.
func expectedStartEvent(t *testing.T, cid string, s *specs.Spec) eventlog.Event {
	t.Helper()
	type envDigest struct {
		Name   string `json:"name"`
		SHA256 string `json:"sha256"`
	}
	env := []envDigest{}
	for _, kv := range s.Process.Env {
		name, val, _ := strings.Cut(kv, "=")
		sum := sha256.Sum256([]byte(val))
		env = append(env, envDigest{name, hex.EncodeToString(sum[:])})
	}
	content, err := json.Marshal(struct {
		ContainerID string      `json:"container_id"`
		Args        []string    `json:"args"`
		Env         []envDigest `json:"env"`
		Cwd         string      `json:"cwd"`
		UID         uint32      `json:"uid"`
		GID         uint32      `json:"gid"`
		Terminal    bool        `json:"terminal"`
		Root        string      `json:"root"`
	}{cid, s.Process.Args, env, s.Process.Cwd, s.Process.User.UID, s.Process.User.GID, s.Process.Terminal, s.Root.Path})
	if err != nil {
		t.Fatal(err)
	}
	ev, err := eventlog.NewEvent(agent.MeasurementDomain, "StartContainer", string(content))
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// TestVTPMInitdataEventLog boots with a swtpm vTPM and an initdata disk
// whose aa.toml turns the event log on: the agent detects the tpm attester
// and extends PCR 8 with the initdata digest before it listens, and
// measures each StartContainer into runtimePCR. Then QEMU is killed (a
// clean exit would end swtpm) and the host asks the same swtpm, as the
// guest left it, for evidence with Cova's own tpm attester — the guest's AA
// socket and event log are not reachable over the test transport — and
// checks it with the dev KBS's verifier (AK signature,
// nonce, PCR digest, PCR 8 = the initdata binding), that PCR 8 and the
// firmware PCRs SeaBIOS determines (0, 3, 5, 6, 7, and IMA's 10) are what
// refvalues predicts, and that runtimePCR is exactly the replay of the
// container's documented StartContainer event.
func TestVTPMInitdataEventLog(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()

	dir := vmDir(t)
	start := time.Now()
	tp := startVTPM(ctx, t, dir)
	t.Logf("swtpm: AK provisioned and serving in %v", time.Since(start).Round(time.Millisecond))

	toml := []byte(vtpmInitdata)
	id, err := refvalues.FromInitdata(toml)
	if err != nil {
		t.Fatal(err)
	}

	host := t.TempDir()
	makeBusybox(t, e.busybox, host, nil)
	disk := Disk{Path: initdataDisk(t, toml, false), ReadOnly: true, Slot: 3}
	// The attestation REST routes let a container read the event log back.
	cmdline := e.cmdline() + " agent.guest_components_rest_api=attestation"
	v := bootConfig(t, Config{Kernel: e.kernel.Image, Initrd: e.initrd, Append: cmdline, Dir: dir, Disks: []Disk{disk}, TPM: tp.CtrlSocket})
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)
	if con := v.Console(); !strings.Contains(con, `"tee":"tpm"`) || !strings.Contains(con, `"eventlog":true`) {
		t.Fatalf("the agent did not detect the tpm attester with its event log; console:\n%s", tail(con, 30))
	}

	const sid = "sandbox-vtpm"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	root := filepath.Join(sharedKataDir, sid, "rootfs")
	if _, _, err := a.CopyDir(ctx, host, root); err != nil {
		t.Fatal(err)
	}
	spec := containerSpec(root, "sh", "-c", "echo measured")
	spec.Process.Env = append(spec.Process.Env, "SECRET=value-never-logged")
	start = time.Now()
	out, errOut, status := runContainer(ctx, t, a, sid, spec, nil)
	t.Logf("measured container: create..remove in %v", time.Since(start).Round(time.Millisecond))
	if out != "measured\n" || status != 0 {
		t.Fatalf("container: stdout %q stderr %q status %d", out, errOut, status)
	}
	// A second container reads the event log through the REST API
	// (GET /aa/aael, a Cova extension) as a workload would, to hand it to
	// a verifier; its own StartContainer event is in it already.
	reader := containerSpec(root, "sh", "-c", `{ printf 'GET /aa/aael HTTP/1.0\r\n\r\n'; sleep 1; } | nc 127.0.0.1 8006`)
	resp, errOut, status := runContainer(ctx, t, a, "aael-reader", reader, nil)
	_, guestLog, ok := strings.Cut(resp, "\r\n\r\n")
	if status != 0 || !ok || !strings.HasPrefix(resp, "HTTP/1.0 200") {
		t.Fatalf("GET /aa/aael from a container: %q %q %d", resp, errOut, status)
	}
	v.Kill()
	// The swtpm keeps the guest's PCRs; quote them with the tpm attester
	// the agent uses.
	nonce := make([]byte, 32)
	if _, err := rand.Read(nonce); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	evJSON, err := tpm.New(tpm.Config{Open: tp.Open}).Evidence(ctx, nonce)
	if err != nil {
		t.Fatalf("evidence from the swtpm after the boot: %v", err)
	}
	t.Logf("host-side quote of the guest's vTPM in %v", time.Since(start).Round(time.Millisecond))
	claims, err := kbs.TPMVerifier(ctx, evJSON, nonce, id.Digest)
	if err != nil {
		t.Fatalf("tpm evidence does not verify: %v\n%s", err, evJSON)
	}
	var ev tpmEvidence
	if err := json.Unmarshal(evJSON, &ev); err != nil {
		t.Fatal(err)
	}
	if ak, _ := base64.StdEncoding.DecodeString(ev.AKPublic); !bytes.Equal(ak, tp.akSPKI) {
		t.Error("the evidence's ak_public is not the AK provisioned in the swtpm")
	}
	if got, want := claims["pcr08"], hex.EncodeToString(id.PCR8); got != want {
		t.Errorf("PCR 8 = %v; refvalues predicts %s", got, want)
	}
	// What `cova-rootfs refvalues --kernel --initrd --cmdline --initdata
	// --firmware seabios --tpm-pcr 1=… 2=… 4=…` prints for this boot: the
	// initdata binding, SeaBIOS's separator-only PCRs and IMA's PCR 10
	// (from PCRs 0-9, given the machine-dependent PCRs 1, 2 and 4).
	machine := map[int][]byte{}
	for _, i := range []int{1, 2, 4} {
		if machine[i], err = hex.DecodeString(ev.TPMQuote.PCRs[i]); err != nil {
			t.Fatal(err)
		}
	}
	rv, err := refvalues.Compute(refvalues.Inputs{
		Kernel: e.kernel.Image, Initrd: e.initrd, Cmdline: strings.TrimSpace(BaseCmdline + " " + cmdline), HasCmdline: true,
		Initdata: toml, Firmware: refvalues.FirmwareSeaBIOS, TPMPCRs: machine,
	})
	if err != nil {
		t.Fatal(err)
	}
	sample := rv.Sample()
	for _, i := range []int{0, 3, 5, 6, 7, 8, 10} {
		name := refvalues.TPMPCRName(i)
		if got, want := ev.TPMQuote.PCRs[i], sample[name]; len(want) != 1 || got != want[0] {
			t.Errorf("PCR %d = %s; refvalues %s = %v", i, got, name, want)
		}
	}
	if got := sample[refvalues.NameTPMInitdata]; len(got) != 1 || got[0] != ev.TPMQuote.PCRs[8] {
		t.Errorf("%s = %v; the quote's PCR 8 is %s", refvalues.NameTPMInitdata, got, ev.TPMQuote.PCRs[8])
	}

	want := expectedStartEvent(t, sid, spec)
	entry, err := eventlog.NewEntry(want, runtimePCR, eventlog.AlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	// The log the guest served replays to the PCR in the quote, and its
	// first event is the one a verifier computes from the pod spec.
	entries, err := eventlog.Parse([]byte(guestLog))
	if err != nil {
		t.Fatalf("the guest's event log does not parse: %v\n%s", err, guestLog)
	}
	replayed, err := eventlog.Replay(entries, runtimePCR, eventlog.AlgSHA256, make([]byte, sha256.Size))
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.TPMQuote.PCRs[runtimePCR]; got != hex.EncodeToString(replayed) {
		t.Errorf("PCR %d = %s; the replay of the guest's event log gives %x:\n%s", runtimePCR, got, replayed, guestLog)
	}
	t.Logf("guest event log: %d entries", len(entries))
	found := false
	for _, en := range entries {
		if en.Register == entry.Register && bytes.Equal(en.Data, entry.Data) && bytes.Equal(en.Digests[0].Value, entry.Digests[0].Value) {
			found = true
		}
	}
	if !found {
		t.Errorf("the guest's event log lacks the expected StartContainer event %+v:\n%s", want, guestLog)
	}
	if strings.Contains(want.Content, "value-never-logged") {
		t.Error("an env value is in the measured content")
	}
	for i, p := range ev.TPMQuote.PCRs {
		t.Logf("PCR %2d = %s", i, p)
	}
}

// tpmEvidence is the part of the tpm attester's evidence the test reads.
type tpmEvidence struct {
	TPMQuote struct {
		PCRs []string `json:"pcrs"`
	} `json:"tpm_quote"`
	AKPublic string `json:"ak_public"`
}

func TestArgsTPM(t *testing.T) {
	c := Config{Kernel: "K", Initrd: "I", Dir: "/d", TPM: "/d/swtpm-ctrl.sock"}
	joined := strings.Join(c.Args(), " ")
	for _, want := range []string{
		"-chardev socket,id=chrtpm,path=/d/swtpm-ctrl.sock",
		"-tpmdev emulator,id=tpm0,chardev=chrtpm",
		"-device tpm-tis,tpmdev=tpm0",
	} {
		if !strings.Contains(joined, want) {
			t.Errorf("args lack %q:\n%s", want, joined)
		}
	}
	if strings.Contains(strings.Join(Config{Kernel: "K", Initrd: "I", Dir: "/d"}.Args(), " "), "tpm") {
		t.Error("a VM without Config.TPM has a TPM device")
	}
}
