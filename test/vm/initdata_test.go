package vm

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/agent/policy"
	pb "github.com/cova-project/cova/protocols/grpc"
)

// initdataDisk writes a Kata initdata block device image: the magic
// "initdata", the gzip length as u64 little-endian, gzip(TOML), zero
// padding to 512-byte sectors.
func initdataDisk(t *testing.T, toml []byte, corrupt bool) string {
	t.Helper()
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	if _, err := w.Write(toml); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	body := gz.Bytes()
	if corrupt {
		body[len(body)/2] ^= 0xff // the gzip CRC or the deflate stream breaks
	}
	var img bytes.Buffer
	img.WriteString("initdata")
	_ = binary.Write(&img, binary.LittleEndian, uint64(len(body)))
	img.Write(body)
	if pad := img.Len() % 512; pad != 0 {
		img.Write(make([]byte, 512-pad))
	}
	img.Write(make([]byte, 512*8)) // room for the kernel's partition probe
	p := filepath.Join(t.TempDir(), "initdata.img")
	if err := os.WriteFile(p, img.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func initdataTOML() []byte {
	// The measured policy refuses CreateSandbox: if it takes effect, the
	// initrd's allow-all default-policy.rego was overridden.
	pol := strings.Replace(policy.AllowAllPolicy(), "default CreateSandboxRequest := true", "default CreateSandboxRequest := false", 1)
	return []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"policy.rego\" = '''\n" + pol + "'''\n")
}

// TestInitdataPolicyTakesEffect attaches a well-formed initdata disk whose
// policy.rego differs from the initrd's default policy; the agent must
// enforce the initdata one.
func TestInitdataPolicyTakesEffect(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	disk := Disk{Path: initdataDisk(t, initdataTOML(), false), ReadOnly: true, Slot: 3}
	v := boot(t, e, disk)
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)
	_, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "sb"})
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), "CreateSandboxRequest") {
		t.Fatalf("CreateSandbox under the initdata policy: %v; want PERMISSION_DENIED", err)
	}
	if !strings.Contains(v.Console(), "initdata:policy.rego") {
		t.Error("the console does not say the initdata policy was loaded")
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox", powerOff(ctx, t, a, v).Round(time.Millisecond))
}

// TestCorruptInitdataStopsBoot: an initdata device whose gzip is damaged
// must stop the boot (fail closed): the agent never listens and the VM
// powers off with a console message.
func TestCorruptInitdataStopsBoot(t *testing.T) {
	t.Parallel()
	e := needEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()
	disk := Disk{Path: initdataDisk(t, initdataTOML(), true), ReadOnly: true, Slot: 3}
	v := boot(t, e, disk)
	wctx, wcancel := context.WithTimeout(ctx, readyTimeout)
	defer wcancel()
	if err := v.Wait(wctx); err != nil {
		t.Fatalf("the VM did not stop by itself with corrupt initdata: %v", err)
	}
	con := v.Console()
	if !strings.Contains(con, "initdata check failed, refusing to serve") {
		t.Fatalf("no fail-closed message on the console:\n%s", tail(con, 20))
	}
	if strings.Contains(con, "agent listening") {
		t.Fatal("the agent listened despite corrupt initdata")
	}
}
