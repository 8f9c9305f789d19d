package oci

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestParseDigest(t *testing.T) {
	hex64 := strings.Repeat("ab", 32)
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"sha256", "sha256:" + hex64, true},
		{"sha512", "sha512:" + strings.Repeat("0f", 64), true},
		{"empty", "", false},
		{"no algorithm", hex64, false},
		{"uppercase hex", "sha256:" + strings.ToUpper(hex64), false},
		{"short", "sha256:" + hex64[:63], false},
		{"long", "sha256:" + hex64 + "0", false},
		{"traversal", "sha256:../../" + hex64[:58], false},
		{"slash", "sha256:" + hex64[:63] + "/", false},
		{"unknown algorithm", "md5:" + hex64[:32], false},
		{"algorithm case", "SHA256:" + hex64, false},
		{"sha512 with 64", "sha512:" + hex64, false},
		{"nul", "sha256:" + hex64[:63] + "\x00", false},
		{"double colon", "sha256::" + hex64[:63], false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := ParseDigest(tc.in)
			if tc.ok {
				if err != nil {
					t.Fatalf("ParseDigest(%q): %v", tc.in, err)
				}
				if d.String() != tc.in {
					t.Fatalf("round trip: got %q", d.String())
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseDigest(%q) = %v, %v; want ErrInvalidArgument", tc.in, d, err)
			}
		})
	}
}

func TestDigestVerifier(t *testing.T) {
	d := FromBytes([]byte("hello"))
	h, check := d.Verifier()
	h.Write([]byte("hello"))
	if err := check(); err != nil {
		t.Fatalf("matching content: %v", err)
	}
	h, check = d.Verifier()
	h.Write([]byte("hellO"))
	if err := check(); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("mismatching content: got %v", err)
	}
}

func TestDigestJSON(t *testing.T) {
	var d Digest
	if err := d.UnmarshalText([]byte("sha256:zz")); err == nil {
		t.Fatal("invalid digest decoded")
	}
	good := FromBytes(nil)
	if err := d.UnmarshalText([]byte(good.String())); err != nil || d != good {
		t.Fatalf("decode %s: %v %v", good, d, err)
	}
}
