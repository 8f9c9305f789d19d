// Package ehsm is the "ehsm" KMS provider for sealed secrets: envelope
// data keys are unwrapped by an Intel eHSM-KMS service (github.com/intel/ehsm)
// with its REST Decrypt action, as guest-components' ehsm plugin does
// (through the ehsm_client crate), here with net/http and crypto only.
//
// Roles: envelope decryption only. The reference registers ehsm as a
// decryptor and not as a vault provider, so SecretGetter returns an error
// wrapping errdefs.ErrNotImplemented.
//
// Settings and annotations match the reference plugin:
//   - provider_settings: {"app_id": "<eHSM application id>",
//     "endpoint": "https://host[:port]"} (both required strings);
//   - annotations: none ({}; members are ignored, as the reference does).
//
// The sealed secret's key_id is the eHSM key id and its encrypted_key
// decodes to the eHSM ciphertext text (standard base64), which is sent as
// is; the service's plaintext (standard base64) decodes to the data key.
//
// Credentials: the API key of app_id comes from a CredentialsProvider, by
// default CredentialDir(DefaultCredentialDir), i.e. the reference's file
// …/kms-credential/ehsm/credential_<app_id>.json holding
// {"AppId": "…", "ApiKey": "…"}, which cdh.toml [[credentials]] fetches
// from the KBS at start (kms.FetchCredentials).
//
// Wire protocol (eHSM-KMS REST API): POST <endpoint>/ehsm?Action=Decrypt,
// Content-Type application/json, body
//
//	{"appid": "…", "nonce": "<decimal>", "timestamp": "<unix ms, 13 digits>",
//	 "payload": {"ciphertext": "<b64>", "keyid": "…"}, "sign": "<b64>"}
//
// where sign is base64(HMAC-SHA256(api_key, s)) and s joins the members
// other than sign, sorted by name, as name=value with "&", the payload
// member's value being its own members canonicalized the same way (see
// signingString). The nonce is a fresh random 64-bit number and the
// timestamp the current time in milliseconds (eHSM accepts ±10 minutes and
// refuses a repeated nonce and timestamp). eHSM answers HTTP 200 with
// {"code": 200, "message": "…", "result": {"plaintext": "<b64>"}}; any
// other code is an error named in "message".
//
// Deviations from the reference:
//   - TLS certificates are verified (the reference's client accepts any
//     certificate); Config.ExtraRootCAs adds roots for a private eHSM CA.
//   - The endpoint is validated: https://host[:port][/prefix]; plain http
//     only for loopback hosts; no user info, query or fragment. Redirects
//     are not followed. Config.AllowedEndpoints can pin the endpoints a
//     sealed secret may name: without signature verification of sealed
//     secrets, a host-chosen endpoint would receive a signed Decrypt
//     request it could replay to the real service.
//   - The response code and shape are checked and errors carry eHSM's code
//     and message (the reference panics or reports a missing plaintext);
//     transport errors and HTTP 429/5xx from a proxy are retried a bounded
//     number of times with a fresh nonce and timestamp.
//   - The credential file is also looked up as credential.<app_id>.json,
//     the name the reference's documentation gives, when
//     credential_<app_id>.json (the name its code reads) is absent.
//   - app_id must be letters, digits, '-' or '_' (it names a file), and
//     key_id printable ASCII without '"', '\\', '&' or '=' (it enters the
//     signed string); the service's ids are UUIDs.
//
// Errors name the operation, the endpoint host, the HTTP status and eHSM's
// code and message; they never carry data keys, ciphertext, the API key or
// the signature.
package ehsm

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
)

// Wire constants.
const (
	ContentType   = "application/json"
	ActionDecrypt = "Decrypt"
	// CodeOK is eHSM's success code in a response's "code" member.
	CodeOK = 200
)

// Defaults and bounds.
const (
	DefaultTimeout = 30 * time.Second
	maxResponse    = 64 << 10
	maxAttempts    = 3
	// maxData is eHSM's bound on Decrypt's plaintext (6 KiB); a
	// ciphertext adds a 12-byte IV and a 16-byte tag.
	maxData       = 6 << 10
	maxCiphertext = (maxData + 30) * 4 / 3
	maxID         = 128
)

// Config configures the provider. Every field is optional.
type Config struct {
	// Credentials supplies API keys; CredentialDir(DefaultCredentialDir)
	// when nil.
	Credentials CredentialsProvider
	// AllowedEndpoints, when not empty, lists the only endpoints
	// (https://host[:port][/prefix]) provider_settings.endpoint may name.
	AllowedEndpoints []string
	// ExtraRootCAs are PEM certificates trusted besides the system roots.
	ExtraRootCAs string
	// HTTPClient replaces the client built from ExtraRootCAs (tests).
	HTTPClient *http.Client
	// Timeout bounds each request; DefaultTimeout when 0.
	Timeout time.Duration
	// Logger receives one debug line per call (operation, endpoint host,
	// app and key ids, outcome; never values); discarded when nil.
	Logger *slog.Logger
	// Now is the clock for request timestamps; time.Now when nil.
	Now func() time.Time
}

// Provider is the "ehsm" kms.Provider.
type Provider struct {
	creds   CredentialsProvider
	allowed map[string]bool
	hc      *http.Client
	log     *slog.Logger
	now     func() time.Time
	backoff time.Duration
}

var _ kms.Provider = (*Provider)(nil)

// New validates cfg and returns the provider.
func New(cfg Config) (*Provider, error) {
	p := &Provider{creds: cfg.Credentials, hc: cfg.HTTPClient, log: cfg.Logger, now: cfg.Now, backoff: 100 * time.Millisecond}
	if p.creds == nil {
		p.creds = CredentialDir(DefaultCredentialDir)
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.now == nil {
		p.now = time.Now
	}
	if len(cfg.AllowedEndpoints) > 0 {
		p.allowed = map[string]bool{}
		for _, e := range cfg.AllowedEndpoints {
			u, err := parseEndpoint(e)
			if err != nil {
				return nil, fmt.Errorf("ehsm: AllowedEndpoints: %w", err)
			}
			p.allowed[u.String()] = true
		}
	}
	if p.hc == nil {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.ExtraRootCAs != "" {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM([]byte(cfg.ExtraRootCAs)) {
				return nil, fmt.Errorf("ehsm: ExtraRootCAs: no PEM certificate found: %w", errdefs.ErrInvalidArgument)
			}
			tc.RootCAs = pool
		}
		timeout := cfg.Timeout
		if timeout <= 0 {
			timeout = DefaultTimeout
		}
		// No proxy from the environment (host-controlled) and no
		// redirects (a redirected POST would carry the signed request
		// elsewhere).
		p.hc = &http.Client{
			Timeout: timeout,
			Transport: &http.Transport{
				TLSClientConfig: tc, ForceAttemptHTTP2: true, MaxIdleConns: 4,
				IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 10 * time.Second,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return p, nil
}

// parseEndpoint validates an eHSM base URL and returns it without a
// trailing slash.
func parseEndpoint(s string) (*url.URL, error) {
	bad := func(why string) (*url.URL, error) {
		return nil, fmt.Errorf("endpoint %q: %s: %w", kms.Clip(s), why, errdefs.ErrInvalidArgument)
	}
	if s == "" {
		return bad("empty")
	}
	if len(s) > 2048 {
		return bad("too long")
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.ContainsAny(s, "#?") {
		return bad("want https://host[:port][/prefix]")
	}
	for _, c := range strings.Split(u.Path, "/") {
		if c == "." || c == ".." {
			return bad(`"." or ".." in the path`)
		}
	}
	host := u.Hostname()
	switch u.Scheme {
	case "https":
	case "http":
		ip := net.ParseIP(host)
		if host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return bad("plain http only for loopback hosts")
		}
	default:
		return bad("want https://host[:port][/prefix]")
	}
	out := &url.URL{Scheme: u.Scheme, Host: strings.ToLower(u.Host), Path: strings.TrimRight(u.Path, "/")}
	if u.RawPath != "" {
		out.RawPath = strings.TrimRight(u.RawPath, "/")
	}
	return out, nil
}

// validAppID reports whether id is a safe application id: 1..128 letters,
// digits, '-' or '_' (it names the credential file).
func validAppID(id string) bool {
	if id == "" || len(id) > maxID {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validKeyID reports whether id can enter the signed string unambiguously:
// 1..128 printable ASCII bytes other than space, '"', '\\', '&' and '='.
func validKeyID(id string) bool {
	if id == "" || len(id) > maxID {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c <= ' ' || c > '~' || c == '"' || c == '\\' || c == '&' || c == '=' {
			return false
		}
	}
	return true
}

// settings is the reference's EhsmProviderSettings.
type settings struct {
	AppID    *string `json:"app_id"`
	Endpoint *string `json:"endpoint"`
}

// Client returns a client for application appID at endpoint.
func (p *Provider) Client(appID, endpoint string) (*Client, error) {
	if !validAppID(appID) {
		return nil, fmt.Errorf("ehsm: provider_settings.app_id %q: want 1..%d letters, digits, '-' or '_': %w", kms.Clip(appID), maxID, errdefs.ErrInvalidArgument)
	}
	ep, err := parseEndpoint(endpoint)
	if err != nil {
		return nil, fmt.Errorf("ehsm: provider_settings.%w", err)
	}
	if p.allowed != nil && !p.allowed[ep.String()] {
		return nil, fmt.Errorf("ehsm: provider_settings.endpoint %q: not in the configured allowed endpoints: %w", kms.Clip(endpoint), errdefs.ErrPermissionDenied)
	}
	return &Client{p: p, appID: appID, ep: ep}, nil
}

// Decrypter returns the client that provider_settings name.
func (p *Provider) Decrypter(_ context.Context, s kms.Settings) (kms.Decrypter, error) {
	var st settings
	if err := kms.DecodeMembers("provider_settings", s, &st); err != nil {
		return nil, fmt.Errorf("ehsm: %w", err)
	}
	if st.AppID == nil {
		return nil, fmt.Errorf("ehsm: provider_settings.app_id: missing: %w", errdefs.ErrInvalidArgument)
	}
	if st.Endpoint == nil {
		return nil, fmt.Errorf("ehsm: provider_settings.endpoint: missing: %w", errdefs.ErrInvalidArgument)
	}
	return p.Client(*st.AppID, *st.Endpoint)
}

// SecretGetter is not offered: eHSM is an envelope (decrypt) provider only.
func (p *Provider) SecretGetter(context.Context, kms.Settings) (kms.SecretGetter, error) {
	return nil, fmt.Errorf("ehsm: vault secrets (get_secret) are not offered by the eHSM provider: %w", errdefs.ErrNotImplemented)
}

// Client calls one eHSM-KMS endpoint as one application.
type Client struct {
	p     *Provider
	appID string
	ep    *url.URL
}

var _ kms.Decrypter = (*Client)(nil)

// decryptPayload is Decrypt's payload member.
type decryptPayload struct {
	Ciphertext string `json:"ciphertext"`
	KeyID      string `json:"keyid"`
}

// request is the common request body.
type request struct {
	AppID     string `json:"appid"`
	Nonce     string `json:"nonce"`
	Payload   any    `json:"payload"`
	Timestamp string `json:"timestamp"`
	Sign      string `json:"sign"`
}

// response is the common response body; members are raw so that their
// types can be checked.
type response struct {
	Code    json.RawMessage `json:"code"`
	Message json.RawMessage `json:"message"`
	Result  json.RawMessage `json:"result"`
}

// Decrypt calls eHSM Decrypt with ciphertext (the eHSM ciphertext text) and
// keyID, and returns the decoded plaintext. Annotations are ignored.
func (c *Client) Decrypt(ctx context.Context, ciphertext []byte, keyID string, _ kms.Annotations) ([]byte, error) {
	const name = "ehsm Decrypt"
	if !validKeyID(keyID) {
		return nil, fmt.Errorf("%s: key_id %q: want 1..%d printable ASCII characters other than space, '\"', '\\', '&' and '=': %w", name, kms.Clip(keyID), maxID, errdefs.ErrInvalidArgument)
	}
	if len(ciphertext) == 0 || len(ciphertext) > maxCiphertext || !isBase64(ciphertext) {
		return nil, fmt.Errorf("%s: encrypted_key: want the eHSM ciphertext, 1..%d characters of padded standard base64 (got %d bytes): %w", name, maxCiphertext, len(ciphertext), errdefs.ErrInvalidArgument)
	}
	cred, err := c.p.creds.Credential(ctx, c.appID)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if cred.APIKey == "" {
		return nil, fmt.Errorf("%s: empty API key for app_id %q: %w", name, c.appID, errdefs.ErrFailedPrecondition)
	}
	payload := decryptPayload{Ciphertext: string(ciphertext), KeyID: keyID}
	signed := []param{{key: "ciphertext", value: payload.Ciphertext}, {key: "keyid", value: payload.KeyID}}
	raw, err := c.call(ctx, ActionDecrypt, cred.APIKey, payload, signed, keyID)
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	var res struct {
		Plaintext *string `json:"plaintext"`
	}
	if err := json.Unmarshal(raw, &res); err != nil || res.Plaintext == nil {
		return nil, fmt.Errorf("%s at %s: result carries no plaintext string: %w", name, c.ep.Host, errdefs.ErrUnknown)
	}
	b64 := []byte(*res.Plaintext)
	defer clear(b64)
	if len(b64) == 0 || len(b64) > (maxData+2)/3*4 || !isBase64(b64) {
		return nil, fmt.Errorf("%s at %s: result plaintext: want 1..%d bytes as padded standard base64 (got %d characters): %w", name, c.ep.Host, maxData, len(b64), errdefs.ErrUnknown)
	}
	out := make([]byte, base64.StdEncoding.DecodedLen(len(b64)))
	n, err := base64.StdEncoding.Strict().Decode(out, b64)
	if err != nil || n == 0 {
		clear(out)
		return nil, fmt.Errorf("%s at %s: result plaintext: malformed base64: %w", name, c.ep.Host, errdefs.ErrUnknown)
	}
	return out[:n], nil
}

// isBase64 reports whether b is padded standard base64 as eHSM checks it
// (length a multiple of 4, alphabet A-Z a-z 0-9 + /, up to two '=' at the
// end) and decodes strictly.
func isBase64(b []byte) bool {
	if len(b)%4 != 0 {
		return false
	}
	_, err := base64.StdEncoding.Strict().DecodeString(string(b))
	return err == nil
}

// call posts a signed action, retrying transport errors and HTTP 429/5xx a
// bounded number of times (each attempt with a fresh nonce and timestamp),
// and returns the "result" member of a code-200 response.
func (c *Client) call(ctx context.Context, action, apiKey string, payload any, signed []param, subject string) ([]byte, error) {
	name := "ehsm " + action
	var last error
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if attempt > 1 {
			d := c.p.backoff << (attempt - 2)
			d += mrand.N(d/2 + 1)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("%s: %w (last error: %w)", name, ctx.Err(), last)
			case <-t.C:
			}
		}
		out, retry, err := c.once(ctx, action, apiKey, payload, signed)
		c.p.log.DebugContext(ctx, "ehsm call", "op", action, "endpoint", c.ep.Host, "app_id", c.appID, "subject", kms.Clip(subject), "attempt", attempt, "ok", err == nil)
		if err == nil {
			return out, nil
		}
		last = fmt.Errorf("%s at %s: %w", name, c.ep.Host, err)
		if !retry || ctx.Err() != nil {
			break
		}
	}
	return nil, last
}

// nonce returns a random 64-bit number in decimal, as the reference client
// sends.
func nonce() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return strconv.FormatUint(binary.LittleEndian.Uint64(b[:]), 10)
}

// once performs one signed request.
func (c *Client) once(ctx context.Context, action, apiKey string, payload any, signed []param) ([]byte, bool, error) {
	req := request{
		AppID:     c.appID,
		Nonce:     nonce(),
		Payload:   payload,
		Timestamp: strconv.FormatInt(c.p.now().UnixMilli(), 10),
	}
	req.Sign = sign(apiKey, signingString([]param{
		{key: "appid", value: req.AppID},
		{key: "nonce", value: req.Nonce},
		{key: "payload", nested: signed},
		{key: "timestamp", value: req.Timestamp},
	}))
	body, err := json.Marshal(req)
	if err != nil {
		return nil, false, fmt.Errorf("encoding request: %w", errdefs.ErrInvalidArgument)
	}
	u := *c.ep
	u.Path += "/ehsm"
	if u.RawPath != "" {
		u.RawPath += "/ehsm"
	}
	u.RawQuery = "Action=" + url.QueryEscape(action)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(body))
	if err != nil {
		return nil, false, fmt.Errorf("building request: %w", errdefs.ErrInvalidArgument)
	}
	hreq.Header.Set("Content-Type", ContentType)
	hreq.Header.Set("Accept", ContentType)
	resp, err := c.p.hc.Do(hreq)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, fmt.Errorf("%w: %w", ctx.Err(), errdefs.ErrUnavailable)
		}
		// The *url.Error names the URL (endpoint and action) only. A
		// certificate that does not verify will not verify on retry.
		var cve *tls.CertificateVerificationError
		return nil, !errors.As(err, &cve), fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	raw, retry, err := kms.ReadResponse(resp, maxResponse)
	if err != nil {
		return nil, retry, err
	}
	defer clear(raw)
	if resp.StatusCode != http.StatusOK {
		// eHSM itself answers HTTP 200 with its code in the body; this is
		// a proxy's or the web framework's error.
		text := fmt.Sprintf("HTTP %d", resp.StatusCode)
		if code, msg, ok := parseError(raw); ok {
			text += describe(code, msg)
		}
		return nil, retryable(resp.StatusCode), fmt.Errorf("%s: %w", text, httpClass(resp.StatusCode))
	}
	var r response
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, false, fmt.Errorf("HTTP 200: malformed response (not a JSON object): %w", errdefs.ErrUnknown)
	}
	var code int
	if err := json.Unmarshal(r.Code, &code); err != nil {
		return nil, false, fmt.Errorf("HTTP 200: malformed response (no integer code): %w", errdefs.ErrUnknown)
	}
	if code != CodeOK {
		var msg string
		_ = json.Unmarshal(r.Message, &msg)
		return nil, false, fmt.Errorf("HTTP 200%s: %w", describe(code, msg), codeClass(code, msg))
	}
	if len(r.Result) == 0 || r.Result[0] != '{' {
		return nil, false, fmt.Errorf("HTTP 200: malformed response (result is not an object): %w", errdefs.ErrUnknown)
	}
	return bytes.Clone(r.Result), false, nil
}

// parseError extracts eHSM's code and message from a body, if it has them.
func parseError(raw []byte) (int, string, bool) {
	var r struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(raw, &r) != nil || r.Code == nil {
		return 0, "", false
	}
	return *r.Code, r.Message, true
}

// describe formats eHSM's code and message for an error (responses carry
// no secret material; the message is still clipped and sanitized).
func describe(code int, msg string) string {
	s := fmt.Sprintf(" eHSM code %d", code)
	if msg != "" {
		s += ": " + kms.Clip(msg)
	}
	return s
}

func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500
}

// httpClass maps a non-200 HTTP status to an errdefs class.
func httpClass(status int) error {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return errdefs.ErrPermissionDenied
	case status == http.StatusNotFound:
		return errdefs.ErrNotFound
	case status == http.StatusTooManyRequests || status >= 500:
		return errdefs.ErrUnavailable
	case status >= 400:
		return errdefs.ErrInvalidArgument
	}
	return errdefs.ErrUnknown
}

// codeClass maps an eHSM error code and message to an errdefs class. eHSM
// distinguishes its 400 errors by message only.
func codeClass(code int, msg string) error {
	m := strings.ToLower(msg)
	switch {
	case code == 400 && (strings.Contains(m, "sign") || strings.Contains(m, "appid") ||
		strings.Contains(m, "timestamp") || strings.Contains(m, "nonce") || strings.Contains(m, "not found")):
		return errdefs.ErrPermissionDenied
	case code == 400 && strings.Contains(m, "keyid error"):
		return errdefs.ErrNotFound
	case code == 400 && (strings.Contains(m, "disabled") || strings.Contains(m, "expire")):
		return errdefs.ErrFailedPrecondition
	case code == 401 || code == 403:
		return errdefs.ErrPermissionDenied
	case code == 404:
		return errdefs.ErrNotFound
	case code >= 400 && code < 500:
		return errdefs.ErrInvalidArgument
	case code >= 500:
		return errdefs.ErrUnavailable
	}
	return errdefs.ErrUnknown
}
