// Package kms is the Confidential Data Hub's key-management seam: the
// provider plugins that sealed secrets name in their "provider" member.
//
// An envelope sealed secret carries a data key wrapped by a KMS; the
// provider's Decrypter unwraps it (Decrypt(ciphertext, key_id,
// annotations)). A vault sealed secret names a secret held by a secret
// store; the provider's SecretGetter returns it (GetSecret(name,
// annotations)). Both are built per secret from the secret's public
// provider_settings (a region, an instance id…); private parameters such as
// access keys never travel in a sealed secret: providers read them from
// files that FetchCredentials wrote from the KBS ([[credentials]] in
// cdh.toml) under DefaultCredentialRoot.
//
// Provider names follow guest-components' confidential-data-hub/kms:
// "kbs" (vault only there; Cova also unwraps envelope keys with a KEK held by
// the KBS), "aws" (package cdh/kms/aws), "aliyun" (cdh/kms/aliyun) and
// "ehsm" (cdh/kms/ehsm). A Providers registry maps names, matched ASCII
// case-insensitively as the reference does, to implementations; an unknown
// name is an error wrapping errdefs.ErrNotImplemented that names it.
//
// No provider logs or returns secret material in errors: not data keys,
// not secrets, not credentials.
package kms

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/cova-project/cova/internal/textclip"

	"github.com/containerd/errdefs"
)

// Provider names used by sealed secrets.
const (
	ProviderKBS    = "kbs"
	ProviderAWS    = "aws"
	ProviderAliyun = "aliyun"
	ProviderEHSM   = "ehsm"
)

// Settings are a sealed secret's provider_settings: public parameters that
// select and configure a provider client (e.g. {"region":"eu-west-1"}).
// Values are kept as raw JSON; each provider decodes the members it knows.
type Settings map[string]json.RawMessage

// Annotations are a sealed secret's annotations: per-operation parameters
// (e.g. AWS "encryption_context", "version_stage"). Values are raw JSON
// because some are objects.
type Annotations map[string]json.RawMessage

// Decrypter unwraps an envelope secret's data key inside a KMS: it decrypts
// ciphertext (the decoded encrypted_key) with the key keyID names.
type Decrypter interface {
	Decrypt(ctx context.Context, ciphertext []byte, keyID string, annotations Annotations) ([]byte, error)
}

// SecretGetter returns a vault secret by name.
type SecretGetter interface {
	GetSecret(ctx context.Context, name string, annotations Annotations) ([]byte, error)
}

// Provider builds a provider's clients from a sealed secret's
// provider_settings. A provider that does not offer one of the two roles
// returns an error wrapping errdefs.ErrNotImplemented.
type Provider interface {
	Decrypter(ctx context.Context, settings Settings) (Decrypter, error)
	SecretGetter(ctx context.Context, settings Settings) (SecretGetter, error)
}

// Providers maps provider names (lower case) to implementations.
type Providers map[string]Provider

// Lookup returns the provider name names: an exact key, else the ASCII
// lower-cased one.
func (ps Providers) Lookup(name string) (Provider, error) {
	if p, ok := ps[name]; ok && p != nil {
		return p, nil
	}
	if p, ok := ps[strings.ToLower(name)]; ok && p != nil {
		return p, nil
	}
	return nil, fmt.Errorf("kms provider %q: %w", Clip(name), errdefs.ErrNotImplemented)
}

// Decrypter returns the named provider's decrypter for settings.
func (ps Providers) Decrypter(ctx context.Context, name string, settings Settings) (Decrypter, error) {
	p, err := ps.Lookup(name)
	if err != nil {
		return nil, err
	}
	d, err := p.Decrypter(ctx, settings)
	if err != nil {
		return nil, fmt.Errorf("kms provider %q: %w", Clip(name), err)
	}
	return d, nil
}

// SecretGetter returns the named provider's secret getter for settings.
func (ps Providers) SecretGetter(ctx context.Context, name string, settings Settings) (SecretGetter, error) {
	p, err := ps.Lookup(name)
	if err != nil {
		return nil, err
	}
	g, err := p.SecretGetter(ctx, settings)
	if err != nil {
		return nil, fmt.Errorf("kms provider %q: %w", Clip(name), err)
	}
	return g, nil
}

// ParseObject parses a JSON object (provider_settings or annotations) into
// a map of raw member values. null and absent are an empty map; anything
// else but an object is an error naming field.
func ParseObject(field string, raw []byte) (map[string]json.RawMessage, error) {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return map[string]json.RawMessage{}, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil || m == nil {
		return nil, fmt.Errorf("%s: must be a JSON object: %w", field, errdefs.ErrInvalidArgument)
	}
	return m, nil
}

// DecodeMembers decodes the members of obj that v's struct type names in
// its json tags (exact, case-sensitive names; unknown members are ignored as
// serde does) into v. field names obj in errors.
func DecodeMembers(field string, obj map[string]json.RawMessage, v any) error {
	known := map[string]json.RawMessage{}
	for _, name := range jsonNames(v) {
		if raw, ok := obj[name]; ok {
			known[name] = raw
		}
	}
	b, err := json.Marshal(known)
	if err != nil {
		return fmt.Errorf("%s: %w", field, errdefs.ErrInvalidArgument)
	}
	if err := json.Unmarshal(b, v); err != nil {
		// The decoder's text may quote values; name only the member.
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return fmt.Errorf("%s.%s: want %s: %w", field, Clip(te.Field), te.Type, errdefs.ErrInvalidArgument)
		}
		return fmt.Errorf("%s: malformed member: %w", field, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Clip bounds and sanitizes an identifier from a sealed secret or a remote
// service before it enters an error message (never use it for secret
// values).
func Clip(s string) string { return textclip.Printable(s, 128) }
