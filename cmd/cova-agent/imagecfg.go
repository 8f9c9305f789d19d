package main

import (
	"context"
	"fmt"
	"log/slog"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/BurntSushi/toml"

	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/ocicrypt"
	"github.com/cova-project/cova/imagepull/registry"
	"github.com/cova-project/cova/imagepull/sigpolicy"
)

// cdhImage is the subset of cdh.toml's [image] table the puller uses today
// (keys as guest-components' CDH reads them; unknown keys are ignored, as
// there). Signature policy, auth and proxy keys arrive with the CDH work.
type cdhImage struct {
	Image struct {
		PolicyURI           string               `toml:"image_security_policy_uri"`
		Policy              string               `toml:"image_security_policy"`
		SigstoreURI         string               `toml:"sigstore_config_uri"`
		WorkDir             string               `toml:"work_dir"`
		MaxConcurrentLayers int                  `toml:"max_concurrent_layer_downloads_per_image"`
		ExtraRootCerts      []string             `toml:"extra_root_certificates"`
		AuthURI             string               `toml:"authenticated_registry_credentials_uri"`
		Proxy               registry.ProxyConfig `toml:"image_pull_proxy"`
		RegistryConfig      struct {
			Registries []registry.Registry `toml:"registry"`
		} `toml:"registry_config"`
	} `toml:"image"`
}

// imagePolicy is where the image security policy comes from.
type imagePolicy struct {
	uri, inline, sigstoreURI string
}

// parseImagePolicy reads the policy keys of cdh.toml [image]; a URI wins
// over an inline policy, as in the reference.
func parseImagePolicy(cdhTOML string) (imagePolicy, error) {
	var c cdhImage
	if _, err := toml.Decode(cdhTOML, &c); err != nil {
		return imagePolicy{}, fmt.Errorf("cdh.toml: %w", err)
	}
	return imagePolicy{uri: c.Image.PolicyURI, inline: c.Image.Policy, sigstoreURI: c.Image.SigstoreURI}, nil
}

// pullOptions builds the per-pull verifier and key provider: the signature
// policy from cdh.toml (loaded once, on the first pull, so a kbs:/// policy
// needs the KBS only then) and CoCo keyprovider packets whose key-encryption
// keys come from res (nil: encrypted layers cannot be opened).
func pullOptions(ip imagePolicy, res imagepull.ResourceGetter, log *slog.Logger) func(context.Context) (imagepull.PullOptions, error) {
	var (
		mu       sync.Mutex
		verifier *sigpolicy.Verifier
	)
	return func(ctx context.Context) (imagepull.PullOptions, error) {
		var po imagepull.PullOptions
		if res != nil {
			po.KeyProvider = &ocicrypt.AttestationAgent{Resources: res}
		}
		if ip.uri == "" && ip.inline == "" {
			return po, nil // no policy configured: accept, as the reference does
		}
		mu.Lock()
		defer mu.Unlock()
		if verifier == nil {
			opts := sigpolicy.Options{Resources: res, Logger: log}
			var err error
			if ip.uri != "" {
				verifier, err = sigpolicy.Load(ctx, ip.uri, ip.sigstoreURI, opts)
			} else {
				var p *sigpolicy.Policy
				if p, err = sigpolicy.Parse([]byte(ip.inline)); err == nil {
					verifier = sigpolicy.New(p, opts)
				}
			}
			if err != nil {
				verifier = nil
				return po, fmt.Errorf("image security policy: %w", err)
			}
		}
		po.Verifier = verifier
		return po, nil
	}
}

// applyCDHImage overlays cdh.toml [image] settings (measured: they come from
// initdata) on the puller configuration.
func applyCDHImage(cfg *imagepull.Config, cdhTOML string, res imagepull.ResourceGetter) error {
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
	pc, err := im.Proxy.Config()
	if err != nil {
		return fmt.Errorf("cdh.toml [image.image_pull_proxy]: %w", err)
	}
	cfg.Registry.Proxy = pc
	if im.AuthURI != "" {
		if res == nil && !strings.HasPrefix(im.AuthURI, "file://") {
			return fmt.Errorf("cdh.toml [image] authenticated_registry_credentials_uri %q needs a KBS (aa.toml/cdh.toml [kbc])", im.AuthURI)
		}
		cfg.Registry.AuthLoader = imagepull.AuthLoader(res, im.AuthURI)
	}
	return nil
}
