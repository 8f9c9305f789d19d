package faults

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/cdh/kbs"
	devkbs "github.com/cova-project/cova/test/kbs"
)

// kbsSecretMarker is the resource the KBS guards; it must never surface in
// an error.
const kbsSecretMarker = "KBS-RESOURCE-MARKER-3c81e0"

const kbsSecretURI = "kbs:///default/key/faults"

// fastBackoff keeps the client's retries quick without changing their count.
var fastBackoff = kbs.Backoff{Initial: 20 * time.Millisecond, Max: 80 * time.Millisecond}

// kbsRig is the development KBS, a KBS client of it and the client's clock.
type kbsRig struct {
	s      *devkbs.Server
	c      *kbs.Client
	offset atomic.Int64 // added to the guest clock (ns)
}

func newKBSRig(t *testing.T, o devkbs.Options, mod func(*kbs.Config)) *kbsRig {
	t.Helper()
	o.Resources = map[string][]byte{"default/key/faults": []byte(kbsSecretMarker)}
	r := &kbsRig{s: devkbs.StartTB(t, o)}
	cfg := kbs.Config{
		URL: r.s.URL(), ExtraRootCAs: string(r.s.CACertPEM()), Primary: sample.New(), Backoff: fastBackoff,
		Now: func() time.Time { return time.Now().Add(time.Duration(r.offset.Load())) },
	}
	if mod != nil {
		mod(&cfg)
	}
	c, err := kbs.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	r.c = c
	return r
}

// fetch gets the resource and checks it.
func (r *kbsRig) fetch(ctx context.Context) error {
	got, err := r.c.Resource(ctx, kbsSecretURI)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, []byte(kbsSecretMarker)) {
		return fmt.Errorf("resource has the wrong bytes")
	}
	return nil
}

func wantKBSStats(t *testing.T, s *devkbs.Server, want devkbs.Stats) {
	t.Helper()
	if got := s.Stats(); got != want {
		t.Errorf("the KBS saw %+v, want %+v", got, want)
	}
}

func kbsFaults() []fault {
	skew := func(name string, kbsSkew, guestSkew time.Duration) fault {
		return fault{
			area: "kbs", name: name, want: succeeds, bound: 10 * time.Second,
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{ClockSkew: kbsSkew}, nil)
				r.offset.Store(int64(guestSkew))
				for range 2 {
					if err := r.fetch(ctx); err != nil {
						return err
					}
				}
				// One attestation serves both fetches: no re-attest loop.
				wantKBSStats(t, r.s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 2, Attested: 1})
				return nil
			},
		}
	}
	return []fault{
		{
			area: "kbs", name: "down at boot: gives up after 3 RCAR attempts", want: clearError, bound: 10 * time.Second,
			classes: []error{errdefs.ErrUnavailable}, says: []string{"auth", "after 3 attempts"},
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{Down: true}, func(c *kbs.Config) { c.RCARAttempts = 3 })
				err := r.fetch(ctx)
				if st := r.s.Stats(); st.Dropped < 3 || st.Attested != 0 {
					t.Errorf("the KBS saw %+v", st)
				}
				return err
			},
		},
		{
			area: "kbs", name: "down at boot, comes up during the retries", want: retried, bound: 10 * time.Second,
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{Down: true}, func(c *kbs.Config) {
					c.Backoff = kbs.Backoff{Initial: 100 * time.Millisecond, Max: 200 * time.Millisecond}
				})
				up := time.AfterFunc(150*time.Millisecond, func() { r.s.SetDown(false) })
				defer up.Stop()
				if err := r.fetch(ctx); err != nil {
					return err
				}
				if st := r.s.Stats(); st.Dropped == 0 || st.Attested != 1 {
					t.Errorf("the KBS saw %+v", st)
				}
				return nil
			},
		},
		{
			area: "kbs", name: "slow KBS (5 s an answer), caller deadline 300 ms", want: clearError, bound: 3 * time.Second,
			classes: []error{context.DeadlineExceeded}, says: []string{"auth"},
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{Delay: 5 * time.Second}, nil)
				cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
				defer cancel()
				start := time.Now()
				err := r.fetch(cctx)
				if d := time.Since(start); d > time.Second {
					t.Errorf("the deadline was ignored: %v", d)
				}
				return err
			},
		},
		{
			area: "kbs", name: "slow KBS, 150 ms per-request timeout, 2 attempts", want: clearError, bound: 3 * time.Second,
			classes: []error{errdefs.ErrUnavailable}, says: []string{"auth", "after 2 attempts"},
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{Delay: 5 * time.Second}, func(c *kbs.Config) {
					c.Timeout = 150 * time.Millisecond
					c.RCARAttempts = 2
				})
				return r.fetch(ctx)
			},
		},
		{
			area: "kbs", name: "401 mid-flow: re-attests once", want: retried, bound: 10 * time.Second,
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{}, nil)
				if err := r.fetch(ctx); err != nil {
					return err
				}
				r.s.FailNext(devkbs.Resource, 1, http.StatusUnauthorized)
				r.s.ResetStats()
				if err := r.fetch(ctx); err != nil {
					return err
				}
				wantKBSStats(t, r.s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 2, Attested: 1, Unauthorized: 1})
				return nil
			},
		},
		{
			area: "kbs", name: "tokens revoked mid-flow: re-attests once", want: retried, bound: 10 * time.Second,
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{}, nil)
				if err := r.fetch(ctx); err != nil {
					return err
				}
				r.s.RevokeTokens()
				r.s.ResetStats()
				if err := r.fetch(ctx); err != nil {
					return err
				}
				wantKBSStats(t, r.s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 2, Attested: 1, Unauthorized: 1})
				return nil
			},
		},
		{
			area: "kbs", name: "1-second tokens: expiry re-attests before asking", want: retried, bound: 10 * time.Second,
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{TokenLifetime: time.Second}, nil)
				if err := r.fetch(ctx); err != nil {
					return err
				}
				r.offset.Store(int64(2 * time.Second)) // 2 s pass on the guest's clocks
				r.s.ResetStats()
				if err := r.fetch(ctx); err != nil {
					return err
				}
				wantKBSStats(t, r.s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 1, Attested: 1})
				return nil
			},
		},
		skew("KBS clock +1 h", time.Hour, 0),
		skew("KBS clock -1 h", -time.Hour, 0),
		skew("guest clock +1 h", 0, time.Hour),
		skew("guest clock -1 h", 0, -time.Hour),
		{
			area: "kbs", name: "guest clock at epoch 0: TLS refuses, no loop", want: clearError, bound: 5 * time.Second,
			classes: []error{errdefs.ErrUnavailable}, says: []string{"auth", "certificate"},
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{}, func(c *kbs.Config) { c.RCARAttempts = 2 })
				r.offset.Store(int64(-time.Since(time.Unix(0, 0))))
				return r.fetch(ctx)
			},
		},
		{
			area: "kbs", name: "tampered JWE answer", want: failClosed, bound: 5 * time.Second,
			classes: []error{errdefs.ErrDataLoss}, says: []string{"resource", kbsSecretURI},
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{}, nil)
				r.s.TamperNext(1)
				return r.fetch(ctx)
			},
		},
		{
			area: "kbs", name: "resource policy denies: not retried", want: failClosed, bound: 5 * time.Second,
			classes: []error{errdefs.ErrPermissionDenied}, says: []string{"resource", "HTTP 401", "PolicyDeny"},
			run: func(ctx context.Context, t *testing.T) error {
				r := newKBSRig(t, devkbs.Options{Policy: func(context.Context, devkbs.PolicyInput) error {
					return fmt.Errorf("not for this guest")
				}}, nil)
				err := r.fetch(ctx)
				if st := r.s.Stats(); st.Resource != 1 {
					t.Errorf("a policy refusal was retried: %+v", st)
				}
				return err
			},
		},
	}
}
