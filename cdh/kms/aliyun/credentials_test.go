package aliyun

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
)

// exportPKCS12 runs openssl pkcs12 -export over key (with a self-signed
// certificate, as KMS issues) and returns the DER.
func exportPKCS12(t *testing.T, key *rsa.PrivateKey, password string, args ...string) []byte {
	t.Helper()
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("openssl is required in CI")
		}
		t.Skip("openssl not installed")
	}
	dir := t.TempDir()
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cert.pem"), selfSignedPEM(t, key), 0o600); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "ck.p12")
	cmd := exec.Command(openssl, append([]string{"pkcs12", "-export", "-inkey", filepath.Join(dir, "key.pem"),
		"-in", filepath.Join(dir, "cert.pem"), "-out", out, "-passout", "pass:" + password}, args...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("openssl pkcs12 %v unavailable here: %v: %s", args, err, b)
	}
	der, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func clientKeyJSON(keyID string, der []byte) []byte {
	b, _ := json.Marshal(map[string]string{"KeyId": keyID, "PrivateKeyData": base64.StdEncoding.EncodeToString(der)})
	return b
}

func TestParseClientKey(t *testing.T) {
	good, _ := testKeys(t)
	legacy := exportPKCS12(t, good, testPassword, "-legacy") // RC2-40 certificates, 3DES key, SHA-1 MAC: KMS's shape
	des := exportPKCS12(t, good, testPassword, "-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1")
	modern := exportPKCS12(t, good, testPassword) // OpenSSL 3 default: PBES2/AES-256, SHA-256 MAC
	for _, tc := range []struct {
		name     string
		json     []byte
		password string
		class    func(error) bool
		inErr    string
	}{
		{name: "legacy", json: clientKeyJSON(testClientKeyID, legacy), password: testPassword},
		{name: "3DES", json: clientKeyJSON(testClientKeyID, des), password: testPassword},
		{name: "password with trailing newline", json: clientKeyJSON(testClientKeyID, legacy), password: testPassword + "\n"},
		{name: "password JSON", json: clientKeyJSON(testClientKeyID, legacy), password: `{"ClientKeyPassword": "` + testPassword + `"}`},
		{name: "wrong password", json: clientKeyJSON(testClientKeyID, legacy), password: "nope", class: errdefs.IsPermissionDenied, inErr: "password"},
		{name: "PBES2 unsupported", json: clientKeyJSON(testClientKeyID, modern), password: testPassword, class: errdefs.IsInvalidArgument, inErr: "unsupported algorithm"},
		{name: "not JSON", json: []byte(testPassword), class: errdefs.IsInvalidArgument, inErr: "not a JSON object"},
		{name: "missing KeyId", json: []byte(`{"PrivateKeyData":"AAAA"}`), class: errdefs.IsInvalidArgument, inErr: "KeyId missing"},
		{name: "KeyId with newline", json: []byte(`{"KeyId":"a\nb","PrivateKeyData":"AAAA"}`), class: errdefs.IsInvalidArgument, inErr: "KeyId"},
		{name: "missing PrivateKeyData", json: []byte(`{"KeyId":"k"}`), class: errdefs.IsInvalidArgument, inErr: "PrivateKeyData missing"},
		{name: "PrivateKeyData not base64", json: []byte(`{"KeyId":"k","PrivateKeyData":"***"}`), class: errdefs.IsInvalidArgument, inErr: "not base64"},
		{name: "PrivateKeyData not PKCS#12", json: clientKeyJSON("k", []byte("garbage")), class: errdefs.IsInvalidArgument, inErr: "PKCS#12"},
		{name: "PrivateKeyData wrong type", json: []byte(`{"KeyId":"k","PrivateKeyData":1}`), class: errdefs.IsInvalidArgument, inErr: "PrivateKeyData"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ck, err := ParseClientKey(tc.json, []byte(tc.password))
			if tc.class != nil {
				wantErr(t, err, tc.class, tc.inErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ck.KeyID != testClientKeyID || !ck.Key.Equal(good) {
				t.Fatalf("got key id %q, key equal %v", ck.KeyID, ck.Key.Equal(good))
			}
		})
	}
}

// TestFileCredentials decrypts through FileCredentials: the client key,
// password and instance CA files as [[credentials]] writes them.
func TestFileCredentials(t *testing.T) {
	f := newFakeInstance(t)
	good, _ := testKeys(t)
	f.keys[testClientKeyID] = &good.PublicKey
	blob := f.seal("key-1", testIV, []byte(marker))
	der := exportPKCS12(t, good, testPassword, "-legacy")
	write := func(dir, name string, b []byte) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	full := func() string {
		dir := t.TempDir()
		write(dir, "clientKey_"+testClientKeyID+".json", clientKeyJSON(testClientKeyID, der))
		write(dir, "password_"+testClientKeyID+".json", []byte(testPassword+"\n"))
		write(dir, "PrivateKmsCA_"+testInstance+".pem", f.caPEM())
		return dir
	}
	for _, tc := range []struct {
		name  string
		setup func(dir string)
		class func(error) bool
		inErr []string
	}{
		{name: "ok"},
		{name: "missing client key", setup: func(dir string) { os.Remove(filepath.Join(dir, "clientKey_"+testClientKeyID+".json")) },
			class: errdefs.IsFailedPrecondition, inErr: []string{"clientKey_" + testClientKeyID + ".json", "[[credentials]]"}},
		{name: "missing password", setup: func(dir string) { os.Remove(filepath.Join(dir, "password_"+testClientKeyID+".json")) },
			class: errdefs.IsFailedPrecondition, inErr: []string{"password_" + testClientKeyID + ".json"}},
		{name: "missing CA", setup: func(dir string) { os.Remove(filepath.Join(dir, "PrivateKmsCA_"+testInstance+".pem")) },
			class: errdefs.IsFailedPrecondition, inErr: []string{"PrivateKmsCA_" + testInstance + ".pem"}},
		{name: "wrong password", setup: func(dir string) { write(dir, "password_"+testClientKeyID+".json", []byte("wrong")) },
			class: errdefs.IsPermissionDenied, inErr: []string{"clientKey_" + testClientKeyID + ".json", "password"}},
		{name: "oversize client key", setup: func(dir string) {
			write(dir, "clientKey_"+testClientKeyID+".json", make([]byte, kms.MaxCredentialFile+1))
		},
			class: errdefs.IsInvalidArgument, inErr: []string{"larger than"}},
		{name: "symlink out of the directory", setup: func(dir string) {
			outside := filepath.Join(t.TempDir(), "pw")
			write(filepath.Dir(outside), "pw", []byte(testPassword))
			os.Remove(filepath.Join(dir, "password_"+testClientKeyID+".json"))
			if err := os.Symlink(outside, filepath.Join(dir, "password_"+testClientKeyID+".json")); err != nil {
				t.Fatal(err)
			}
		}, class: func(err error) bool { return err != nil }, inErr: []string{"password_" + testClientKeyID + ".json"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := full()
			if tc.setup != nil {
				tc.setup(dir)
			}
			p := newInstanceProvider(t, f, FileCredentials{Dir: dir})
			d, err := p.Decrypter(context.Background(), raw(t, instanceSettings()))
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.Decrypt(context.Background(), blob, "key-1", raw(t, ivAnn()))
			if tc.class == nil {
				if err != nil || string(got) != marker {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			wantErr(t, err, tc.class, tc.inErr...)
		})
	}
}

func TestRAMCredentialFiles(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "kms-credential", "aliyun")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	c := FileCredentials{Dir: dir, Root: root}
	ctx := context.Background()
	for _, tc := range []struct {
		name, content string
		ok            bool
	}{
		{"reference example", `{"ecs_ram_role_name": "EcsRamRoleTest", "region_id": "cn-beijing"}`, true},
		{"missing region", `{"ecs_ram_role_name": "EcsRamRoleTest"}`, false},
		{"role with slash", `{"ecs_ram_role_name": "a/../b", "region_id": "cn-beijing"}`, false},
		{"region with dot", `{"ecs_ram_role_name": "r", "region_id": "evil.com"}`, false},
		{"not an object", `[]`, false},
	} {
		t.Run("ecsRamRole "+tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(dir, "ecsRamRole.json"), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			r, err := c.ECSRAMRole(ctx)
			if tc.ok != (err == nil) {
				t.Fatalf("got %+v, %v", r, err)
			}
			if tc.ok && (r.RoleName != "EcsRamRoleTest" || r.RegionID != "cn-beijing") {
				t.Fatalf("got %+v", r)
			}
			if !tc.ok && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err = %v: wrong class", err)
			}
		})
	}
	tokenPath := kms.DefaultCredentialRoot + "/aliyun/sts"
	if err := os.MkdirAll(filepath.Join(root, "aliyun"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, content string
		ok            bool
	}{
		{"ok", "STS.ak:" + stsSecret + ":" + stsToken + "\n", true},
		{"two sections", "STS.ak:" + stsSecret, false},
		{"four sections", "a:b:c:d", false},
		{"empty secret", "STS.ak::" + stsToken, false},
		{"space in token", "STS.ak:" + stsSecret + ":a b", false},
	} {
		t.Run("sts token "+tc.name, func(t *testing.T) {
			if err := os.WriteFile(filepath.Join(root, "aliyun", "sts"), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := c.STSToken(ctx, tokenPath)
			if !tc.ok {
				wantErr(t, err, errdefs.IsInvalidArgument)
				return
			}
			if err != nil || got != (STSCredential{AccessKeyID: "STS.ak", AccessKeySecret: stsSecret, SecurityToken: stsToken}) {
				t.Fatalf("got %+v, %v", got, err)
			}
		})
	}
	if _, err := c.STSToken(ctx, "/etc/passwd"); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "token_path") {
		t.Fatalf("err = %v", err)
	}
}
