package kbs

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// MaxTokenSize bounds the attestation token the client accepts.
const MaxTokenSize = 256 << 10

// Token is an attestation token (a JWT) as the KBS issued it. The client
// never verifies its signature (the KBS that consumes it does); it reads
// the time claims to decide when to re-attest.
type Token struct {
	// Raw is the JWT text. It is a bearer credential: never log it.
	Raw string
	// IssuedAt, NotBefore and Expiry are the iat, nbf and exp claims
	// (zero when absent), in the KBS's clock.
	IssuedAt, NotBefore, Expiry time.Time

	// received is when the client received the token (guest clock, with
	// its monotonic reading); validFrom and validUntil bound when the client
	// reuses it, on the same clock (nbf − iat and exp − iat after receipt).
	received, validFrom, validUntil time.Time
}

// String never prints the token itself.
func (t *Token) String() string {
	return fmt.Sprintf("token(iat=%s exp=%s)", t.IssuedAt.UTC().Format(time.RFC3339), t.Expiry.UTC().Format(time.RFC3339))
}

// ParseToken reads the claims of a JWT without verifying it. exp is
// required: a token without one could never be judged stale.
func ParseToken(raw string) (*Token, error) {
	if len(raw) > MaxTokenSize {
		return nil, fmt.Errorf("token: %d bytes, more than %d: %w", len(raw), MaxTokenSize, errdefs.ErrInvalidArgument)
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("token: not a JWS compact serialization: %w", errdefs.ErrInvalidArgument)
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("token payload: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	var claims struct {
		Exp json.RawMessage `json:"exp"`
		Nbf json.RawMessage `json:"nbf"`
		Iat json.RawMessage `json:"iat"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, fmt.Errorf("token claims: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	t := &Token{Raw: raw}
	for _, c := range []struct {
		name string
		n    json.RawMessage
		dst  *time.Time
	}{{"exp", claims.Exp, &t.Expiry}, {"nbf", claims.Nbf, &t.NotBefore}, {"iat", claims.Iat, &t.IssuedAt}} {
		if c.n == nil {
			continue
		}
		var f float64
		if c.n[0] < '0' || c.n[0] > '9' || json.Unmarshal(c.n, &f) != nil || f < 0 || f > math.MaxInt32*1000 {
			return nil, fmt.Errorf("token claim %s %s is not a NumericDate: %w", c.name, sanitize(string(c.n)), errdefs.ErrInvalidArgument)
		}
		sec, frac := math.Modf(f)
		*c.dst = time.Unix(int64(sec), int64(frac*1e9))
	}
	if t.Expiry.IsZero() {
		return nil, fmt.Errorf("token has no exp claim: %w", errdefs.ErrInvalidArgument)
	}
	return t, nil
}

// lifetime is how long the KBS meant the token to be usable: exp − iat when
// the token says when it was issued (clock independent), else exp − now on
// the guest clock.
func (t *Token) lifetime(now time.Time) time.Duration {
	if !t.IssuedAt.IsZero() && t.Expiry.After(t.IssuedAt) {
		return t.Expiry.Sub(t.IssuedAt)
	}
	return t.Expiry.Sub(now)
}

// refreshMargin is how long before the end of its lifetime a token stops
// being reused, so it does not expire in flight: a tenth of the lifetime,
// at most 30 s.
func refreshMargin(life time.Duration) time.Duration {
	return min(life/10, 30*time.Second)
}

// accept records that the token was received at now (guest clock with a
// monotonic reading) and fixes until when it is reused.
func (t *Token) accept(now time.Time) {
	life := t.lifetime(now)
	t.received = now
	t.validFrom = now
	if !t.NotBefore.IsZero() && !t.IssuedAt.IsZero() && t.NotBefore.After(t.IssuedAt) {
		t.validFrom = now.Add(t.NotBefore.Sub(t.IssuedAt))
	}
	t.validUntil = now.Add(life - refreshMargin(life))
}

// reusable reports whether a cached token may still be presented at now.
func (t *Token) reusable(now time.Time) bool {
	return t != nil && now.Before(t.validUntil) && !now.Before(t.validFrom)
}

// clockSkew is how far the guest's wall clock is from the KBS's, judged
// from the token's iat at receipt (0 when the token has no iat).
func (t *Token) clockSkew() time.Duration {
	if t.IssuedAt.IsZero() {
		return 0
	}
	return t.received.Round(0).Sub(t.IssuedAt)
}
