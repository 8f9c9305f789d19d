package kms

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"

	"github.com/containerd/errdefs"
)

// MaxCredentialFile bounds a credential file a provider reads.
const MaxCredentialFile = 64 << 10

// ReadCredentialFile reads name (relative, slash-separated) below dir for
// provider, through an os.Root so a symlink cannot leave dir, bounded by
// MaxCredentialFile. A missing file or directory wraps
// errdefs.ErrFailedPrecondition and says how to deliver it. Errors name
// the file, never its content; the caller clears the bytes after use.
func ReadCredentialFile(provider, dir, name string) ([]byte, error) {
	missing := func() error {
		return fmt.Errorf("%s credential file %s in %s is missing (deliver it with cdh.toml [[credentials]]): %w", provider, name, dir, errdefs.ErrFailedPrecondition)
	}
	r, err := os.OpenRoot(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, missing()
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s credential directory %s: %w", provider, dir, err)
	}
	defer r.Close()
	f, err := r.Open(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, missing()
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s credential file %s in %s: %w", provider, name, dir, err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, MaxCredentialFile+1))
	if err != nil {
		clear(raw)
		return nil, fmt.Errorf("reading %s credential file %s in %s: %w", provider, name, dir, err)
	}
	if len(raw) > MaxCredentialFile {
		clear(raw)
		return nil, fmt.Errorf("%s credential file %s in %s: larger than %d bytes: %w", provider, name, dir, MaxCredentialFile, errdefs.ErrInvalidArgument)
	}
	return raw, nil
}

// ParseEndpoint validates an endpoint override from a provider's Config
// (never from a sealed secret): https://host[:port] with an empty or "/"
// path, or plain http for a loopback host (tests). "" is nil. field names
// the Config member in errors.
func ParseEndpoint(provider, field, s string) (*url.URL, error) {
	if s == "" {
		return nil, nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("%s: %s %q: want https://host[:port]: %w", provider, field, Clip(s), errdefs.ErrInvalidArgument)
	}
	switch u.Scheme {
	case "https":
	case "http":
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("%s: %s %q: plain http only for loopback: %w", provider, field, Clip(s), errdefs.ErrInvalidArgument)
		}
	default:
		return nil, fmt.Errorf("%s: %s %q: want https://host[:port]: %w", provider, field, Clip(s), errdefs.ErrInvalidArgument)
	}
	u.Path = "/"
	return u, nil
}

// Token reports whether s is printable ASCII without spaces: what an
// access key, a session token or a key id may hold before it goes into a
// signed header.
func Token(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// ReadResponse reads a KMS answer of at most limit bytes. A failed read is
// worth a retry (errdefs.ErrUnavailable); a longer body is not
// (errdefs.ErrUnknown). Errors name the HTTP status, never the body; a
// partial body is cleared.
func ReadResponse(resp *http.Response, limit int) (raw []byte, retry bool, err error) {
	raw, err = io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		clear(raw)
		return nil, true, fmt.Errorf("HTTP %d: reading response: %w", resp.StatusCode, errdefs.ErrUnavailable)
	}
	if len(raw) > limit {
		clear(raw)
		return nil, false, fmt.Errorf("HTTP %d: response larger than %d bytes: %w", resp.StatusCode, limit, errdefs.ErrUnknown)
	}
	return raw, false, nil
}
