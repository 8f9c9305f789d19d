package main

import (
	"log/slog"

	"github.com/cova-project/cova/agent/config"
	"github.com/cova-project/cova/attester/aaservice"
	"github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/cdh/kms"
)

// kbcFallback applies guest-components' kernel command line fallbacks to a
// guest that booted without initdata: env AA_KBC_PARAMS (the PID 1
// environment also comes from the command line), else agent.aa_kbc_params
// ("cc_kbc::<url>": the KBS of aa.toml [token_configs.kbs] and cdh.toml
// [kbc]), and cdh.kbs_resources ([[credentials]]).
//
// Stricter than the reference, which falls back per missing file: with
// initdata present, the measured document is the whole configuration and
// the command line is ignored (a warning says so), so a host cannot add a
// KBS the workload owner left out. Without initdata there is nothing
// measured to prefer; the command line itself is covered by the launch
// measurement (TDX RTMR, SNP kernel hashes, the vTPM's PCR 9 under OVMF:
// cova-rootfs refvalues), which a KBS policy must check. Malformed values
// are ignored with a warning (no KBS is the safe outcome); credential paths
// must lie under the CDH's credential root.
func kbcFallback(log *slog.Logger, cmdline string, getenv func(string) string, haveInitdata bool, ac *aaservice.Config, cs *cdhSettings) {
	log = log.With("component", "kbc-fallback")
	gc, err := config.ParseGuestComponents(cmdline)
	env := getenv(config.EnvAAKBCParams)
	if err == nil && gc.KBC == "" && len(gc.Credentials) == 0 && env == "" {
		return
	}
	if haveInitdata {
		log.Warn("kernel command line KBS settings ignored: initdata configures this guest",
			"keys", []string{config.KeyAAKBCParams, config.KeyCDHKBSResources, config.EnvAAKBCParams})
		return
	}
	if err != nil {
		log.Warn("kernel command line KBS settings ignored", "err", err)
		return
	}
	if env != "" {
		kbc, u, err := config.ParseAAKBCParams(env)
		if err != nil {
			log.Warn("kernel command line KBS settings ignored", "err", config.EnvAAKBCParams+": "+err.Error())
			return
		}
		gc.KBC, gc.KBSURL = kbc, u
	}
	if gc.KBC != config.KBCCC {
		if len(gc.Credentials) > 0 {
			log.Warn(config.KeyCDHKBSResources + " ignored: no KBS (agent.aa_kbc_params names none)")
		}
		return
	}
	ac.TokenConfigs.KBS = &aaservice.KBSConfig{URL: gc.KBSURL}
	cs.KBC.Name, cs.KBC.URL = config.KBCCC, gc.KBSURL
	for i, c := range gc.Credentials {
		if _, err := kbs.ParseResourceURI(c.URI); err != nil {
			log.Warn(config.KeyCDHKBSResources+" item ignored", "item", i, "err", err)
			continue
		}
		if _, err := kms.ValidateCredentialPath(kms.DefaultCredentialRoot, c.Path); err != nil {
			log.Warn(config.KeyCDHKBSResources+" item ignored", "item", i, "err", err)
			continue
		}
		cs.Credentials = append(cs.Credentials, kms.Credential{ResourceURI: c.URI, Path: c.Path})
	}
	log.Warn("KBS taken from the kernel command line (no initdata): only the launch measurement vouches for it",
		"kbs", gc.KBSURL, "credentials", len(cs.Credentials))
}
