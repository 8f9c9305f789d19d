package kbs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/se"
)

// Defaults, from guest-components' kbs_protocol where it has one.
const (
	DefaultTimeout          = 60 * time.Second
	DefaultRCARAttempts     = 5
	DefaultResourceAttempts = 3
	DefaultBackoffInitial   = 500 * time.Millisecond
	DefaultBackoffMax       = 8 * time.Second
	DefaultMaxResourceSize  = 16 << 20
)

// Size bounds of KBS answers.
const (
	maxChallenge = 1 << 20
	maxErrorBody = 64 << 10
	maxNonce     = 64 << 10
	// maxSEChallenge bounds an SE challenge, whose nonce is an attestation
	// request (se.ParseRequest applies its own, tighter bound).
	maxSEChallenge = 4 << 20
)

// Token types of the AA's GetToken (guest-components' TokenType).
const (
	TokenTypeKBS    = "kbs"
	TokenTypeCoCoAS = "coco_as"
)

// Backoff is the delay between retries: Initial, doubling up to Max, each
// drawn uniformly from [d/2, d] (jitter) so guests do not retry in step.
type Backoff struct {
	Initial, Max time.Duration
}

// withCause adds cause (a context error) to err on the same line, unless
// err already wraps it: errors.Join would repeat it on a second line.
func withCause(err, cause error) error {
	if errors.Is(err, cause) {
		return err
	}
	return fmt.Errorf("%w: %w", err, cause)
}

func (b Backoff) delay(attempt int) time.Duration {
	d := b.Initial
	for i := 1; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	if d <= 1 {
		return d
	}
	return d/2 + rand.N(d/2+1)
}

// Config configures a Client.
type Config struct {
	// URL is the KBS that attests the guest and issues tokens
	// (aa.toml token_configs.kbs.url), e.g. "https://kbs.example:8080".
	URL string
	// ResourceURL is the KBS resources are fetched from with the token as
	// a bearer credential (cdh.toml kbc.url); URL when empty. A different
	// KBS makes this passport mode.
	ResourceURL string
	// ExtraRootCAs are PEM certificates trusted for both KBSs in addition
	// to the system roots (aa.toml cert, cdh.toml kbs_cert).
	ExtraRootCAs string
	// KeyAlgorithm is the TEE key pair's algorithm; KeyECDHP256 when empty.
	KeyAlgorithm KeyAlgorithm
	// Primary produces the evidence (required).
	Primary attester.Attester
	// Additional are device attesters whose evidence travels as
	// additional_evidence.
	Additional []attester.Attester
	// InitData is the initdata TOML exactly as delivered (UTF-8); sent as
	// init-data, or null when nil.
	InitData []byte
	// Timeout bounds each HTTP request; DefaultTimeout when 0.
	Timeout time.Duration
	// RCARAttempts bounds the tries of one RCAR handshake;
	// DefaultRCARAttempts when 0.
	RCARAttempts int
	// ResourceAttempts bounds the tries of one resource fetch (each 401
	// costs one and triggers a new RCAR); DefaultResourceAttempts when 0.
	ResourceAttempts int
	// Backoff spaces retries; the defaults when zero.
	Backoff Backoff
	// MaxResourceSize bounds a resource's plaintext;
	// DefaultMaxResourceSize when 0.
	MaxResourceSize int64
	// Now is the guest clock (time.Now when nil). It must carry a
	// monotonic reading (derive it from time.Now).
	Now func() time.Time
	// Logger receives progress and retries; discarded when nil.
	Logger *slog.Logger
}

// Client is a KBS client. It is safe for concurrent use; concurrent calls
// share one token and one RCAR at a time.
type Client struct {
	cfg     Config
	base    string
	resBase string
	hc      *http.Client
	log     *slog.Logger
	now     func() time.Time

	sem chan struct{} // held during an RCAR

	mu      sync.Mutex
	key     *teeKey
	token   *Token
	session string // kbs-session-id at base
}

// New returns a Client. It checks the configuration but does not contact
// the KBS; the TEE key is generated at the first attestation.
func New(cfg Config) (*Client, error) {
	base, err := baseURL("URL", cfg.URL)
	if err != nil {
		return nil, err
	}
	resBase := base
	if cfg.ResourceURL != "" {
		if resBase, err = baseURL("ResourceURL", cfg.ResourceURL); err != nil {
			return nil, err
		}
	}
	if cfg.KeyAlgorithm, err = ParseKeyAlgorithm(string(cfg.KeyAlgorithm)); err != nil {
		return nil, err
	}
	if cfg.Primary == nil {
		return nil, fmt.Errorf("kbs client: Primary attester is required: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.Primary.Tee() == attester.TeeSE && len(cfg.Additional) > 0 {
		return nil, fmt.Errorf("kbs client: Additional: device attesters are not supported with an se primary attester (as in guest-components): %w", errdefs.ErrInvalidArgument)
	}
	seen := map[attester.Tee]bool{}
	for i, a := range cfg.Additional {
		if a == nil || seen[a.Tee()] {
			return nil, fmt.Errorf("kbs client: Additional[%d] is nil or a second %q attester: %w", i, a.Tee(), errdefs.ErrInvalidArgument)
		}
		seen[a.Tee()] = true
	}
	if cfg.InitData != nil && !utf8.Valid(cfg.InitData) {
		return nil, fmt.Errorf("kbs client: InitData is not UTF-8: %w", errdefs.ErrInvalidArgument)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.RCARAttempts <= 0 {
		cfg.RCARAttempts = DefaultRCARAttempts
	}
	if cfg.ResourceAttempts <= 0 {
		cfg.ResourceAttempts = DefaultResourceAttempts
	}
	if cfg.Backoff.Initial <= 0 {
		cfg.Backoff.Initial = DefaultBackoffInitial
	}
	if cfg.Backoff.Max < cfg.Backoff.Initial {
		cfg.Backoff.Max = max(DefaultBackoffMax, cfg.Backoff.Initial)
	}
	if cfg.MaxResourceSize <= 0 {
		cfg.MaxResourceSize = DefaultMaxResourceSize
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	roots, err := x509.SystemCertPool()
	if err != nil {
		roots = x509.NewCertPool()
	}
	if cfg.ExtraRootCAs != "" && !roots.AppendCertsFromPEM([]byte(cfg.ExtraRootCAs)) {
		return nil, fmt.Errorf("kbs client: ExtraRootCAs holds no PEM certificate: %w", errdefs.ErrInvalidArgument)
	}
	tr := &http.Transport{
		// No proxy from the environment: the agent's environment is
		// not trusted to redirect attestation traffic.
		Proxy:               nil,
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12, Time: cfg.Now},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
	for _, b := range []string{base, resBase} {
		if strings.HasPrefix(b, "http://") {
			log.Warn("KBS reached over plain HTTP: the channel is not authenticated", "kbs", b)
		}
	}
	return &Client{
		cfg:     cfg,
		base:    base,
		resBase: resBase,
		hc: &http.Client{
			Transport: tr,
			Timeout:   cfg.Timeout,
			// The KBS never redirects; following one would send the
			// token elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		log: log,
		now: cfg.Now,
		sem: make(chan struct{}, 1),
	}, nil
}

func baseURL(field, s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("kbs client: %s %q: want http(s)://host[:port][/path]: %w", field, sanitize(s), errdefs.ErrInvalidArgument)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// URL is the KBS that attests the guest.
func (c *Client) URL() string { return c.base }

// ResourceURL is the KBS resources come from.
func (c *Client) ResourceURL() string { return c.resBase }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

func (c *Client) teeKey() (*teeKey, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.key == nil {
		k, err := newTEEKey(c.cfg.KeyAlgorithm)
		if err != nil {
			return nil, err
		}
		c.key = k
	}
	return c.key, nil
}

// TEEPublicKey returns the tee-pubkey JWK the client binds into evidence,
// generating the key pair if needed.
func (c *Client) TEEPublicKey() (TEEPubKey, error) {
	k, err := c.teeKey()
	if err != nil {
		return TEEPubKey{}, err
	}
	return k.pub, nil
}

// AttestationToken returns a token that may still be reused, running RCAR
// when there is none.
func (c *Client) AttestationToken(ctx context.Context) (*Token, error) {
	return c.validToken(ctx, nil)
}

// Attest runs a fresh RCAR handshake (with retries) and keeps its token.
func (c *Client) Attest(ctx context.Context) (*Token, error) {
	c.mu.Lock()
	stale := c.token
	c.mu.Unlock()
	if stale == nil {
		stale = &Token{}
	}
	return c.validToken(ctx, stale)
}

// Token implements the Attestation Agent's GetToken (aaservice.TokenGetter):
// for tokenType "kbs" the JSON {"token":"<JWT>","tee_keypair":"<PEM>"}
// (RSA keys as PKCS#1, EC keys as PKCS#8), as guest-components' AA answers.
func (c *Client) Token(ctx context.Context, tokenType string) ([]byte, error) {
	switch tokenType {
	case TokenTypeKBS:
	case TokenTypeCoCoAS:
		return nil, fmt.Errorf("token type %q: %w", tokenType, errdefs.ErrNotImplemented)
	default:
		return nil, fmt.Errorf("token type %q: want %q: %w", sanitize(tokenType), TokenTypeKBS, errdefs.ErrInvalidArgument)
	}
	tok, err := c.AttestationToken(ctx)
	if err != nil {
		return nil, err
	}
	k, err := c.teeKey()
	if err != nil {
		return nil, err
	}
	p, err := k.pem()
	if err != nil {
		return nil, err
	}
	return json.Marshal(struct {
		Token      string `json:"token"`
		TEEKeyPair string `json:"tee_keypair"`
	}{tok.Raw, string(p)})
}

// validToken returns the cached token unless it is stale (no longer
// reusable, or the very token a KBS just refused), else runs RCAR. Only one
// RCAR runs at a time; callers that waited for it take its token.
func (c *Client) validToken(ctx context.Context, stale *Token) (*Token, error) {
	c.mu.Lock()
	t := c.token
	c.mu.Unlock()
	if t != nil && t != stale && t.reusable(c.now()) {
		return t, nil
	}
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("kbs %s: waiting for attestation: %w", c.base, ctx.Err())
	}
	defer func() { <-c.sem }()
	c.mu.Lock()
	if c.token != nil && c.token != t && c.token.reusable(c.now()) {
		t = c.token // refreshed while we waited
		c.mu.Unlock()
		return t, nil
	}
	c.mu.Unlock()
	t, err := c.rcarWithRetry(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.token = t
	c.mu.Unlock()
	return t, nil
}

func (c *Client) rcarWithRetry(ctx context.Context) (*Token, error) {
	var refusedAttest bool
	for attempt := 1; ; attempt++ {
		start := time.Now()
		t, err := c.rcar(ctx)
		if err == nil {
			life := t.validUntil.Sub(t.received)
			c.log.Info("KBS attestation done", "kbs", c.base, "tee", string(c.cfg.Primary.Tee()),
				"attempt", attempt, "duration", time.Since(start), "token_reuse_for", life.Round(time.Millisecond))
			if skew := t.clockSkew(); skew > 5*time.Minute || skew < -5*time.Minute {
				c.log.Warn("guest clock differs from the KBS's; token reuse follows the KBS-granted lifetime", "kbs", c.base, "skew", skew.Round(time.Second))
			}
			return t, nil
		}
		if ctx.Err() != nil {
			return nil, withCause(err, ctx.Err())
		}
		retry := retryable(err)
		var ke *Error
		isKE := errors.As(err, &ke)
		// A refused /attest may be an expired session (slow evidence):
		// one fresh handshake, no more.
		if !retry && isKE && ke.Step == StepAttest && ke.Status == http.StatusUnauthorized && !refusedAttest {
			refusedAttest, retry = true, true
		}
		if !retry || attempt >= c.cfg.RCARAttempts {
			if isKE {
				ke.Attempts = attempt
			}
			return nil, err
		}
		d := c.cfg.Backoff.delay(attempt)
		c.log.Warn("KBS attestation failed, retrying", "kbs", c.base, "attempt", attempt, "of", c.cfg.RCARAttempts, "in", d, "error", err)
		if serr := sleep(ctx, d); serr != nil {
			return nil, withCause(err, serr)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// rcar is one Request-Challenge-Attestation-Response handshake.
func (c *Client) rcar(ctx context.Context) (*Token, error) {
	key, err := c.teeKey()
	if err != nil {
		return nil, &Error{KBS: c.base, Step: StepEvidence, Err: err}
	}
	tee := c.cfg.Primary.Tee()
	extra, err := json.Marshal(map[string]any{"supported-hash-algorithms": supportedHashes})
	if err != nil {
		return nil, err
	}
	reqBody, err := json.Marshal(Request{Version: ProtocolVersion, Tee: string(tee), ExtraParams: extra})
	if err != nil {
		return nil, err
	}
	challengeLimit, nonceLimit := int64(maxChallenge), maxNonce
	if tee == attester.TeeSE {
		challengeLimit, nonceLimit = maxSEChallenge, maxSEChallenge
	}
	body, session, err := c.do(ctx, StepAuth, c.base, http.MethodPost, APIPrefix+"/auth", reqBody, "", "", challengeLimit)
	if err != nil {
		return nil, err
	}
	if session == "" {
		return nil, &Error{KBS: c.base, Step: StepAuth, Err: fmt.Errorf("no %s cookie in the answer: %w", SessionCookie, errdefs.ErrInvalidArgument)}
	}
	var ch Challenge
	if err := json.Unmarshal(body, &ch); err != nil {
		return nil, &Error{KBS: c.base, Step: StepAuth, Err: fmt.Errorf("challenge: %v: %w", err, errdefs.ErrInvalidArgument)}
	}
	if ch.Nonce == "" || len(ch.Nonce) > nonceLimit {
		return nil, &Error{KBS: c.base, Step: StepAuth, Err: fmt.Errorf("challenge nonce empty or longer than %d bytes: %w", nonceLimit, errdefs.ErrInvalidArgument)}
	}
	h, err := SelectedHash(ch.ExtraParams)
	if err != nil {
		return nil, &Error{KBS: c.base, Step: StepAuth, Err: err}
	}

	rd := RuntimeData{Nonce: ch.Nonce, TEEPubKey: key.pub}
	additional, err := c.additionalEvidence(ctx, h, rd)
	if err != nil {
		return nil, &Error{KBS: c.base, Step: StepEvidence, Err: err}
	}
	reportData, err := RuntimeDigest(h, rd, additional)
	if err != nil {
		return nil, &Error{KBS: c.base, Step: StepEvidence, Err: err}
	}
	primaryInput := reportData
	if tee == attester.TeeSE {
		// IBM SE: the nonce is the verifier's attestation request; the
		// attester takes it, with the digest added, instead of a digest.
		if primaryInput, err = se.InjectRuntimeDigest(ch.Nonce, reportData); err != nil {
			return nil, &Error{KBS: c.base, Step: StepAuth, Err: fmt.Errorf("challenge nonce is not an se attestation request: %w", err)}
		}
	}
	ev, err := c.cfg.Primary.Evidence(ctx, primaryInput)
	if err != nil {
		return nil, &Error{KBS: c.base, Step: StepEvidence, Err: fmt.Errorf("%s evidence: %w", tee, err)}
	}
	if !json.Valid(ev) {
		return nil, &Error{KBS: c.base, Step: StepEvidence, Err: fmt.Errorf("%s evidence is not JSON: %w", tee, errdefs.ErrInternal)}
	}
	att := Attestation{
		RuntimeData: rd,
		TeeEvidence: CompositeEvidence{Primary: ev, Additional: additional},
	}
	if c.cfg.InitData != nil {
		att.InitData = &InitData{Format: InitDataFormat, Body: string(c.cfg.InitData)}
	}
	attBody, err := json.Marshal(att)
	if err != nil {
		return nil, &Error{KBS: c.base, Step: StepAttest, Err: err}
	}
	body, _, err = c.do(ctx, StepAttest, c.base, http.MethodPost, APIPrefix+"/attest", attBody, "", session, MaxTokenSize+4096)
	if err != nil {
		return nil, err
	}
	var ar AttestResponse
	if err := json.Unmarshal(body, &ar); err != nil {
		return nil, &Error{KBS: c.base, Step: StepAttest, Err: fmt.Errorf("answer: %v: %w", err, errdefs.ErrInvalidArgument)}
	}
	t, err := ParseToken(ar.Token)
	if err != nil {
		return nil, &Error{KBS: c.base, Step: StepAttest, Err: err}
	}
	t.accept(c.now())
	c.mu.Lock()
	c.session = session
	c.mu.Unlock()
	return t, nil
}

// additionalEvidence returns the devices' evidence as the JSON text
// {"<tee>":<evidence>,…} (keys sorted), or "" without devices.
func (c *Client) additionalEvidence(ctx context.Context, h crypto.Hash, rd RuntimeData) (string, error) {
	if len(c.cfg.Additional) == 0 {
		return "", nil
	}
	dd, err := DeviceRuntimeDigest(h, rd)
	if err != nil {
		return "", err
	}
	devs := slices.Clone(c.cfg.Additional)
	slices.SortFunc(devs, func(a, b attester.Attester) int { return strings.Compare(string(a.Tee()), string(b.Tee())) })
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, d := range devs {
		ev, err := d.Evidence(ctx, dd)
		if err != nil {
			return "", fmt.Errorf("%s evidence: %w", d.Tee(), err)
		}
		if i > 0 {
			buf.WriteByte(',')
		}
		name, _ := json.Marshal(string(d.Tee()))
		buf.Write(name)
		buf.WriteByte(':')
		if err := json.Compact(&buf, ev); err != nil {
			return "", fmt.Errorf("%s evidence is not JSON: %v: %w", d.Tee(), err, errdefs.ErrInternal)
		}
	}
	buf.WriteByte('}')
	return buf.String(), nil
}

// GetResource fetches and decrypts a resource. Each 401 from the resource
// KBS drops the token and re-attests (a PolicyDeny does not: attesting again
// cannot change the policy's answer); transport failures and 5xx are
// retried with back-off; at most Config.ResourceAttempts requests are made.
func (c *Client) GetResource(ctx context.Context, u ResourceURI) ([]byte, error) {
	if u.Plugin == "" || len(u.Segments) == 0 {
		return nil, fmt.Errorf("kbs client: empty resource URI: %w", errdefs.ErrInvalidArgument)
	}
	var stale *Token
	for attempt := 1; ; attempt++ {
		tok, err := c.validToken(ctx, stale)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		key, session := c.key, ""
		if c.resBase == c.base {
			session = c.session
		}
		c.mu.Unlock()
		body, _, err := c.do(ctx, StepResource, c.resBase, http.MethodGet, u.endpoint(), nil, tok.Raw, session, maxJWE(c.cfg.MaxResourceSize))
		if err == nil {
			plain, err := key.decrypt(body)
			if err != nil {
				return nil, &Error{KBS: c.resBase, Step: StepResource, Resource: u.String(), Err: err}
			}
			if int64(len(plain)) > c.cfg.MaxResourceSize {
				return nil, &Error{KBS: c.resBase, Step: StepResource, Resource: u.String(), Err: fmt.Errorf("%d bytes, more than %d: %w", len(plain), c.cfg.MaxResourceSize, errdefs.ErrOutOfRange)}
			}
			return plain, nil
		}
		var ke *Error
		if !errors.As(err, &ke) || ctx.Err() != nil {
			return nil, err
		}
		ke.Resource = u.String()
		var delay time.Duration
		switch {
		case ke.Status == http.StatusUnauthorized && ke.Type == "PolicyDeny":
			return nil, err
		case ke.Status == http.StatusUnauthorized:
			stale = tok
		case retryable(err):
			delay = c.cfg.Backoff.delay(attempt)
		default:
			return nil, err
		}
		if attempt >= c.cfg.ResourceAttempts {
			ke.Attempts = attempt
			return nil, err
		}
		c.log.Warn("KBS resource request failed, retrying", "kbs", c.resBase, "resource", u.String(), "attempt", attempt, "of", c.cfg.ResourceAttempts, "reattest", stale == tok, "error", err)
		if serr := sleep(ctx, delay); serr != nil {
			return nil, withCause(err, serr)
		}
	}
}

// Resource parses a kbs:// URI and fetches the resource it names.
func (c *Client) Resource(ctx context.Context, uri string) ([]byte, error) {
	u, err := ParseResourceURI(uri)
	if err != nil {
		return nil, err
	}
	return c.GetResource(ctx, u)
}

// do sends one request and returns the 200 body (at most limit bytes) and
// the session cookie the answer sets. Anything else is an *Error.
func (c *Client) do(ctx context.Context, step, base, method, path string, body []byte, bearer, session string, limit int64) ([]byte, string, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return nil, "", &Error{KBS: base, Step: step, Err: fmt.Errorf("%v: %w", err, errdefs.ErrInvalidArgument)}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "cova-kbs-client/"+ProtocolVersion)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if session != "" {
		req.AddCookie(&http.Cookie{Name: SessionCookie, Value: session})
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, "", &Error{KBS: base, Step: step, Err: err, class: errdefs.ErrUnavailable}
	}
	defer resp.Body.Close()
	var set string
	for _, ck := range resp.Cookies() {
		if ck.Name == SessionCookie {
			set = ck.Value
		}
	}
	if resp.StatusCode != http.StatusOK {
		e := &Error{KBS: base, Step: step, Status: resp.StatusCode}
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		var info ErrorInformation
		if json.Unmarshal(b, &info) == nil && (info.Type != "" || info.Detail != "") {
			e.Type, e.Detail = errorVariant(info.Type), sanitize(info.Detail)
		} else if len(b) > 0 {
			e.Detail = sanitize(string(b))
		}
		return nil, "", e
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, "", &Error{KBS: base, Step: step, Status: 0, Err: fmt.Errorf("reading the answer: %w", err), class: errdefs.ErrUnavailable}
	}
	if int64(len(b)) > limit {
		return nil, "", &Error{KBS: base, Step: step, Err: fmt.Errorf("answer longer than %d bytes: %w", limit, errdefs.ErrOutOfRange)}
	}
	return b, set, nil
}
