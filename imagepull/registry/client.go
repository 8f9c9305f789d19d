// Package registry is a small client for the OCI distribution (Docker
// registry v2) API, written for pulling into a confidential guest where the
// network and the registry are untrusted. It fetches manifests and configs
// with size limits and digest checks, and streams blobs with strict Range
// resume, bounded retries, Retry-After handling and a redirect policy that
// never hands credentials to another host or downgrades to plain HTTP.
package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/net/http/httpproxy"
)

// Config configures a Client.
type Config struct {
	// Registries maps reference prefixes to locations, mirrors, plain-HTTP
	// permission and blocking. References no entry matches go straight to
	// their registry over HTTPS.
	Registries []Registry
	// Auth holds credentials; nil means anonymous everywhere unless
	// AuthLoader is set.
	Auth *AuthFile
	// AuthLoader, used when Auth is nil, loads the credentials when a
	// registry first asks for them (so that a KBS-held auth.json is only
	// fetched when needed, and an anonymous pull never needs the KBS).
	// A successful result is kept; a failure fails that pull only.
	AuthLoader func(ctx context.Context) (*AuthFile, error)
	// ExtraRootCAs are PEM certificates trusted besides the system pool.
	ExtraRootCAs [][]byte
	// Proxy, if set, is used for registry and token requests.
	Proxy *httpproxy.Config
	// UserAgent is sent with every request.
	UserAgent string
	// MaxRetryWait bounds the total time one request may spend waiting to
	// retry (back-off and Retry-After); default 60 s.
	MaxRetryWait time.Duration
	// Retries bounds the attempts per request or blob; default 5.
	Retries int
	// StallTimeout aborts (and resumes) a blob download that has received
	// nothing for this long; default 60 s.
	StallTimeout time.Duration
	// Logger receives retry and redirect notes; nil discards.
	Logger *slog.Logger
	// Transport overrides the HTTP transport (tests); when set, ExtraRootCAs
	// and Proxy are ignored.
	Transport http.RoundTripper
}

// Stats counts what a Client did; read with the atomic Load methods.
type Stats struct {
	Requests  atomic.Int64
	Retries   atomic.Int64
	Resumes   atomic.Int64
	BlobBytes atomic.Int64
}

// Client talks to registries. It is safe for concurrent use.
type Client struct {
	registries   []Registry
	auth         *AuthFile
	authLoader   func(ctx context.Context) (*AuthFile, error)
	authMu       sync.Mutex
	loaded       *AuthFile
	http         *http.Client
	userAgent    string
	maxRetryWait time.Duration
	retries      int
	stall        time.Duration
	log          *slog.Logger
	Stats        Stats
	// sleep is replaceable in tests.
	sleep func(ctx context.Context, d time.Duration) error
}

// New builds a Client.
func New(cfg Config) (*Client, error) {
	for i, r := range cfg.Registries {
		if err := r.validate(i); err != nil {
			return nil, err
		}
	}
	c := &Client{
		registries:   append([]Registry(nil), cfg.Registries...),
		auth:         cfg.Auth,
		authLoader:   cfg.AuthLoader,
		userAgent:    cfg.UserAgent,
		maxRetryWait: cfg.MaxRetryWait,
		retries:      cfg.Retries,
		stall:        cfg.StallTimeout,
		log:          cfg.Logger,
		sleep:        sleepCtx,
	}
	if c.userAgent == "" {
		c.userAgent = "cova-imagepull"
	}
	if c.maxRetryWait <= 0 {
		c.maxRetryWait = 60 * time.Second
	}
	if c.retries <= 0 {
		c.retries = 5
	}
	if c.stall <= 0 {
		c.stall = 60 * time.Second
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	rt := cfg.Transport
	if rt == nil {
		t, err := newTransport(cfg)
		if err != nil {
			return nil, err
		}
		rt = t
	}
	c.http = &http.Client{Transport: rt, CheckRedirect: c.checkRedirect}
	return c, nil
}

func newTransport(cfg Config) (*http.Transport, error) {
	// Without extra roots leave RootCAs nil: crypto/tls then loads the
	// system pool only when a TLS connection needs it.
	var pool *x509.CertPool
	if len(cfg.ExtraRootCAs) > 0 {
		var err error
		pool, err = x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		for i, pem := range cfg.ExtraRootCAs {
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("extra root certificates[%d]: no PEM certificate found: %w", i, errdefs.ErrInvalidArgument)
			}
		}
	}
	t := &http.Transport{
		DialContext: (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig: &tls.Config{
			RootCAs:    pool,
			MinVersion: tls.VersionTLS12,
		},
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          32,
		MaxIdleConnsPerHost:   8,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: 60 * time.Second,
		ReadBufferSize:        64 << 10,
		// Layers are already compressed; do not ask for gzip transfer coding
		// (it would also hide the real Content-Length).
		DisableCompression: true,
	}
	if cfg.Proxy != nil {
		pf := cfg.Proxy.ProxyFunc()
		t.Proxy = func(r *http.Request) (*url.URL, error) { return pf(r.URL) }
	}
	return t, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// request kinds, carried in the request context for the redirect policy.
type kind int

const (
	kindManifest kind = iota
	kindBlob
	kindToken
)

type kindKey struct{}

const maxRedirects = 10

// checkRedirect allows a redirect to another host only for blob downloads
// and only to https; anything else may redirect within the same origin.
// Credentials never follow a redirect to another host.
func (c *Client) checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects: %w", maxRedirects, errdefs.ErrUnavailable)
	}
	orig := via[0].URL
	k, _ := req.Context().Value(kindKey{}).(kind)
	sameOrigin := req.URL.Scheme == orig.Scheme && req.URL.Host == orig.Host
	if !sameOrigin {
		req.Header.Del("Authorization")
		if k != kindBlob {
			return fmt.Errorf("redirect from %s to another origin %s refused: %w", orig.Host, redactURL(req.URL), errdefs.ErrPermissionDenied)
		}
		if req.URL.Scheme != "https" {
			return fmt.Errorf("redirect to plain %s (%s) refused: %w", req.URL.Scheme, redactURL(req.URL), errdefs.ErrPermissionDenied)
		}
		if ip := net.ParseIP(req.URL.Hostname()); ip != nil && internalIP(ip) {
			// Loopback is allowed only from a loopback registry (tests, a
			// local mirror); link-local (cloud metadata) never.
			oip := net.ParseIP(orig.Hostname())
			if !ip.IsLoopback() || oip == nil || !oip.IsLoopback() {
				return fmt.Errorf("redirect to internal address %s refused: %w", ip, errdefs.ErrPermissionDenied)
			}
		}
	}
	c.log.Debug("registry redirect", "from", orig.Host, "to", req.URL.Host)
	return nil
}

func internalIP(ip net.IP) bool {
	return ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() || ip.IsUnspecified()
}

// redactURL drops the query (pre-signed URLs carry secrets there).
func redactURL(u *url.URL) string {
	return u.Scheme + "://" + u.Host + u.Path
}

// statusError maps an unexpected HTTP status to an errdefs class, with the
// registry's error code and message when it sent one.
func statusError(what string, resp *http.Response) error {
	var class error
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		class = errdefs.ErrUnauthenticated
	case resp.StatusCode == http.StatusForbidden:
		class = errdefs.ErrPermissionDenied
	case resp.StatusCode == http.StatusNotFound:
		class = errdefs.ErrNotFound
	case resp.StatusCode == http.StatusTooManyRequests:
		class = errdefs.ErrResourceExhausted
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable:
		class = errdefs.ErrOutOfRange
	case resp.StatusCode >= 500:
		class = errdefs.ErrUnavailable
	default:
		class = errdefs.ErrUnknown
	}
	msg := readErrorBody(resp.Body)
	if msg != "" {
		return fmt.Errorf("%s: HTTP %d: %s: %w", what, resp.StatusCode, msg, class)
	}
	return fmt.Errorf("%s: HTTP %d: %w", what, resp.StatusCode, class)
}

// readErrorBody reads at most 4 KiB of an error response and keeps the
// printable part of the first line.
func readErrorBody(r io.Reader) string {
	b, _ := io.ReadAll(io.LimitReader(r, 4<<10))
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// retryAfter parses Retry-After (seconds or an HTTP date); ok is false when
// absent or unparsable.
func retryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		if n > 1<<31 {
			n = 1 << 31
		}
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := t.Sub(now)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

// backoff returns the wait before retry n (0-based): 250 ms doubling up to
// 4 s, with ±20 % jitter.
func backoff(n int) time.Duration {
	d := 250 * time.Millisecond << min(n, 4)
	j := time.Duration(rand.Int64N(int64(d)*2/5)) - d/5
	return d + j
}

// retryable reports whether a transport error is worth another attempt.
func retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// Redirect refusals and other policy errors are final.
		if errdefs.IsPermissionDenied(ue.Err) || errdefs.IsUnavailable(ue.Err) {
			return false
		}
		var ce *tls.CertificateVerificationError
		if errors.As(ue.Err, &ce) {
			return false
		}
		var he x509.HostnameError
		if errors.As(ue.Err, &he) {
			return false
		}
		var rhe tls.RecordHeaderError
		if errors.As(ue.Err, &rhe) {
			return false
		}
	}
	return true
}
