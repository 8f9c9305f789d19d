package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester/aaservice"
	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/cdh/kms"
	"github.com/cova-project/cova/cdh/sealed/sealedtest"
	devkbs "github.com/cova-project/cova/test/kbs"
)

func TestParseCDHSettings(t *testing.T) {
	s, err := parseCDHSettings(`socket = "unix:///run/kata-containers/cdh/cdh.sock"
skip_sealed_secret_verification = true
[kbc]
name = "cc_kbc"
url = "https://kbs:8080"
[[credentials]]
resource_uri = "kbs:///default/aws/cred"
path = "/run/confidential-containers/cdh/kbs/kms-credential/aws/credential.json"
`)
	if err != nil {
		t.Fatal(err)
	}
	if s.Socket != "unix:///run/kata-containers/cdh/cdh.sock" || !s.SkipSealedSecretVerification || s.KBC.URL != "https://kbs:8080" || len(s.Credentials) != 1 {
		t.Fatalf("parsed %+v", s)
	}
	if s, err := parseCDHSettings(""); err != nil || s.SkipSealedSecretVerification || s.Socket != "" {
		t.Fatalf("empty cdh.toml: %+v, %v", s, err)
	}
	for _, tc := range []struct{ name, doc, text string }{
		{"relative socket", `socket = "unix://run/cdh.sock"`, "socket"},
		{"tcp socket", `socket = "tcp://127.0.0.1:1"`, "socket"},
		{"unclean socket", `socket = "unix:///run/../etc/cdh.sock"`, "socket"},
		{"kbc name", "[kbc]\nname = \"sample_kbc\"", "[kbc] name"},
		{"offline with url", "[kbc]\nname = \"offline_fs_kbc\"\nurl = \"http://x\"", "offline_fs_kbc takes no url"},
		{"credential outside the root", "[[credentials]]\nresource_uri = \"kbs:///a/b/c\"\npath = \"/etc/shadow\"", "[[credentials]][0]"},
		{"not toml", "socket = ", "cdh.toml"},
	} {
		if _, err := parseCDHSettings(tc.doc); err == nil || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.text)
		}
	}
}

// TestUnsealerCredentialsAndSkip drives newUnsealer against the dev KBS:
// the [[credentials]] are fetched in the background to the credential root
// (host mode maps the guest path under it) and an unseal waits for them;
// a vault secret signed by a stranger is refused unless measured cdh.toml
// says skip_sealed_secret_verification, which nothing else can set.
func TestUnsealerCredentialsAndSkip(t *testing.T) {
	const (
		dbPass = "db-password-marker-3c07"
		cred   = `{"access_key_id":"AKIDEXAMPLE","secret_access_key":"marker-secret-d41e"}`
		keyKid = "kbs:///default/sealed-secret-key/1"
	)
	signer, err := sealedtest.NewSigner()
	if err != nil {
		t.Fatal(err)
	}
	k := devkbs.StartTB(t, devkbs.Options{Delay: 200 * time.Millisecond, Resources: map[string][]byte{
		"default/sealed-secret-key/1": signer.JWK,
		"default/secret/db-password":  []byte(dbPass),
		"default/aws/cred":            []byte(cred),
	}})
	kc, err := kbs.New(kbs.Config{URL: k.URL(), ExtraRootCAs: string(k.CACertPEM()), Primary: sample.New()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kc.Close)
	signed, err := signer.Vault(keyKid, "kbs:///default/secret/db-password")
	if err != nil {
		t.Fatal(err)
	}
	stranger, _ := sealedtest.NewSigner()
	forged, err := stranger.Vault(keyKid, "kbs:///default/secret/db-password")
	if err != nil {
		t.Fatal(err)
	}
	guestPath := kms.DefaultKMSCredentialDir + "/aws/credential.json"

	for _, skip := range []bool{false, true} {
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, nil))
		root := t.TempDir()
		cs := cdhSettings{SkipSealedSecretVerification: skip, Credentials: []kms.Credential{{ResourceURI: "kbs:///default/aws/cred", Path: guestPath}}}
		unseal := newUnsealer(context.Background(), log, cs, kbsResources{kc}, root)
		got, err := unseal(context.Background(), signed)
		if err != nil || string(got) != dbPass {
			t.Fatalf("skip=%v: signed secret: %q, %v", skip, got, err)
		}
		// Unsealing waited for the credentials: they are in place.
		b, err := os.ReadFile(filepath.Join(root, "kms-credential", "aws", "credential.json"))
		if err != nil || string(b) != cred {
			t.Fatalf("skip=%v: credential file: %q, %v", skip, b, err)
		}
		got, err = unseal(context.Background(), forged)
		switch {
		case skip && (err != nil || string(got) != dbPass):
			t.Fatalf("skip=true: a stranger's signature should not matter: %q, %v", got, err)
		case !skip && (err == nil || !errors.Is(err, errdefs.ErrPermissionDenied) && !errdefs.IsInvalidArgument(err) || strings.Contains(err.Error(), dbPass)):
			t.Fatalf("skip=false: forged secret: %q, %v", got, err)
		}
		if strings.Contains(logs.String(), dbPass) || strings.Contains(logs.String(), "marker-secret-d41e") {
			t.Fatalf("a secret reached the log:\n%s", logs.String())
		}
	}

	// The host cannot turn verification off: neither the command line nor
	// the environment sets it.
	var ac aaservice.Config
	var cs cdhSettings
	kbcFallback(slog.New(slog.DiscardHandler), "agent.aa_kbc_params=cc_kbc::http://kbs skip_sealed_secret_verification=true cdh.skip_sealed_secret_verification=true agent.skip_sealed_secret_verification=true",
		func(k string) string {
			if k == "SKIP_SEALED_SECRET_VERIFICATION" {
				return "true"
			}
			return ""
		}, false, &ac, &cs)
	if cs.KBC.URL != "http://kbs" {
		t.Fatalf("the fallback did not apply (%+v): the check below would prove nothing", cs.KBC)
	}
	if cs.SkipSealedSecretVerification {
		t.Fatal("the kernel command line or the environment turned sealed-secret verification off")
	}
}
