package aaservice

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

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
	// InitPCR is the PCR events go to by default (17).
	InitPCR uint64 `toml:"init_pcr"`
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
	return c, nil
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
