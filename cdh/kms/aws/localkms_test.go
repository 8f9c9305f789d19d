package aws

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/vishvananda/netlink"

	"github.com/cova-project/cova/cdh/kms"
	"github.com/cova-project/cova/cdh/sealed"
	"github.com/cova-project/cova/cdh/sealed/sealedtest"
)

// local-kms (github.com/nsmithuk/local-kms) is a real AWS-KMS-compatible
// server. Install: go install github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6
// It listens on all interfaces, so the test runs it (and itself) in a
// network namespace of its own, where only loopback exists.

const (
	localKMSChildEnv = "COVA_TEST_LOCALKMS_NETNS"
	localKMSPort     = "4599"
	localKMSRegion   = "eu-west-2"
	localKMSKey      = "bc436485-5092-42b8-92a3-0aa8b93536dc"
	localKMSKey2     = "49c5492b-b1bc-42a8-9a5c-b2015e810c1c"
)

const localKMSSeed = `Keys:
  Symmetric:
    Aes:
      - Metadata:
          KeyId: ` + localKMSKey + `
        BackingKeys:
          - 5cdaead27fe7da2de47945d73cd6d79e36494e73802f3cd3869f1d2cb0b5d7a9
      - Metadata:
          KeyId: ` + localKMSKey2 + `
        BackingKeys:
          - 34743777217a25432a46294a404e635266556a586e3272357538782f413f4428
Aliases:
  - AliasName: alias/cova-test
    TargetKeyId: ` + localKMSKey + `
`

func localKMSBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("local-kms"); err == nil {
		return p
	}
	for _, dir := range []string{os.Getenv("GOBIN"), filepath.Join(os.Getenv("HOME"), "go", "bin"), "/root/go/bin"} {
		if dir == "" {
			continue
		}
		if p := filepath.Join(dir, "local-kms"); fileExists(p) {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("local-kms not installed (go install github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6)")
	}
	t.Skip("local-kms not installed")
	return ""
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// TestLocalKMS encrypts with a real local KMS and decrypts through the aws
// provider and the sealed-secret unsealer.
func TestLocalKMS(t *testing.T) {
	bin := localKMSBinary(t)
	if os.Getenv(localKMSChildEnv) != "1" {
		if os.Geteuid() != 0 {
			if os.Getenv("CI") == "true" {
				t.Fatal("TestLocalKMS needs root for a network namespace")
			}
			t.Skip("needs root for a network namespace")
		}
		cmd := exec.Command(os.Args[0], "-test.run=^TestLocalKMS$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), localKMSChildEnv+"=1")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
		out, err := cmd.CombinedOutput()
		t.Logf("in a new network namespace:\n%s", out)
		if err != nil {
			t.Fatalf("child test: %v", err)
		}
		if !bytes.Contains(out, []byte("--- PASS: TestLocalKMS")) {
			t.Fatal("child test did not pass")
		}
		return
	}

	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	seed := filepath.Join(dir, "seed.yaml")
	if err := os.WriteFile(seed, []byte(localKMSSeed), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := exec.CommandContext(ctx, bin)
	srv.Env = []string{"PORT=" + localKMSPort, "KMS_REGION=" + localKMSRegion, "KMS_ACCOUNT_ID=111122223333",
		"KMS_DATA_PATH=" + filepath.Join(dir, "data"), "KMS_SEED_PATH=" + seed}
	var logs bytes.Buffer
	srv.Stdout, srv.Stderr = &logs, &logs
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = srv.Wait()
		if t.Failed() {
			t.Logf("local-kms output:\n%s", logs.String())
		}
	}()
	endpoint := "http://127.0.0.1:" + localKMSPort
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+localKMSPort, 200*time.Millisecond)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("local-kms did not start: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	creds := StaticCredentials{AccessKeyID: "AKIDLOCAL", SecretAccessKey: "local-secret"}
	p, err := New(Config{Credentials: creds, KMSEndpoint: endpoint, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	p.backoff = time.Millisecond
	c, err := p.Client(localKMSRegion)
	if err != nil {
		t.Fatal(err)
	}
	encrypt := func(t *testing.T, keyID string, plaintext []byte, ec map[string]string) []byte {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"KeyId": keyID, "Plaintext": plaintext, "EncryptionContext": ec})
		req, _ := http.NewRequest(http.MethodPost, endpoint+"/", bytes.NewReader(body))
		req.Header.Set("Content-Type", ContentType)
		req.Header.Set("X-Amz-Target", "TrentService.Encrypt")
		signRequest(req, body, Credentials(creds), localKMSRegion, ServiceKMS, time.Now())
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("Encrypt: HTTP %d %s", resp.StatusCode, raw)
		}
		var out struct{ CiphertextBlob []byte }
		if err := json.Unmarshal(raw, &out); err != nil || len(out.CiphertextBlob) == 0 {
			t.Fatalf("Encrypt response %s: %v", raw, err)
		}
		return out.CiphertextBlob
	}

	ec := map[string]string{"purpose": "cova"}
	blob := encrypt(t, localKMSKey, []byte(marker), nil)
	blobEC := encrypt(t, "alias/cova-test", []byte(marker), ec)
	tampered := append([]byte(nil), blob...)
	tampered[len(tampered)-1] ^= 1
	arn := fmt.Sprintf("arn:aws:kms:%s:111122223333:key/%s", localKMSRegion, localKMSKey)
	for _, tc := range []struct {
		name  string
		blob  []byte
		keyID string
		ann   map[string]any
		class func(error) bool
	}{
		{name: "key id", blob: blob, keyID: localKMSKey},
		{name: "key arn", blob: blob, keyID: arn},
		{name: "alias", blob: blob, keyID: "alias/cova-test"},
		{name: "no key id", blob: blob},
		{name: "encryption context", blob: blobEC, keyID: localKMSKey, ann: map[string]any{"encryption_context": ec}},
		{name: "wrong key", blob: blob, keyID: localKMSKey2, class: errdefs.IsInvalidArgument},
		{name: "tampered", blob: tampered, keyID: localKMSKey, class: errdefs.IsInvalidArgument},
		{name: "missing context", blob: blobEC, keyID: localKMSKey, class: errdefs.IsInvalidArgument},
		{name: "unknown key", blob: blob, keyID: "00000000-0000-0000-0000-000000000000", class: func(err error) bool { return errdefs.IsNotFound(err) || errdefs.IsInvalidArgument(err) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.Decrypt(context.Background(), tc.blob, tc.keyID, ann(t, tc.ann))
			if tc.class == nil {
				if err != nil || string(got) != marker {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			t.Logf("error: %v", err)
			if err == nil || !tc.class(err) || !strings.Contains(err.Error(), "aws kms Decrypt") || !strings.Contains(err.Error(), "HTTP 4") {
				t.Fatalf("got %q, err = %v", got, err)
			}
			checkClean(t, err)
		})
	}

	t.Run("sealed envelope", func(t *testing.T) {
		u := sealed.New(nil, sealed.WithSkipVerification(true), sealed.WithProviders(kms.Providers{kms.ProviderAWS: p}))
		for _, wrap := range []string{sealed.WrapA256GCM, sealed.WrapA256CTR} {
			s := sealedtest.Envelope(t, "aws", arn, wrap, []byte(marker), map[string]any{"region": localKMSRegion},
				map[string]any{"encryption_context": ec}, func(dek []byte) []byte { return encrypt(t, localKMSKey, dek, ec) })
			got, err := u.Unseal(context.Background(), s)
			if err != nil || string(got) != marker {
				t.Fatalf("%s: got %q, %v", wrap, got, err)
			}
		}
	})
}
