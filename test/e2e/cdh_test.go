package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cova-project/cova/cdh/sealed/sealedtest"
	"github.com/cova-project/cova/test/kbs"
	"github.com/cova-project/cova/test/testutil"
)

// TestCDHWithDevKBS is issue 5's flow through the built binaries: the agent
// (host mode, sample attester) reads aa.toml/cdh.toml from --initdata,
// attests to the development KBS and serves the CDH socket; cova-ctl
// fetches a resource, unseals a signed vault secret, is refused a tampered
// one, and runs a container whose env holds a sealed secret: the container
// sees the plaintext, the agent's log never does.
func TestCDHWithDevKBS(t *testing.T) {
	testutil.RequireRoot(t)
	ctl := bin(t, "cova-ctl")
	const (
		released = "released-resource-6d1f"
		dbPass   = "db-password-marker-91ac"
		keyKid   = "kbs:///default/sealed-secret-key/1"
	)
	signer, err := sealedtest.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	k := kbs.StartTB(t, kbs.Options{Resources: map[string][]byte{
		"default/key/demo":              []byte(released),
		"default/sealed-secret-key/1":   signer.JWK,
		"default/secret/db-password":    []byte(dbPass),
		"other/secret/never-referenced": []byte("unused"),
	}})
	doc := fmt.Sprintf(`version = "0.1.0"
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
`, k.URL(), k.CACertPEM(), k.URL())
	idFile := filepath.Join(t.TempDir(), "initdata.toml")
	if err := os.WriteFile(idFile, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	ag := startAgent(t, "--initdata", idFile)
	cdh := "unix://" + filepath.Join(ag.dir, "state", "cdh.sock")

	out, err := exec.Command(ctl, "resource", "--cdh", cdh, "kbs:///default/key/demo").Output()
	if err != nil || string(out) != released {
		t.Fatalf("cova-ctl resource = %q, %v", out, err)
	}
	secret, err := signer.Vault(keyKid, "kbs:///default/secret/db-password")
	if err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(ctl, "unseal", "--cdh", cdh, secret).Output()
	if err != nil || string(out) != dbPass {
		t.Fatalf("cova-ctl unseal = %q, %v", out, err)
	}
	// A secret signed by someone else is refused, naming the signature.
	forger, _ := sealedtest.NewSigner()
	forged, _ := forger.Vault(keyKid, "kbs:///default/secret/db-password")
	out, err = exec.Command(ctl, "unseal", "--cdh", cdh, forged).CombinedOutput()
	if err == nil || strings.Contains(string(out), dbPass) || !strings.Contains(string(out), "UnsealSecret") {
		t.Fatalf("forged secret: %q, %v", out, err)
	}

	// A container whose env holds the sealed secret sees the plaintext.
	rootfs := testutil.BusyboxRootfs(t)
	out, err = exec.Command(ctl, "--addr", ag.addr, "run", "--rootfs", rootfs, "--env", "DB_PASSWORD="+secret, "--",
		"sh", "-c", `echo "password=$DB_PASSWORD"`).Output()
	if err != nil || string(out) != "password="+dbPass+"\n" {
		t.Fatalf("container with a sealed env = %q, %v", out, err)
	}
	if st := k.Stats(); st.Attest == 0 {
		t.Errorf("the KBS saw no attestation: %+v", st)
	}
	if strings.Contains(ag.logs.String(), dbPass) || strings.Contains(ag.logs.String(), released) {
		t.Fatal("a secret reached the agent's log")
	}
}
