package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/cova-project/cova/imagepull"
)

func TestApplyCDHImage(t *testing.T) {
	var cfg imagepull.Config
	err := applyCDHImage(&cfg, `
[kbc]
name = "cc_kbc"
[image]
work_dir = "/run/kata-containers/image"
max_concurrent_layer_downloads_per_image = 5
extra_root_certificates = ["-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n"]
unknown_key = 1
[[image.registry_config.registry]]
prefix = "10.0.2.2:5000"
insecure = true
[[image.registry_config.registry.mirror]]
location = "mirror.example:5000"
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.WorkDir != "/run/kata-containers/image" || cfg.MaxConcurrentLayers != 5 || len(cfg.Registry.ExtraRootCAs) != 1 {
		t.Fatalf("cfg = %+v", cfg)
	}
	r := cfg.Registry.Registries
	if len(r) != 1 || r[0].Prefix != "10.0.2.2:5000" || !r[0].Insecure || len(r[0].Mirrors) != 1 || r[0].Mirrors[0].Location != "mirror.example:5000" {
		t.Fatalf("registries = %+v", r)
	}
	for name, bad := range map[string]string{
		"work dir outside /run": "[image]\nwork_dir = \"/etc\"\n",
		"relative work dir":     "[image]\nwork_dir = \"run/x\"\n",
		"too many layers":       "[image]\nmax_concurrent_layer_downloads_per_image = 1000\n",
		"not toml":              "[image\n",
	} {
		if err := applyCDHImage(&imagepull.Config{}, bad, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPullOptionsFromCDH(t *testing.T) {
	ctx := context.Background()
	// No policy and no KBS: plain pulls, no key provider.
	ip, err := parseImagePolicy("[image]\n")
	if err != nil {
		t.Fatal(err)
	}
	po, err := pullOptions(ip, nil, nil)(ctx)
	if err != nil || po.Verifier != nil || po.KeyProvider != nil {
		t.Fatalf("no policy: %+v %v", po, err)
	}
	// An inline policy becomes the verifier; a KBS gives the key provider.
	ip, err = parseImagePolicy(`[image]
image_security_policy = '{"default":[{"type":"reject"}]}'
`)
	if err != nil {
		t.Fatal(err)
	}
	po, err = pullOptions(ip, fakeResources{}, nil)(ctx)
	if err != nil || po.Verifier == nil || po.KeyProvider == nil {
		t.Fatalf("inline policy: %+v %v", po, err)
	}
	// The URI wins over the inline policy; a missing file fails the pull.
	ip, err = parseImagePolicy(`[image]
image_security_policy_uri = "file:///nonexistent/policy.json"
image_security_policy = '{"default":[{"type":"insecureAcceptAnything"}]}'
`)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pullOptions(ip, nil, nil)(ctx); err == nil {
		t.Fatal("a policy URI that cannot be read was ignored")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "policy.json")
	if err := os.WriteFile(p, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	ip, _ = parseImagePolicy("[image]\nimage_security_policy_uri = \"file://" + p + "\"\n")
	f := pullOptions(ip, nil, nil)
	a, err := f(ctx)
	if err != nil || a.Verifier == nil {
		t.Fatalf("file policy: %v", err)
	}
	b, _ := f(ctx)
	if a.Verifier != b.Verifier {
		t.Fatal("the policy is loaded again for every pull")
	}
	// A policy that does not parse is an error, not an open door.
	ip, _ = parseImagePolicy("[image]\nimage_security_policy = '{\"default\":[]}'\n")
	if _, err := pullOptions(ip, nil, nil)(ctx); err == nil {
		t.Fatal("an empty requirement list was accepted")
	}
}

type fakeResources struct{}

func (fakeResources) GetResource(context.Context, string) ([]byte, error) { return nil, nil }
