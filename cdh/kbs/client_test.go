package kbs

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/aaservice"
	"github.com/cova-project/cova/attester/sample"
	devkbs "github.com/cova-project/cova/test/kbs"
)

var _ aaservice.TokenGetter = (*Client)(nil)

const secretPath = "default/key/1"

var secret = []byte("the layer key \x00\x01\x02")

// fast keeps retries quick in tests.
var fast = Backoff{Initial: 5 * time.Millisecond, Max: 20 * time.Millisecond}

func startKBS(t testing.TB, o devkbs.Options) *devkbs.Server {
	t.Helper()
	if o.Resources == nil {
		o.Resources = map[string][]byte{secretPath: secret}
	}
	return devkbs.StartTB(t, o)
}

func newClient(t testing.TB, s *devkbs.Server, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{URL: s.URL(), ExtraRootCAs: string(s.CACertPEM()), Primary: sample.New(), Backoff: fast}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func getSecret(t *testing.T, c *Client) {
	t.Helper()
	got, err := c.Resource(context.Background(), "kbs:///"+secretPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, secret) {
		t.Fatalf("resource = %q", got)
	}
}

func wantStats(t *testing.T, s *devkbs.Server, want devkbs.Stats) {
	t.Helper()
	if got := s.Stats(); got != want {
		t.Fatalf("KBS saw %+v, want %+v", got, want)
	}
}

func TestSampleRoundTrip(t *testing.T) {
	for _, alg := range []KeyAlgorithm{KeyECDHP256, KeyECDHP521, KeyRSAOAEP} {
		t.Run(string(alg), func(t *testing.T) {
			s := startKBS(t, devkbs.Options{})
			c := newClient(t, s, func(c *Config) { c.KeyAlgorithm = alg })
			getSecret(t, c)
			wantStats(t, s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 1, Attested: 1})
		})
	}
}

func TestTokenReuseOneRequest(t *testing.T) {
	s := startKBS(t, devkbs.Options{})
	c := newClient(t, s, nil)
	getSecret(t, c)
	s.ResetStats()
	getSecret(t, c)
	wantStats(t, s, devkbs.Stats{Resource: 1})
}

func TestConcurrentFetchesShareOneRCAR(t *testing.T) {
	s := startKBS(t, devkbs.Options{})
	c := newClient(t, s, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			if _, err := c.Resource(context.Background(), "kbs:///"+secretPath); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	wantStats(t, s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 8, Attested: 1})
}

func TestExpiredTokenReattests(t *testing.T) {
	s := startKBS(t, devkbs.Options{TokenLifetime: time.Second})
	c := newClient(t, s, nil)
	getSecret(t, c)
	time.Sleep(time.Second)
	getSecret(t, c)
	// Re-attested before asking, so the KBS never saw the stale token.
	wantStats(t, s, devkbs.Stats{Auth: 2, Attest: 2, Resource: 2, Attested: 2})
}

func Test401MidFlowReattests(t *testing.T) {
	for _, tc := range []struct {
		name   string
		inject func(s *devkbs.Server)
	}{
		{"revoked", func(s *devkbs.Server) { s.RevokeTokens() }},
		{"injected-401", func(s *devkbs.Server) { s.FailNext(devkbs.Resource, 1, http.StatusUnauthorized) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startKBS(t, devkbs.Options{})
			c := newClient(t, s, nil)
			getSecret(t, c)
			tc.inject(s)
			s.ResetStats()
			getSecret(t, c)
			wantStats(t, s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 2, Attested: 1, Unauthorized: 1})
		})
	}
}

func TestTransientFailuresRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		ep   devkbs.Endpoint
		code int
		want devkbs.Stats
	}{
		{"auth-503", devkbs.Auth, 503, devkbs.Stats{Auth: 2, Attest: 1, Resource: 1, Attested: 1}},
		// One fresh handshake for a refused /attest (an expired session).
		{"attest-401", devkbs.Attest, 401, devkbs.Stats{Auth: 2, Attest: 2, Resource: 1, Attested: 1, Unauthorized: 1}},
		{"resource-502", devkbs.Resource, 502, devkbs.Stats{Auth: 1, Attest: 1, Resource: 2, Attested: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startKBS(t, devkbs.Options{})
			s.FailNext(tc.ep, 1, tc.code)
			getSecret(t, newClient(t, s, nil))
			wantStats(t, s, tc.want)
		})
	}
}

// checkError asserts the error names the KBS, the step and the status and
// carries the class.
func checkError(t *testing.T, err error, kbs, step string, status int, class error) *Error {
	t.Helper()
	var ke *Error
	if !errors.As(err, &ke) {
		t.Fatalf("error %v (%T) is not a *kbs.Error", err, err)
	}
	msg := err.Error()
	if !strings.Contains(msg, kbs) || !strings.Contains(msg, ": "+step) || ke.Step != step {
		t.Fatalf("error %q does not name KBS %s and step %s", msg, kbs, step)
	}
	if ke.Status != status || (status != 0 && !strings.Contains(msg, fmt.Sprintf("HTTP %d", status))) {
		t.Fatalf("error %q: status %d, want %d", msg, ke.Status, status)
	}
	if !errors.Is(err, class) {
		t.Fatalf("error %q is not %v", msg, class)
	}
	return ke
}

func TestKBSDownAtStart(t *testing.T) {
	s := startKBS(t, devkbs.Options{Down: true})
	c := newClient(t, s, func(c *Config) { c.RCARAttempts = 3 })
	start := time.Now()
	_, err := c.Resource(context.Background(), "kbs:///"+secretPath)
	ke := checkError(t, err, s.URL(), StepAuth, 0, errdefs.ErrUnavailable)
	if ke.Attempts != 3 || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Fatalf("attempts %d: %v", ke.Attempts, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	if st := s.Stats(); st.Dropped < 3 {
		t.Fatalf("KBS saw %+v", st)
	}
	// The KBS comes up while the client retries.
	s.SetDown(true)
	c = newClient(t, s, func(c *Config) {
		c.Backoff = Backoff{Initial: 100 * time.Millisecond, Max: 200 * time.Millisecond}
	})
	time.AfterFunc(150*time.Millisecond, func() { s.SetDown(false) })
	getSecret(t, c)
}

func TestNothingListening(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "https://" + l.Addr().String()
	l.Close()
	c, err := New(Config{URL: url, Primary: sample.New(), RCARAttempts: 2, Backoff: fast})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Resource(context.Background(), "kbs:///"+secretPath)
	checkError(t, err, url, StepAuth, 0, errdefs.ErrUnavailable)
	if !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("error %v does not say why", err)
	}
}

func TestSlowKBS(t *testing.T) {
	s := startKBS(t, devkbs.Options{Delay: 2 * time.Second})
	c := newClient(t, s, func(c *Config) { c.Timeout = 100 * time.Millisecond; c.RCARAttempts = 2 })
	start := time.Now()
	_, err := c.Resource(context.Background(), "kbs:///"+secretPath)
	checkError(t, err, s.URL(), StepAuth, 0, errdefs.ErrUnavailable)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a slow KBS held the client %v", d)
	}
	// The caller's deadline wins over retries.
	c = newClient(t, s, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := c.Resource(ctx, "kbs:///"+secretPath); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want the context's", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("deadline ignored: %v", d)
	}
}

// badAttester binds the wrong report data.
type badAttester struct{ attester.Attester }

func (b badAttester) Evidence(ctx context.Context, rd []byte) ([]byte, error) {
	rd = append([]byte(nil), rd...)
	rd[0] ^= 1
	return b.Attester.Evidence(ctx, rd)
}

func TestBadReportDataRefused(t *testing.T) {
	s := startKBS(t, devkbs.Options{})
	c := newClient(t, s, func(c *Config) { c.Primary = badAttester{sample.New()} })
	_, err := c.Resource(context.Background(), "kbs:///"+secretPath)
	ke := checkError(t, err, s.URL(), StepAttest, 401, errdefs.ErrPermissionDenied)
	if ke.Type != "AttestationError" || !strings.Contains(ke.Detail, "report_data") {
		t.Fatalf("error %v", err)
	}
	// One retry with a fresh session, then a clear failure.
	wantStats(t, s, devkbs.Stats{Auth: 2, Attest: 2, Unauthorized: 2})
}

func TestTamperedJWERefused(t *testing.T) {
	s := startKBS(t, devkbs.Options{})
	s.TamperNext(1)
	c := newClient(t, s, nil)
	_, err := c.Resource(context.Background(), "kbs:///"+secretPath)
	ke := checkError(t, err, s.URL(), StepResource, 0, errdefs.ErrDataLoss)
	if ke.Resource != "kbs:///"+secretPath {
		t.Fatalf("error does not name the resource: %v", err)
	}
	wantStats(t, s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 1, Attested: 1})
	getSecret(t, c) // the next answer is intact
}

func TestPolicyDenyNotRetried(t *testing.T) {
	s := startKBS(t, devkbs.Options{Policy: func(_ context.Context, in devkbs.PolicyInput) error {
		if in.Path[2] == "forbidden" {
			return errors.New("not for you")
		}
		return nil
	}})
	c := newClient(t, s, nil)
	_, err := c.Resource(context.Background(), "kbs:///default/key/forbidden")
	ke := checkError(t, err, s.URL(), StepResource, 401, errdefs.ErrPermissionDenied)
	if ke.Type != "PolicyDeny" || !strings.Contains(err.Error(), "kbs:///default/key/forbidden") {
		t.Fatalf("error %v", err)
	}
	wantStats(t, s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 1, Attested: 1, Unauthorized: 1})
}

func TestMissingResource(t *testing.T) {
	s := startKBS(t, devkbs.Options{})
	c := newClient(t, s, nil)
	_, err := c.Resource(context.Background(), "kbs:///default/key/missing")
	// trustee answers a missing resource 401; the client re-attests, as
	// guest-components does, and gives up after ResourceAttempts.
	ke := checkError(t, err, s.URL(), StepResource, 401, errdefs.ErrPermissionDenied)
	if ke.Type != "PluginInternalError" || ke.Attempts != DefaultResourceAttempts {
		t.Fatalf("error %v", err)
	}
	if st := s.Stats(); st.Resource != 3 || st.Auth != 3 {
		t.Fatalf("KBS saw %+v", st)
	}
}

func TestClockSkew(t *testing.T) {
	for _, tc := range []struct {
		name       string
		kbs, guest time.Duration
	}{
		{"kbs-ahead-1h", time.Hour, 0},
		{"kbs-behind-1h", -time.Hour, 0},
		{"guest-ahead-1h", 0, time.Hour},
		{"guest-behind-1h", 0, -time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startKBS(t, devkbs.Options{ClockSkew: tc.kbs})
			c := newClient(t, s, func(c *Config) { c.Now = func() time.Time { return time.Now().Add(tc.guest) } })
			getSecret(t, c)
			getSecret(t, c)
			wantStats(t, s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 2, Attested: 1})
		})
	}
	// A guest clock far outside the certificate's validity fails TLS
	// clearly instead of hanging.
	s := startKBS(t, devkbs.Options{})
	c := newClient(t, s, func(c *Config) {
		c.RCARAttempts = 2
		c.Now = func() time.Time { return time.Now().Add(-time.Since(time.Unix(0, 0))) }
	})
	_, err := c.Resource(context.Background(), "kbs:///"+secretPath)
	checkError(t, err, s.URL(), StepAuth, 0, errdefs.ErrUnavailable)
	if !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("error %v does not name the certificate", err)
	}
}

func TestPassport(t *testing.T) {
	issuer := startKBS(t, devkbs.Options{Resources: map[string][]byte{}})
	res := startKBS(t, devkbs.Options{TrustedTokenKeys: []*ecdsa.PublicKey{issuer.TokenPublicKey()}})
	c := newClient(t, issuer, func(c *Config) {
		c.ResourceURL = res.URL()
		c.ExtraRootCAs = string(issuer.CACertPEM()) + string(res.CACertPEM())
	})
	getSecret(t, c)
	getSecret(t, c)
	wantStats(t, issuer, devkbs.Stats{Auth: 1, Attest: 1, Attested: 1})
	wantStats(t, res, devkbs.Stats{Resource: 2})
}

func TestInitDataAndDevices(t *testing.T) {
	toml := "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://kbs\"\n'''\n"
	var claims map[string]any
	s := startKBS(t, devkbs.Options{Policy: func(_ context.Context, in devkbs.PolicyInput) error {
		claims = in.Claims
		return nil
	}})
	c := newClient(t, s, func(c *Config) {
		c.InitData = []byte(toml)
		c.Additional = []attester.Attester{sample.NewDevice()}
	})
	getSecret(t, c)
	sub, _ := claims["submods"].(map[string]any)
	cpu, _ := sub["cpu0"].(map[string]any)
	ann, _ := cpu["ear.veraison.annotated-evidence"].(map[string]any)
	d := sha512.Sum384([]byte(toml))
	if ann["init_data"] != hex.EncodeToString(d[:]) {
		t.Fatalf("init_data claim %v, want %x", ann["init_data"], d)
	}
	if _, ok := sub["device0"]; !ok {
		t.Fatalf("device evidence not appraised: %v", sub)
	}
	rdc, _ := ann["runtime_data_claims"].(map[string]any)
	if ae, _ := rdc["additional-evidence"].(string); !strings.Contains(ae, `"sampledevice"`) {
		t.Fatalf("additional-evidence %q", ae)
	}
	// A device attester that lies about its report data is refused.
	s2 := startKBS(t, devkbs.Options{})
	c2 := newClient(t, s2, func(c *Config) { c.Additional = []attester.Attester{badAttester{sample.NewDevice()}} })
	_, err := c2.Resource(context.Background(), "kbs:///"+secretPath)
	checkError(t, err, s2.URL(), StepAttest, 401, errdefs.ErrPermissionDenied)
}

func TestAATokenGetter(t *testing.T) {
	for _, alg := range []KeyAlgorithm{KeyECDHP256, KeyRSAOAEP} {
		t.Run(string(alg), func(t *testing.T) {
			s := startKBS(t, devkbs.Options{})
			c := newClient(t, s, func(c *Config) { c.KeyAlgorithm = alg })
			b, err := c.Token(context.Background(), TokenTypeKBS)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]string
			if err := json.Unmarshal(b, &m); err != nil || len(m) != 2 || m["token"] == "" {
				t.Fatalf("GetToken answer %s: %v", b, err)
			}
			blk, _ := pem.Decode([]byte(m["tee_keypair"]))
			if blk == nil {
				t.Fatal("tee_keypair is not PEM")
			}
			var priv any
			if alg == KeyRSAOAEP {
				priv, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
			} else {
				priv, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
			}
			if err != nil {
				t.Fatal(err)
			}
			// The private key is the one whose public half the token binds.
			pub, _ := c.TEEPublicKey()
			var n, x string
			switch k := priv.(type) {
			case *rsa.PrivateKey:
				n, x = b64url(k.N.Bytes()), pub.N
			case *ecdsa.PrivateKey:
				n, x = b64url(k.X.FillBytes(make([]byte, 32))), pub.X
			default:
				t.Fatalf("tee_keypair holds a %T", priv)
			}
			if n != x {
				t.Fatal("tee_keypair does not match the tee-pubkey")
			}
			if _, err := ParseToken(m["token"]); err != nil {
				t.Fatal(err)
			}
			// Reused: a second GetToken does not attest again.
			if _, err := c.Token(context.Background(), TokenTypeKBS); err != nil {
				t.Fatal(err)
			}
			wantStats(t, s, devkbs.Stats{Auth: 1, Attest: 1, Attested: 1})
		})
	}
	c := newClient(t, startKBS(t, devkbs.Options{}), nil)
	if _, err := c.Token(context.Background(), TokenTypeCoCoAS); !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Fatalf("coco_as: %v", err)
	}
	if _, err := c.Token(context.Background(), "oidc"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("unknown type: %v", err)
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no-url", Config{Primary: sample.New()}},
		{"ftp", Config{URL: "ftp://kbs", Primary: sample.New()}},
		{"userinfo", Config{URL: "https://u:p@kbs", Primary: sample.New()}},
		{"query", Config{URL: "https://kbs/?x=1", Primary: sample.New()}},
		{"bad-resource-url", Config{URL: "https://kbs", ResourceURL: "kbs", Primary: sample.New()}},
		{"no-attester", Config{URL: "https://kbs"}},
		{"bad-key-alg", Config{URL: "https://kbs", Primary: sample.New(), KeyAlgorithm: "RSA1_5"}},
		{"bad-ca", Config{URL: "https://kbs", Primary: sample.New(), ExtraRootCAs: "not pem"}},
		{"initdata-not-utf8", Config{URL: "https://kbs", Primary: sample.New(), InitData: []byte{0xff}}},
		{"duplicate-device", Config{URL: "https://kbs", Primary: sample.New(), Additional: []attester.Attester{sample.NewDevice(), sample.NewDevice()}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("New = %v", err)
			}
		})
	}
}

// TestPluginResource fetches from a KBS plugin other than "resource"
// (kbs+<plugin>:// → GET /kbs/v0/<plugin>/<path>?<query>): the same token,
// policy input naming the plugin, and a JWE answer decrypted with the TEE
// key; an unknown plugin is the KBS's 404, not retried.
func TestPluginResource(t *testing.T) {
	var seen []string
	s := startKBS(t, devkbs.Options{
		Plugins: map[string]devkbs.PluginFunc{"echo": func(_ context.Context, in devkbs.PolicyInput) ([]byte, error) {
			return []byte(strings.Join(in.Path, "/") + "?" + in.Query.Encode()), nil
		}},
		Policy: func(_ context.Context, in devkbs.PolicyInput) error {
			seen = append(seen, in.Plugin)
			return nil
		},
	})
	c := newClient(t, s, nil)
	got, err := c.Resource(context.Background(), "kbs+echo:///vault/db/password?version=2")
	if err != nil || string(got) != "vault/db/password?version=2" {
		t.Fatalf("plugin resource %q, %v", got, err)
	}
	getSecret(t, c) // the same token serves the resource plugin
	if !slices.Equal(seen, []string{"echo", "resource"}) {
		t.Fatalf("policy saw plugins %v", seen)
	}
	wantStats(t, s, devkbs.Stats{Auth: 1, Attest: 1, Resource: 1, Attested: 1})
	_, err = c.Resource(context.Background(), "kbs+nosuch:///a/b")
	var ke *Error
	if !errors.As(err, &ke) || ke.Status != 404 || ke.Attempts > 1 || !strings.Contains(err.Error(), "nosuch") {
		t.Fatalf("unknown plugin: %v", err)
	}
}

// TestBackoffDelay: the n-th retry waits in [d/2, d] where d doubles from
// Initial up to Max (equal jitter), and the draws spread over the range.
func TestBackoffDelay(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: time.Second}
	for attempt, d := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 400 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 40: time.Second} {
		lo, hi := d, time.Duration(0)
		for range 2000 {
			got := b.delay(attempt)
			if got < d/2 || got > d {
				t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, got, d/2, d)
			}
			lo, hi = min(lo, got), max(hi, got)
		}
		if hi-lo < d/4 {
			t.Errorf("attempt %d: draws span only %v..%v: no jitter", attempt, lo, hi)
		}
	}
	if got := (Backoff{}).delay(3); got != 0 {
		t.Errorf("zero backoff waits %v", got)
	}
}

// TestCancelledOnce: a request cancelled while the KBS is slow says so
// once, on one line, and still wraps context.Canceled.
func TestCancelledOnce(t *testing.T) {
	s := startKBS(t, devkbs.Options{Delay: 2 * time.Second})
	c := newClient(t, s, nil)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	_, err := c.Resource(ctx, "kbs:///"+secretPath)
	if !errors.Is(err, context.Canceled) || strings.Count(err.Error(), "context canceled") != 1 || strings.Contains(err.Error(), "\n") {
		t.Fatalf("cancelled fetch: %q", err)
	}
	if e := withCause(errors.New("x"), context.DeadlineExceeded); !errors.Is(e, context.DeadlineExceeded) || e.Error() != "x: context deadline exceeded" {
		t.Fatalf("withCause: %q", e)
	}
}
