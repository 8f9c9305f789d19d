package main

import (
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
`)
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
		if err := applyCDHImage(&imagepull.Config{}, bad); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
