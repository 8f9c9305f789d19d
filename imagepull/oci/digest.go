// Package oci holds the OCI and Docker image format types the puller reads:
// content digests, media types, descriptors, manifests, indexes and image
// configs, with strict decoding and platform selection.
//
// Everything here validates untrusted input: a Digest is only ever built by
// ParseDigest, so code that turns a digest into a URL or a file name can rely
// on it being an algorithm it knows and lowercase hex of the right length.
package oci

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/internal/textclip"
)

// Digest is a validated content digest "algorithm:hex". The zero value is
// invalid; build one with ParseDigest or FromBytes.
type Digest struct {
	alg string // "sha256" or "sha512"
	hex string // lowercase hex, 64 or 128 characters
}

// Supported digest algorithms.
const (
	SHA256 = "sha256"
	SHA512 = "sha512"
)

// ParseDigest validates s and returns it as a Digest. Only sha256 (64 hex
// characters) and sha512 (128) are accepted, and only lowercase hex: anything
// else (uppercase, other algorithms, path characters) is ErrInvalidArgument.
func ParseDigest(s string) (Digest, error) {
	alg, enc, ok := strings.Cut(s, ":")
	if !ok {
		return Digest{}, fmt.Errorf("digest %q: missing algorithm: %w", clip(s), errdefs.ErrInvalidArgument)
	}
	var want int
	switch alg {
	case SHA256:
		want = 64
	case SHA512:
		want = 128
	default:
		return Digest{}, fmt.Errorf("digest %q: unsupported algorithm: %w", clip(s), errdefs.ErrInvalidArgument)
	}
	if len(enc) != want {
		return Digest{}, fmt.Errorf("digest %q: %s needs %d hex characters: %w", clip(s), alg, want, errdefs.ErrInvalidArgument)
	}
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return Digest{}, fmt.Errorf("digest %q: not lowercase hex: %w", clip(s), errdefs.ErrInvalidArgument)
		}
	}
	return Digest{alg: alg, hex: enc}, nil
}

// MustParseDigest is ParseDigest for constants in tests; it panics on error.
func MustParseDigest(s string) Digest {
	d, err := ParseDigest(s)
	if err != nil {
		panic(err)
	}
	return d
}

// FromBytes returns the sha256 digest of b.
func FromBytes(b []byte) Digest {
	sum := sha256.Sum256(b)
	return Digest{alg: SHA256, hex: hex.EncodeToString(sum[:])}
}

// FromHash returns the digest of what h has hashed; alg must name h's
// algorithm.
func FromHash(alg string, h hash.Hash) Digest {
	return Digest{alg: alg, hex: hex.EncodeToString(h.Sum(nil))}
}

// String returns "algorithm:hex", or "" for the zero Digest.
func (d Digest) String() string {
	if d.alg == "" {
		return ""
	}
	return d.alg + ":" + d.hex
}

// Algorithm returns "sha256" or "sha512".
func (d Digest) Algorithm() string { return d.alg }

// Hex returns the lowercase hex part; safe to use as a file name.
func (d Digest) Hex() string { return d.hex }

// IsZero reports whether d is the zero (invalid) Digest.
func (d Digest) IsZero() bool { return d.alg == "" }

// NewHash returns a fresh hash for d's algorithm.
func (d Digest) NewHash() hash.Hash {
	if d.alg == SHA512 {
		return sha512.New()
	}
	return sha256.New()
}

// Verifier returns a hash for d's algorithm and a check that what was
// written to it matches d.
func (d Digest) Verifier() (hash.Hash, func() error) {
	h := d.NewHash()
	return h, func() error {
		got := FromHash(d.alg, h)
		if got != d {
			return fmt.Errorf("digest mismatch: want %s, got %s: %w", d, got, errdefs.ErrFailedPrecondition)
		}
		return nil
	}
}

// MarshalText implements encoding.TextMarshaler.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseDigest's
// validation; the empty string decodes to the zero Digest.
func (d *Digest) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*d = Digest{}
		return nil
	}
	p, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// clip shortens untrusted strings before they go into error messages.
func clip(s string) string { return textclip.Clip(s, 80) }
