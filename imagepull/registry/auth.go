package registry

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/containerd/errdefs"
)

// Credential is a user name and password for one registry scope. Its
// String, GoString and LogValue methods never show the password.
type Credential struct {
	Username string
	Password string
}

// String shows the user name only.
func (c Credential) String() string { return c.Username + ":<redacted>" }

// GoString shows the user name only (for %#v).
func (c Credential) GoString() string {
	return fmt.Sprintf("registry.Credential{Username:%q, Password:<redacted>}", c.Username)
}

// LogValue keeps the password out of slog output.
func (c Credential) LogValue() slog.Value {
	return slog.GroupValue(slog.String("username", c.Username), slog.String("password", "<redacted>"))
}

// AuthFile is a parsed containers auth.json: `{"auths":{KEY:{"auth":B64}}}`.
// KEY is a registry ("quay.io"), a repository ("quay.io/org/repo") or a URL
// ("https://index.docker.io/v1/"); Docker Hub aliases are folded to
// "docker.io".
type AuthFile struct {
	entries map[string]Credential
}

type authJSON struct {
	Auths map[string]struct {
		Auth     string `json:"auth"`
		Username string `json:"username"`
		Password string `json:"password"`
	} `json:"auths"`
}

const maxAuthFileBytes = 1 << 20

// ParseAuthFile parses an auth.json document. Entries without usable
// credentials are rejected, so a typo does not silently mean anonymous.
func ParseAuthFile(b []byte) (*AuthFile, error) {
	if len(b) > maxAuthFileBytes {
		return nil, fmt.Errorf("auth file: %d bytes is over the %d limit: %w", len(b), maxAuthFileBytes, errdefs.ErrInvalidArgument)
	}
	var doc authJSON
	if err := json.Unmarshal(b, &doc); err != nil {
		// encoding/json errors can quote a character of the input (a
		// secret); keep only where and what kind of error it is.
		return nil, fmt.Errorf("auth file: decoding JSON: %s: %w", jsonErrorSummary(err), errdefs.ErrInvalidArgument)
	}
	af := &AuthFile{entries: make(map[string]Credential, len(doc.Auths))}
	for key, e := range doc.Auths {
		var c Credential
		switch {
		case e.Auth != "":
			raw, err := base64.StdEncoding.DecodeString(e.Auth)
			if err != nil {
				return nil, fmt.Errorf("auth file: auths[%q].auth: not base64: %w", key, errdefs.ErrInvalidArgument)
			}
			u, p, ok := strings.Cut(string(raw), ":")
			if !ok || u == "" {
				return nil, fmt.Errorf("auth file: auths[%q].auth: want base64 of user:password: %w", key, errdefs.ErrInvalidArgument)
			}
			c = Credential{Username: u, Password: p}
		case e.Username != "":
			c = Credential{Username: e.Username, Password: e.Password}
		default:
			return nil, fmt.Errorf("auth file: auths[%q]: no auth or username: %w", key, errdefs.ErrInvalidArgument)
		}
		af.entries[normaliseAuthKey(key)] = c
	}
	return af, nil
}

// normaliseAuthKey strips a URL scheme, a trailing /v1/ or /v2/ and slashes,
// and folds Docker Hub's aliases to docker.io.
func normaliseAuthKey(k string) string {
	k = strings.TrimSpace(k)
	if i := strings.Index(k, "://"); i >= 0 {
		k = k[i+3:]
	}
	k = strings.TrimRight(k, "/")
	for _, suf := range []string{"/v1", "/v2"} {
		k = strings.TrimSuffix(k, suf)
	}
	host, rest, _ := strings.Cut(k, "/")
	switch host {
	case "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com":
		host = "docker.io"
	}
	if rest != "" {
		return host + "/" + rest
	}
	return host
}

// Lookup returns the credential for host/repo: the repository itself, then
// each parent path, then the registry.
func (a *AuthFile) Lookup(host, repo string) (Credential, bool) {
	if a == nil {
		return Credential{}, false
	}
	key := normaliseAuthKey(host)
	if repo != "" {
		key += "/" + repo
	}
	for {
		if c, ok := a.entries[key]; ok {
			return c, true
		}
		i := strings.LastIndexByte(key, '/')
		if i < 0 {
			return Credential{}, false
		}
		key = key[:i]
	}
}

// jsonErrorSummary describes a JSON decoding error without any of the
// input's content.
func jsonErrorSummary(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q: a JSON %s is not allowed here", te.Field, te.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated document"
	default:
		return "not a JSON object"
	}
}
