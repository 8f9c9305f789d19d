package kbs_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/cova-project/cova/attester/aaservice"
	"github.com/cova-project/cova/attester/sample"
	kbsclient "github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/protocols/aa"
	devkbs "github.com/cova-project/cova/test/kbs"
)

// TestAAGetTokenFromKBS wires the KBS client into the Attestation Agent as
// the agent does from aa.toml: GetToken attests to the (dev) KBS and
// returns its token with the TEE key pair, as guest-components' AA does.
func TestAAGetTokenFromKBS(t *testing.T) {
	srv := devkbs.StartTB(t, devkbs.Options{})
	c, err := kbsclient.New(kbsclient.Config{URL: srv.URL(), ExtraRootCAs: string(srv.CACertPEM()), Primary: sample.New(), InitData: []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n")})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := aaservice.New(aaservice.Options{Primary: sample.New(), Tokens: c})
	if err != nil {
		t.Fatal(err)
	}
	r, err := svc.GetToken(context.Background(), &aa.GetTokenRequest{TokenType: "kbs"})
	if err != nil {
		t.Fatal(err)
	}
	var tok struct {
		Token      string `json:"token"`
		TEEKeypair string `json:"tee_keypair"`
	}
	if err := json.Unmarshal(r.Token, &tok); err != nil || tok.Token == "" || tok.TEEKeypair == "" {
		t.Fatalf("GetToken answer %q: %v", r.Token, err)
	}
	if _, err := kbsclient.ParseToken(tok.Token); err != nil {
		t.Fatalf("token does not parse: %v", err)
	}
	if _, err := svc.GetToken(context.Background(), &aa.GetTokenRequest{TokenType: "coco_as"}); err == nil {
		t.Fatal("coco_as token without a CoCo AS configured")
	}
}
