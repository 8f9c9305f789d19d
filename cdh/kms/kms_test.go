package kms

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

const marker = "SECRET-MARKER-91c2"

// mapGetter serves resources from memory and records fetches.
type mapGetter struct {
	m     map[string][]byte
	calls []string
}

func (g *mapGetter) GetResource(_ context.Context, uri string) ([]byte, error) {
	g.calls = append(g.calls, uri)
	v, ok := g.m[uri]
	if !ok {
		return nil, fmt.Errorf("resource %q: %w", uri, errdefs.ErrNotFound)
	}
	return append([]byte(nil), v...), nil
}

// fakeProvider records the settings it was built with.
type fakeProvider struct {
	settings Settings
	noGetter bool
}

func (f *fakeProvider) Decrypter(_ context.Context, s Settings) (Decrypter, error) {
	f.settings = s
	return fakeClient{}, nil
}

func (f *fakeProvider) SecretGetter(_ context.Context, s Settings) (SecretGetter, error) {
	if f.noGetter {
		return nil, fmt.Errorf("no vault: %w", errdefs.ErrNotImplemented)
	}
	f.settings = s
	return fakeClient{}, nil
}

type fakeClient struct{}

func (fakeClient) Decrypt(context.Context, []byte, string, Annotations) ([]byte, error) {
	return []byte("dek"), nil
}

func (fakeClient) GetSecret(context.Context, string, Annotations) ([]byte, error) {
	return []byte("secret"), nil
}

func TestProviders(t *testing.T) {
	fp := &fakeProvider{}
	ps := Providers{"aws": fp, "ehsm": &fakeProvider{noGetter: true}, "nil": nil}
	for _, tc := range []struct {
		name, provider string
		getter         bool
		class          func(error) bool
	}{
		{"decrypter", "aws", false, nil},
		{"getter", "aws", true, nil},
		{"case-insensitive", "AWS", false, nil},
		{"mixed case", "Aws", true, nil},
		{"unknown", "aliyun", false, errdefs.IsNotImplemented},
		{"unknown getter", "vault9", true, errdefs.IsNotImplemented},
		{"empty", "", false, errdefs.IsNotImplemented},
		{"nil entry", "nil", false, errdefs.IsNotImplemented},
		{"role not offered", "ehsm", true, errdefs.IsNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := Settings{"region": json.RawMessage(`"r"`)}
			var err error
			if tc.getter {
				_, err = ps.SecretGetter(context.Background(), tc.provider, s)
			} else {
				_, err = ps.Decrypter(context.Background(), tc.provider, s)
			}
			if tc.class == nil {
				if err != nil {
					t.Fatal(err)
				}
				if string(fp.settings["region"]) != `"r"` {
					t.Fatalf("settings not passed: %v", fp.settings)
				}
				return
			}
			if err == nil || !tc.class(err) || !strings.Contains(err.Error(), fmt.Sprintf("%q", tc.provider)) {
				t.Fatalf("err = %v, want class and the provider name", err)
			}
		})
	}
	var none Providers
	if _, err := none.Decrypter(context.Background(), "aws", nil); !errdefs.IsNotImplemented(err) {
		t.Fatalf("nil registry: %v", err)
	}
}

func TestParseObject(t *testing.T) {
	for _, tc := range []struct {
		in   string
		keys int
		ok   bool
	}{
		{``, 0, true},
		{`null`, 0, true},
		{`{}`, 0, true},
		{`{"a":1,"b":{"c":"d"}}`, 2, true},
		{`[]`, 0, false},
		{`"x"`, 0, false},
		{`{`, 0, false},
	} {
		t.Run(tc.in, func(t *testing.T) {
			m, err := ParseObject("annotations", []byte(tc.in))
			if tc.ok != (err == nil) || (err == nil && len(m) != tc.keys) {
				t.Fatalf("m = %v, err = %v", m, err)
			}
			if err != nil && (!errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "annotations")) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

func TestDecodeMembers(t *testing.T) {
	var v struct {
		Region string            `json:"region"`
		Ctx    map[string]string `json:"encryption_context"`
	}
	obj := map[string]json.RawMessage{"region": json.RawMessage(`"eu"`), "Region": json.RawMessage(`"evil"`), "other": json.RawMessage(`[1]`),
		"encryption_context": json.RawMessage(`{"a":"b"}`)}
	if err := DecodeMembers("provider_settings", obj, &v); err != nil || v.Region != "eu" || v.Ctx["a"] != "b" {
		t.Fatalf("v = %+v, err = %v", v, err)
	}
	// Exact names: "Region" alone does not bind.
	var w struct {
		Region string `json:"region"`
	}
	if err := DecodeMembers("s", map[string]json.RawMessage{"Region": json.RawMessage(`"x"`)}, &w); err != nil || w.Region != "" {
		t.Fatalf("case-folded member bound: %+v %v", w, err)
	}
	err := DecodeMembers("s", map[string]json.RawMessage{"region": json.RawMessage(`{"secret":"` + marker + `"}`)}, &w)
	if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "s.region") || strings.Contains(err.Error(), marker) {
		t.Fatalf("err = %v", err)
	}
}

func wrapKey(t *testing.T, kek, dek []byte) []byte {
	t.Helper()
	b, _ := aes.NewCipher(kek)
	g, _ := cipher.NewGCM(b)
	nonce := make([]byte, 12)
	rand.Read(nonce)
	return append(nonce, g.Seal(nil, nonce, dek, nil)...)
}

func TestKBSProvider(t *testing.T) {
	kek := bytes.Repeat([]byte{1}, 32)
	other := bytes.Repeat([]byte{2}, 32)
	dek := bytes.Repeat([]byte{9}, 32)
	wrapped := wrapKey(t, kek, dek)
	tampered := append([]byte(nil), wrapped...)
	tampered[20] ^= 1
	res := map[string][]byte{
		"kbs:///default/kek/1":     kek,
		"kbs:///default/kek/other": other,
		"kbs:///default/kek/short": {1, 2, 3},
		"kbs:///default/secret/1":  []byte(marker),
	}
	k := KBS{Resources: &mapGetter{m: res}}
	for _, tc := range []struct {
		name  string
		ct    []byte
		keyID string
		class func(error) bool
	}{
		{"ok", wrapped, "kbs:///default/kek/1", nil},
		{"wrong key", wrapped, "kbs:///default/kek/other", errdefs.IsInvalidArgument},
		{"tampered", tampered, "kbs:///default/kek/1", errdefs.IsInvalidArgument},
		{"short kek", wrapped, "kbs:///default/kek/short", errdefs.IsFailedPrecondition},
		{"missing kek", wrapped, "kbs:///default/kek/none", errdefs.IsNotFound},
		{"traversal key id", wrapped, "kbs:///default/../kek", errdefs.IsInvalidArgument},
		{"not a uri", wrapped, "alias/x", errdefs.IsInvalidArgument},
		{"truncated", wrapped[:20], "kbs:///default/kek/1", errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := k.Decrypter(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.Decrypt(context.Background(), tc.ct, tc.keyID, nil)
			if tc.class == nil {
				if err != nil || !bytes.Equal(got, dek) {
					t.Fatalf("got %x, %v", got, err)
				}
				return
			}
			if err == nil || !tc.class(err) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	g, _ := k.SecretGetter(context.Background(), nil)
	if got, err := g.GetSecret(context.Background(), "kbs:///default/secret/1", nil); err != nil || string(got) != marker {
		t.Fatalf("get: %q %v", got, err)
	}
	if _, err := g.GetSecret(context.Background(), "kbs:///default/../x", nil); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("traversal name: %v", err)
	}
	if _, err := (KBS{}).GetSecret(context.Background(), "kbs:///default/secret/1", nil); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("no getter: %v", err)
	}
	if _, err := g.GetSecret(context.Background(), "kbs:///default/secret/none", nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing: %v", err)
	}
}

func TestClip(t *testing.T) {
	if got := Clip("a\nb\x7f"); got != "a?b?" {
		t.Fatalf("Clip = %q", got)
	}
	if got := Clip(strings.Repeat("x", 300)); len(got) > 140 {
		t.Fatalf("Clip length %d", len(got))
	}
}
