package main

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/registry"
)

// cdhImage is the subset of cdh.toml's [image] table the puller uses today
// (keys as guest-components' CDH reads them; unknown keys are ignored, as
// there). Signature policy, auth and proxy keys arrive with the CDH work.
type cdhImage struct {
	Image struct {
		WorkDir             string   `toml:"work_dir"`
		MaxConcurrentLayers int      `toml:"max_concurrent_layer_downloads_per_image"`
		ExtraRootCerts      []string `toml:"extra_root_certificates"`
		RegistryConfig      struct {
			Registries []registry.Registry `toml:"registry"`
		} `toml:"registry_config"`
	} `toml:"image"`
}

// applyCDHImage overlays cdh.toml [image] settings (measured: they come from
// initdata) on the puller configuration.
func applyCDHImage(cfg *imagepull.Config, cdhTOML string) error {
	var c cdhImage
	if _, err := toml.Decode(cdhTOML, &c); err != nil {
		return fmt.Errorf("cdh.toml: %w", err)
	}
	im := c.Image
	if im.WorkDir != "" {
		wd := path.Clean(im.WorkDir)
		if !filepath.IsAbs(wd) || !strings.HasPrefix(wd, "/run/") {
			return fmt.Errorf("cdh.toml [image] work_dir %q must be under /run", im.WorkDir)
		}
		cfg.WorkDir = wd
	}
	if im.MaxConcurrentLayers < 0 || im.MaxConcurrentLayers > 64 {
		return fmt.Errorf("cdh.toml [image] max_concurrent_layer_downloads_per_image %d is outside 0..64", im.MaxConcurrentLayers)
	}
	cfg.MaxConcurrentLayers = im.MaxConcurrentLayers
	for _, pem := range im.ExtraRootCerts {
		cfg.Registry.ExtraRootCAs = append(cfg.Registry.ExtraRootCAs, []byte(pem))
	}
	cfg.Registry.Registries = append(cfg.Registry.Registries, im.RegistryConfig.Registries...)
	return nil
}
