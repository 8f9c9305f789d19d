package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/cova-project/cova/agent"
	"github.com/cova-project/cova/agent/guestpull"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/aaservice"
	cdhapi "github.com/cova-project/cova/cdh/api"
	"github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/cdh/kms"
	"github.com/cova-project/cova/cdh/kms/aliyun"
	"github.com/cova-project/cova/cdh/kms/aws"
	"github.com/cova-project/cova/cdh/kms/ehsm"
	cdhrest "github.com/cova-project/cova/cdh/rest"
	"github.com/cova-project/cova/cdh/sealed"
	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/imagepull/ocicrypt"
)

// cdhSettings is the part of cdh.toml the embedded CDH reads: from initdata
// (measured), or, in a guest without initdata, the reference's kernel
// command line fallbacks (kbcFallback).
type cdhSettings struct {
	Socket string `toml:"socket"`
	KBC    struct {
		Name    string `toml:"name"`
		URL     string `toml:"url"`
		KBSCert string `toml:"kbs_cert"`
	} `toml:"kbc"`
	Credentials                  []kms.Credential `toml:"credentials"`
	SkipSealedSecretVerification bool             `toml:"skip_sealed_secret_verification"`
}

// parseCDHSettings reads cdh.toml ("" is the defaults).
func parseCDHSettings(text string) (cdhSettings, error) {
	var s cdhSettings
	if text == "" {
		return s, nil
	}
	if _, err := toml.Decode(text, &s); err != nil {
		return s, fmt.Errorf("cdh.toml: %w", err)
	}
	if s.Socket != "" {
		p, ok := strings.CutPrefix(s.Socket, "unix://")
		if !ok || !filepath.IsAbs(p) || filepath.Clean(p) != p {
			return s, fmt.Errorf("cdh.toml socket %q: want unix:///absolute/path", s.Socket)
		}
	}
	switch s.KBC.Name {
	case "", "cc_kbc":
	case "offline_fs_kbc":
		if s.KBC.URL != "" {
			return s, fmt.Errorf("cdh.toml [kbc]: offline_fs_kbc takes no url")
		}
	default:
		return s, fmt.Errorf("cdh.toml [kbc] name %q: want cc_kbc", s.KBC.Name)
	}
	for i, c := range s.Credentials {
		if _, err := kms.ValidateCredentialPath(kms.DefaultCredentialRoot, c.Path); err != nil {
			return s, fmt.Errorf("cdh.toml [[credentials]][%d]: %w", i, err)
		}
	}
	return s, nil
}

// cdhDeps is what the embedded CDH serves with.
type cdhDeps struct {
	resources imagepull.ResourceGetter // the KBS; nil without one
	aa        *aaservice.Service
	puller    cdhapi.ImagePuller
	mounter   cdhapi.SecureMounter
}

// newUnsealer builds the sealed-secret unsealer: signatures verified unless
// measured cdh.toml says otherwise, envelope DEKs from the KBS or the aws,
// aliyun or ehsm KMS (whose credentials the [[credentials]] fetch delivers;
// unsealing waits for that fetch). credRoot is where credentials land.
func newUnsealer(ctx context.Context, log *slog.Logger, cs cdhSettings, resources imagepull.ResourceGetter, credRoot string) func(context.Context, string) ([]byte, error) {
	if resources == nil {
		return nil
	}
	awsKMS, err := aws.New(aws.Config{
		Credentials: aws.FileCredentials(filepath.Join(credRoot, "kms-credential", "aws", "credential.json")),
		Logger:      log.With("component", "kms-aws"),
	})
	providers := kms.Providers{kms.ProviderKBS: kms.KBS{Resources: resources}}
	if err == nil {
		providers[kms.ProviderAWS] = awsKMS
	} else {
		log.Warn("aws KMS provider unavailable", "err", err)
	}
	aliyunKMS, err := aliyun.New(aliyun.Config{
		Credentials: aliyun.FileCredentials{Dir: filepath.Join(credRoot, "kms-credential", "aliyun"), Root: credRoot},
		Logger:      log.With("component", "kms-aliyun"),
	})
	if err == nil {
		providers[kms.ProviderAliyun] = aliyunKMS
	} else {
		log.Warn("aliyun KMS provider unavailable", "err", err)
	}
	ehsmKMS, err := ehsm.New(ehsm.Config{
		Credentials: ehsm.CredentialDir(filepath.Join(credRoot, "kms-credential", "ehsm")),
		Logger:      log.With("component", "kms-ehsm"),
	})
	if err == nil {
		providers[kms.ProviderEHSM] = ehsmKMS
	} else {
		log.Warn("ehsm KMS provider unavailable", "err", err)
	}
	if cs.SkipSealedSecretVerification {
		log.Warn("sealed secret signatures are NOT verified (skip_sealed_secret_verification in measured cdh.toml)")
	}
	u := sealed.New(resources,
		sealed.WithSkipVerification(cs.SkipSealedSecretVerification),
		sealed.WithProviders(providers),
		sealed.WithLogger(log.With("component", "sealed")))
	creds := cs.Credentials
	if credRoot != kms.DefaultCredentialRoot {
		// Host mode: the same layout under the agent's state root.
		creds = make([]kms.Credential, len(cs.Credentials))
		for i, c := range cs.Credentials {
			rel, _ := kms.ValidateCredentialPath(kms.DefaultCredentialRoot, c.Path) // checked by parseCDHSettings
			creds[i] = kms.Credential{ResourceURI: c.ResourceURI, Path: filepath.Join(credRoot, rel)}
		}
	}
	fetched := make(chan struct{})
	if len(creds) == 0 {
		close(fetched)
	} else {
		// In the background: a slow or absent KBS must not hold the
		// listener back; what needs the credentials waits for them.
		go func() {
			defer close(fetched)
			if err := kms.FetchCredentials(ctx, resources, creds, credRoot); err != nil {
				log.Error("cdh.toml [[credentials]] not fetched: KMS providers that need them will fail", "err", err)
				return
			}
			log.Info("credentials fetched", "count", len(creds))
		}()
	}
	return func(ctx context.Context, secret string) ([]byte, error) {
		select {
		case <-fetched:
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for [[credentials]]: %w", ctx.Err())
		}
		return u.Unseal(ctx, secret)
	}
}

// startCDH serves the CDH ttrpc services (and, in a guest, the REST API on
// 127.0.0.1:8006) in process.
func startCDH(ctx context.Context, base *slog.Logger, vm bool, stateRoot, restFeature string, cs cdhSettings, d cdhDeps, unseal func(context.Context, string) ([]byte, error)) error {
	log := base.With("component", "cdh")
	cfg := cdhapi.Config{ImagePuller: d.puller, SecureMounter: d.mounter, Logger: log}
	if d.resources != nil {
		cfg.Resources = d.resources
		res := d.resources
		cfg.KeyUnwrapper = cdhapi.KeyUnwrapperFunc(func(ctx context.Context, p []byte) ([]byte, error) {
			return ocicrypt.UnwrapPacket(ctx, res, p)
		})
	}
	if unseal != nil {
		cfg.Unsealer = cdhapi.UnsealerFunc(unseal)
	}
	if !vm {
		// Host mode: everything under the agent's own state root.
		cfg.BundleRoots = []string{filepath.Join(stateRoot, "kata-containers")}
		cfg.MountRoots = cfg.BundleRoots
	}
	srv, err := cdhapi.New(cfg)
	if err != nil {
		return fmt.Errorf("cdh api: %w", err)
	}
	sock := cdhapi.DefaultSocket
	if cs.Socket != "" {
		sock = strings.TrimPrefix(cs.Socket, "unix://")
	}
	if !vm {
		sock = filepath.Join(stateRoot, "cdh.sock")
	}
	if err := srv.Start(ctx, sock); err != nil {
		return fmt.Errorf("cdh api on %s: %w", sock, err)
	}
	log.Info("CDH API listening", "addr", "unix://"+sock, "kbs", d.resources != nil)
	if !vm {
		return nil // 127.0.0.1:8006 is not ours to take on a development host
	}
	rcfg := cdhrest.Config{Feature: restFeature, AA: d.aa, EventLog: d.aa.EventLog, Version: agent.Version, Logger: base.With("component", "rest")}
	if d.resources != nil {
		rcfg.Resources = d.resources
	}
	rs, err := cdhrest.New(rcfg)
	if err != nil {
		return fmt.Errorf("rest api: %w", err)
	}
	addr, err := rs.Start(ctx, cdhrest.DefaultAddr)
	if err != nil {
		return fmt.Errorf("rest api: %w", err)
	}
	log.Info("REST API listening", "addr", addr.String(), "features", restFeature)
	return nil
}

// newKBSClient builds the KBS client from measured config: aa.toml's
// [token_configs.kbs] names the KBS the guest attests to (tokens), cdh.toml
// [kbc] url the KBS resources come from (passport mode when they differ);
// either alone serves both. Both certificates are trusted. No KBS: nil.
func newKBSClient(base *slog.Logger, ac aaservice.Config, cs cdhSettings, primary attester.Attester, additional []attester.Attester, initdataTOML []byte) (*kbs.Client, error) {
	var tokenURL, certs, alg string
	if k := ac.TokenConfigs.KBS; k != nil {
		tokenURL, certs, alg = k.URL, k.Cert, k.TEEKeyAlgorithm
	}
	resURL := cs.KBC.URL
	if tokenURL == "" {
		tokenURL = resURL
	}
	if tokenURL == "" {
		return nil, nil
	}
	if cs.KBC.KBSCert != "" {
		certs = strings.TrimSpace(certs + "\n" + cs.KBC.KBSCert)
	}
	kc, err := kbs.New(kbs.Config{
		URL: tokenURL, ResourceURL: resURL, ExtraRootCAs: certs, KeyAlgorithm: kbs.KeyAlgorithm(alg),
		Primary: primary, Additional: additional, InitData: initdataTOML,
		Logger: base.With("component", "kbs"),
	})
	if err != nil {
		return nil, fmt.Errorf("KBS from aa.toml [token_configs.kbs] / cdh.toml [kbc]: %w", err)
	}
	if resURL != "" && resURL != tokenURL {
		base.Info("passport mode: token from one KBS, resources from another", "component", "kbs", "token_kbs", tokenURL, "resource_kbs", resURL)
	}
	return kc, nil
}

// cdhPuller serves the CDH's PullImage with the agent's puller: the same
// signature policy and layer keys as guest pull, and the same PullImage
// measurement before the rootfs is used.
func cdhPuller(p *imagepull.Puller, opts func(context.Context) (imagepull.PullOptions, error), measure guestpull.MeasureFunc) cdhapi.ImagePuller {
	return cdhapi.ImagePullerFunc(func(ctx context.Context, imageURL, bundlePath string) (string, error) {
		po, err := opts(ctx)
		if err != nil {
			return "", fmt.Errorf("image pull settings: %w", err)
		}
		digest, err := p.PullImageWith(ctx, imageURL, bundlePath, po)
		if err != nil {
			return "", err
		}
		if measure != nil {
			content := guestpull.PullImageEvent(imageURL, digest)
			if err := measure(ctx, "github.com/confidential-containers", "PullImage", content); err != nil {
				_ = p.ReleaseBundle(bundlePath)
				return "", fmt.Errorf("record PullImage measurement for %s: %w", imageURL, err)
			}
		}
		return digest, nil
	})
}
