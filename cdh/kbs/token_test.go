package kbs

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

func jwt(payload string) string {
	e := base64.RawURLEncoding.EncodeToString
	return e([]byte(`{"alg":"ES256"}`)) + "." + e([]byte(payload)) + "." + e([]byte("sig"))
}

func TestParseToken(t *testing.T) {
	tok, err := ParseToken(jwt(`{"iat":1000,"nbf":1000,"exp":1300.5,"submods":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	if tok.IssuedAt != time.Unix(1000, 0) || tok.Expiry != time.Unix(1300, 5e8) || tok.NotBefore != time.Unix(1000, 0) {
		t.Fatalf("claims %v", tok)
	}
	if s := tok.String(); strings.Contains(s, tok.Raw) {
		t.Fatal("String() prints the token")
	}
	for _, tc := range []struct{ name, raw string }{
		{"no-exp", jwt(`{"iat":1}`)},
		{"exp-string", jwt(`{"exp":"1300"}`)},
		{"exp-null", jwt(`{"exp":null}`)},
		{"exp-negative", jwt(`{"exp":-1}`)},
		{"exp-huge", jwt(`{"exp":1e300}`)},
		{"not-json", jwt(`exp`)},
		{"two-parts", "a.b"},
		{"bad-base64", "a.!!!.c"},
		{"too-big", jwt(`{"exp":1,"x":"` + strings.Repeat("x", MaxTokenSize) + `"}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseToken(tc.raw); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseToken = %v", err)
			}
		})
	}
}

// Reuse is judged on the guest's monotonic clock from the lifetime the KBS
// granted, so neither guest nor KBS clock skew changes it.
func TestTokenReuseWindow(t *testing.T) {
	now := time.Now() // carries a monotonic reading
	kbs := func(skew time.Duration, life time.Duration, nbf time.Duration) string {
		iat := now.Add(skew).Unix()
		return jwt(fmt.Sprintf(`{"iat":%d,"nbf":%d,"exp":%d}`, iat, iat+int64(nbf/time.Second), iat+int64(life/time.Second)))
	}
	for _, tc := range []struct {
		name  string
		raw   string
		at    time.Duration
		reuse bool
	}{
		{"fresh", kbs(0, 5*time.Minute, 0), time.Minute, true},
		{"in-margin", kbs(0, 5*time.Minute, 0), 4*time.Minute + 31*time.Second, false},
		{"expired", kbs(0, 5*time.Minute, 0), 6 * time.Minute, false},
		{"kbs-clock-ahead-1h", kbs(time.Hour, 5*time.Minute, 0), time.Minute, true},
		{"kbs-clock-behind-1h", kbs(-time.Hour, 5*time.Minute, 0), time.Minute, true},
		{"kbs-clock-behind-1y-expired", kbs(-365*24*time.Hour, 5*time.Minute, 0), 5 * time.Minute, false},
		{"short-1s", kbs(0, time.Second, 0), 800 * time.Millisecond, true},
		{"short-1s-after", kbs(0, time.Second, 0), 950 * time.Millisecond, false},
		{"not-yet-valid", kbs(0, 5*time.Minute, 2*time.Minute), time.Minute, false},
		{"valid-after-nbf", kbs(0, 5*time.Minute, 2*time.Minute), 3 * time.Minute, true},
		{"before-receipt", kbs(0, 5*time.Minute, 0), -time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := ParseToken(tc.raw)
			if err != nil {
				t.Fatal(err)
			}
			tok.accept(now)
			if got := tok.reusable(now.Add(tc.at)); got != tc.reuse {
				t.Fatalf("reusable after %v = %v, want %v", tc.at, got, tc.reuse)
			}
		})
	}
	// Without iat the guest clock decides: exp − now.
	tok, _ := ParseToken(jwt(fmt.Sprintf(`{"exp":%d}`, now.Add(time.Minute).Unix())))
	tok.accept(now)
	if !tok.reusable(now.Add(30*time.Second)) || tok.reusable(now.Add(2*time.Minute)) {
		t.Fatal("token without iat: wrong reuse window")
	}
	var none *Token
	if none.reusable(now) {
		t.Fatal("nil token reusable")
	}
}
