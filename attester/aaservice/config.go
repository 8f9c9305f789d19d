package aaservice

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/cova-project/cova/attester"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester/eventlog"
)

// Config is the AA configuration (aa.toml, which initdata carries and
// attester/initdata writes to /run/confidential-containers/initdata/aa.toml).
// Unknown keys are ignored, as upstream does.
type Config struct {
	TokenConfigs TokenConfigs   `toml:"token_configs"`
	Eventlog     EventlogConfig `toml:"eventlog_config"`
	Log          LogConfig      `toml:"log"`
}

// TokenConfigs says where GetToken gets tokens; nil sections are absent.
type TokenConfigs struct {
	KBS    *KBSConfig    `toml:"kbs"`
	CoCoAS *CoCoASConfig `toml:"coco_as"`
}

// KBSConfig is [token_configs.kbs].
type KBSConfig struct {
	// URL of the KBS (required in the section).
	URL string `toml:"url"`
	// Cert is an extra root CA (PEM); empty when absent.
	Cert string `toml:"cert"`
	// TEEKeyAlgorithm is the TEE key's algorithm; empty means the KBS
	// client's default (ECDH-ES+A256KW-P256).
	TEEKeyAlgorithm string `toml:"tee_key_algorithm"`
}

// CoCoASConfig is [token_configs.coco_as].
type CoCoASConfig struct {
	URL string `toml:"url"`
}

// EventlogConfig is [eventlog_config].
type EventlogConfig struct {
	// InitPCR is the PCR events go to by default (17; 23 on TPM-backed
	// attesters when aa.toml does not set it, see TPMEventlogPCR).
	InitPCR uint64 `toml:"init_pcr"`
	// InitPCRSet records that aa.toml set init_pcr.
	InitPCRSet bool `toml:"-"`
	// Enable switches the event log on (default off: ExtendRuntimeMeasurement
	// answers NOT_ENABLED).
	Enable bool `toml:"enable_eventlog"`
}

// LogConfig is [log].
type LogConfig struct {
	Level string `toml:"level"`
}

// DefaultConfig is the configuration without a file: no token sections,
// event log off at PCR 17, log level info.
func DefaultConfig() Config {
	return Config{
		Eventlog: EventlogConfig{InitPCR: eventlog.DefaultPCR},
		Log:      LogConfig{Level: "info"},
	}
}

// ParseConfig parses aa.toml; absent keys keep DefaultConfig's values.
func ParseConfig(b []byte) (Config, error) {
	c := DefaultConfig()
	md, err := toml.Decode(string(b), &c)
	if err != nil {
		return Config{}, fmt.Errorf("aa config: %w: %w", err, errdefs.ErrInvalidArgument)
	}
	if c.TokenConfigs.KBS != nil && c.TokenConfigs.KBS.URL == "" {
		return Config{}, fmt.Errorf("aa config: token_configs.kbs.url: missing: %w", errdefs.ErrInvalidArgument)
	}
	if c.TokenConfigs.CoCoAS != nil && c.TokenConfigs.CoCoAS.URL == "" {
		return Config{}, fmt.Errorf("aa config: token_configs.coco_as.url: missing: %w", errdefs.ErrInvalidArgument)
	}
	if md.IsDefined("eventlog_config", "init_pcr") && c.Eventlog.InitPCR == 0 {
		// 0 is a valid PCR, but Options treats 0 as "default"; refuse the
		// ambiguity rather than silently using 17.
		return Config{}, fmt.Errorf("aa config: eventlog_config.init_pcr: 0 is not supported: %w", errdefs.ErrInvalidArgument)
	}
	c.Eventlog.InitPCRSet = md.IsDefined("eventlog_config", "init_pcr")
	return c, nil
}

// TPMEventlogPCR is the event log register on TPM-backed attesters (tpm,
// az-snp-vtpm, az-tdx-vtpm): the reference's default PCR 17 belongs to the
// dynamic-launch range 17-22, which a TPM only lets locality 4 extend, and
// /dev/tpm0 is locality 0; PCR 23 is the application PCR every locality may
// extend and reset.
const TPMEventlogPCR = 23

// tpmBacked reports whether t keeps its runtime measurements in TPM PCRs.
func tpmBacked(t attester.Tee) bool {
	return t == attester.TeeTPM || t == attester.TeeAzSNPvTPM || t == attester.TeeAzTDXvTPM
}

// eventlogPCR returns the event log register for the primary TEE: the
// configured one, or TPMEventlogPCR on TPM-backed attesters when aa.toml
// left the default. A configured PCR 17-22 on a TPM-backed attester is an
// error (every extend would fail with TPM_RC_LOCALITY).
func (c EventlogConfig) eventlogPCR(t attester.Tee) (uint64, error) {
	if !tpmBacked(t) {
		return c.InitPCR, nil
	}
	if !c.InitPCRSet {
		return TPMEventlogPCR, nil
	}
	if c.InitPCR >= 17 && c.InitPCR <= 22 {
		return 0, fmt.Errorf("aa config: eventlog_config.init_pcr %d: %s cannot extend PCRs 17-22 from locality 0; use 23: %w", c.InitPCR, t, errdefs.ErrInvalidArgument)
	}
	return c.InitPCR, nil
}

// LoadConfig reads and parses the aa.toml at path; a missing file gives
// DefaultConfig.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return DefaultConfig(), nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("aa config: %w", err)
	}
	return ParseConfig(b)
}
