package kms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"reflect"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kbs"
)

// ResourceGetter fetches KBS resources by URI (kbs:///repo/type/tag); the
// KBS client satisfies it through a one-line adapter around
// (*kbs.Client).Resource.
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// KBS is the "kbs" provider. As a SecretGetter (the reference's only use of
// it) the vault name is a resource URI fetched from the KBS. As a Decrypter
// it is a Cova extension: key_id is a kbs:///repo/type/tag resource holding
// a 32-byte AES-256 key encryption key, and the ciphertext is a 12-byte
// nonce followed by the AES-256-GCM encryption (ciphertext‖16-byte tag, no
// AAD) of the data key. provider_settings and annotations are ignored.
type KBS struct {
	Resources ResourceGetter
}

// Decrypter returns k itself.
func (k KBS) Decrypter(context.Context, Settings) (Decrypter, error) { return k, nil }

// SecretGetter returns k itself.
func (k KBS) SecretGetter(context.Context, Settings) (SecretGetter, error) { return k, nil }

// GetSecret fetches the resource name names.
func (k KBS) GetSecret(ctx context.Context, name string, _ Annotations) ([]byte, error) {
	if _, err := kbs.ParseResourceURI(name); err != nil {
		return nil, fmt.Errorf("vault name: %w", err)
	}
	if k.Resources == nil {
		return nil, fmt.Errorf("vault %q: no resource getter configured: %w", Clip(name), errdefs.ErrFailedPrecondition)
	}
	out, err := k.Resources.GetResource(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("fetching vault secret %q: %w", Clip(name), err)
	}
	return out, nil
}

// Decrypt fetches the KEK from the KBS and unwraps the data key.
func (k KBS) Decrypt(ctx context.Context, ciphertext []byte, keyID string, _ Annotations) ([]byte, error) {
	u, err := kbs.ParseResourceURI(keyID)
	if err != nil {
		return nil, fmt.Errorf("key_id: %w", err)
	}
	if u.Plugin != kbs.ResourcePlugin {
		return nil, fmt.Errorf("key_id: want a kbs:///repo/type/tag resource: %w", errdefs.ErrInvalidArgument)
	}
	if k.Resources == nil {
		return nil, fmt.Errorf("no resource getter configured: %w", errdefs.ErrFailedPrecondition)
	}
	kek, err := k.Resources.GetResource(ctx, keyID)
	if err != nil {
		return nil, fmt.Errorf("fetching key encryption key: %w", err)
	}
	defer clear(kek)
	if len(kek) != 32 {
		return nil, fmt.Errorf("key encryption key is %d bytes, want 32: %w", len(kek), errdefs.ErrFailedPrecondition)
	}
	if len(ciphertext) < 12+16 {
		return nil, fmt.Errorf("encrypted_key: shorter than nonce and tag: %w", errdefs.ErrInvalidArgument)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("key encryption key: %w", errdefs.ErrInvalidArgument)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("key encryption key: %w", errdefs.ErrInternal)
	}
	dek, err := gcm.Open(nil, ciphertext[:12], ciphertext[12:], nil)
	if err != nil {
		return nil, fmt.Errorf("encrypted_key: authentication failed: %w", errdefs.ErrInvalidArgument)
	}
	return dek, nil
}

// jsonNames lists the json member names of the struct v points to.
func jsonNames(v any) []string {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		if name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}
