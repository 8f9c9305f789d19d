package registry

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/internal/textclip"
)

const maxTokenBytes = 1 << 20

// challenge is one WWW-Authenticate challenge.
type challenge struct {
	scheme string // lower case
	params map[string]string
}

// parseChallenges parses WWW-Authenticate headers (RFC 7235 auth-params,
// quoted strings with backslash escapes).
func parseChallenges(h http.Header) []challenge {
	var out []challenge
	for _, v := range h.Values("Www-Authenticate") {
		s := v
		for s != "" {
			s = strings.TrimLeft(s, " ,")
			sp := strings.IndexAny(s, " ")
			if sp < 0 {
				if s != "" {
					out = append(out, challenge{scheme: strings.ToLower(s), params: map[string]string{}})
				}
				break
			}
			ch := challenge{scheme: strings.ToLower(s[:sp]), params: map[string]string{}}
			s = s[sp+1:]
			// auth-params until the next token that is not followed by '='.
			for {
				s = strings.TrimLeft(s, " ,")
				eq := strings.IndexByte(s, '=')
				if eq <= 0 || strings.ContainsAny(s[:eq], " ,") {
					break
				}
				key := strings.ToLower(strings.TrimSpace(s[:eq]))
				s = s[eq+1:]
				var val string
				if strings.HasPrefix(s, `"`) {
					var b strings.Builder
					i := 1
					for ; i < len(s); i++ {
						if s[i] == '\\' && i+1 < len(s) {
							i++
							b.WriteByte(s[i])
							continue
						}
						if s[i] == '"' {
							break
						}
						b.WriteByte(s[i])
					}
					val = b.String()
					if i < len(s) {
						i++
					}
					s = s[i:]
				} else {
					end := strings.IndexAny(s, ", ")
					if end < 0 {
						end = len(s)
					}
					val, s = s[:end], s[end:]
				}
				ch.params[key] = val
			}
			out = append(out, ch)
		}
	}
	return out
}

// authFile returns the credentials: Config.Auth, or what Config.AuthLoader
// returns (loaded on the first registry that asks for credentials, kept
// once loaded; a failed load is tried again on the next challenge).
func (c *Client) authFile(ctx context.Context) (*AuthFile, error) {
	if c.auth != nil || c.authLoader == nil {
		return c.auth, nil
	}
	c.authMu.Lock()
	defer c.authMu.Unlock()
	if c.loaded != nil {
		return c.loaded, nil
	}
	af, err := c.authLoader(ctx)
	if err != nil {
		return nil, fmt.Errorf("loading registry credentials: %w", err)
	}
	if af == nil {
		af = &AuthFile{}
	}
	c.loaded = af
	return af, nil
}

// authState holds the Authorization header for one repository endpoint.
type authState struct {
	mu     sync.Mutex
	header string
	gen    int
	expiry time.Time
}

func (a *authState) current() (string, int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.expiry.IsZero() && time.Now().After(a.expiry) {
		a.header = ""
	}
	return a.header, a.gen
}

// authenticate answers a 401 for repo r. gen is the generation of the
// header the failed request carried; if another goroutine already refreshed
// it, its header is reused.
func (r *Repo) authenticate(ctx context.Context, resp *http.Response, gen int) error {
	a := &r.auth
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gen != gen && a.header != "" {
		return nil
	}
	af, err := r.c.authFile(ctx)
	if err != nil {
		return fmt.Errorf("registry %s asks for credentials: %w", r.ep.host, err)
	}
	cred, haveCred := af.Lookup(r.ep.host, r.ep.repo)
	if r.ep.host == "registry-1.docker.io" && !haveCred {
		cred, haveCred = af.Lookup("docker.io", r.ep.repo)
	}
	chs := parseChallenges(resp.Header)
	for _, ch := range chs {
		if ch.scheme != "bearer" {
			continue
		}
		tok, ttl, err := r.fetchToken(ctx, ch, cred, haveCred)
		if err != nil {
			return err
		}
		a.header = "Bearer " + tok
		a.gen++
		a.expiry = time.Time{}
		if ttl > 0 {
			a.expiry = time.Now().Add(ttl - ttl/10)
		}
		return nil
	}
	for _, ch := range chs {
		if ch.scheme != "basic" {
			continue
		}
		if !haveCred {
			return fmt.Errorf("registry %s wants basic auth and no credential is configured: %w", r.ep.host, errdefs.ErrUnauthenticated)
		}
		a.header = "Basic " + base64.StdEncoding.EncodeToString([]byte(cred.Username+":"+cred.Password))
		a.gen++
		return nil
	}
	return fmt.Errorf("registry %s: HTTP 401 without a usable challenge: %w", r.ep.host, errdefs.ErrUnauthenticated)
}

// fetchToken runs the Docker token flow for pull access to r.
func (r *Repo) fetchToken(ctx context.Context, ch challenge, cred Credential, haveCred bool) (string, time.Duration, error) {
	realm, err := url.Parse(ch.params["realm"])
	if err != nil || realm.Host == "" {
		return "", 0, fmt.Errorf("registry %s: bearer challenge realm %q: not a URL: %w", r.ep.host, clipS(ch.params["realm"]), errdefs.ErrInvalidArgument)
	}
	switch {
	case realm.Scheme == "https":
	case realm.Scheme == "http" && r.ep.insecure:
	default:
		return "", 0, fmt.Errorf("registry %s: token realm %s: scheme %q not allowed: %w", r.ep.host, redactURL(realm), realm.Scheme, errdefs.ErrPermissionDenied)
	}
	q := realm.Query()
	if s := ch.params["service"]; s != "" {
		q.Set("service", s)
	}
	q.Set("scope", "repository:"+r.ep.repo+":pull")
	realm.RawQuery = q.Encode()
	ctx = context.WithValue(ctx, kindKey{}, kindToken)
	resp, err := r.c.do(ctx, func() (*http.Request, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, realm.String(), nil)
		if err != nil {
			return nil, err
		}
		if haveCred {
			req.SetBasicAuth(cred.Username, cred.Password)
		}
		return req, nil
	})
	if err != nil {
		return "", 0, fmt.Errorf("registry %s: fetching token: %w", r.ep.host, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", 0, statusError("registry "+r.ep.host+": token request", resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTokenBytes+1))
	if err != nil {
		return "", 0, fmt.Errorf("registry %s: reading token: %w", r.ep.host, err)
	}
	if len(body) > maxTokenBytes {
		return "", 0, fmt.Errorf("registry %s: token response over %d bytes: %w", r.ep.host, maxTokenBytes, errdefs.ErrInvalidArgument)
	}
	var tr struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return "", 0, fmt.Errorf("registry %s: token response: %v: %w", r.ep.host, err, errdefs.ErrInvalidArgument)
	}
	tok := tr.Token
	if tok == "" {
		tok = tr.AccessToken
	}
	if tok == "" || strings.ContainsAny(tok, "\r\n \t") {
		return "", 0, fmt.Errorf("registry %s: token response has no usable token: %w", r.ep.host, errdefs.ErrInvalidArgument)
	}
	var ttl time.Duration
	if tr.ExpiresIn > 0 && tr.ExpiresIn < 1<<31 {
		ttl = time.Duration(tr.ExpiresIn) * time.Second
	}
	return tok, ttl, nil
}

func clipS(s string) string { return textclip.Clip(s, 80) }
