package kbs

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
)

// ResourcePlugin is the KBS plugin kbs:// URIs name.
const ResourcePlugin = "resource"

// Bounds on resource URIs.
const (
	maxURILen      = 4096
	maxSegments    = 16
	maxSegmentLen  = 255
	resourceLength = 3 // repo/type/tag
)

var (
	// segmentRE is trustee's rule for resource path segments; it excludes
	// "", "." and ".." by construction.
	segmentRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]*$`)
	pluginRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]*$`)
)

// ResourceURI is a parsed kbs:// or kbs+<plugin>:// URI:
// kbs[+plugin]://[host[:port]]/seg/…[?query]. The host is ignored (the
// client always asks its configured KBS), as guest-components does.
type ResourceURI struct {
	// Plugin is the KBS plugin: ResourcePlugin for kbs://.
	Plugin string
	// Host is the authority as written (informational only).
	Host string
	// Segments is the path: exactly repo, type, tag for the resource plugin.
	Segments []string
	// Query is the raw query, without '?'.
	Query string
}

// ParseResourceURI parses and validates a resource URI. Every path segment
// must match [A-Za-z0-9_-][A-Za-z0-9_.-]* (so no "", ".", ".." and no
// percent-escapes); the resource plugin takes exactly three segments.
// Errors wrap errdefs.ErrInvalidArgument and name the URI.
func ParseResourceURI(s string) (ResourceURI, error) {
	bad := func(why string) (ResourceURI, error) {
		if len(s) > 128 {
			s = s[:128] + "…"
		}
		return ResourceURI{}, fmt.Errorf("resource URI %q: %s: %w", sanitize(s), why, errdefs.ErrInvalidArgument)
	}
	if len(s) > maxURILen {
		return bad("too long")
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return bad("want kbs:///repo/type/tag")
	}
	u := ResourceURI{Plugin: ResourcePlugin}
	switch {
	case scheme == "kbs":
	case strings.HasPrefix(scheme, "kbs+"):
		u.Plugin = strings.TrimPrefix(scheme, "kbs+")
		if !pluginRE.MatchString(u.Plugin) {
			return bad("invalid plugin name")
		}
	default:
		return bad("scheme is not kbs or kbs+<plugin>")
	}
	if strings.ContainsAny(rest, "#\\") {
		return bad("fragments and backslashes are not allowed")
	}
	rest, u.Query, _ = strings.Cut(rest, "?")
	if strings.Contains(rest, "%") {
		return bad("percent-escapes are not allowed in the path")
	}
	host, path, ok := strings.Cut(rest, "/")
	if !ok {
		return bad("no path")
	}
	if strings.Contains(host, "@") {
		return bad("user info is not allowed")
	}
	if host != "" {
		if _, err := url.Parse("https://" + host); err != nil {
			return bad("invalid host")
		}
	}
	u.Host = host
	if u.Query != "" {
		if _, err := url.ParseQuery(u.Query); err != nil {
			return bad("invalid query")
		}
		for _, r := range u.Query {
			if r <= ' ' || r > '~' {
				return bad("query must be printable ASCII")
			}
		}
	}
	u.Segments = strings.Split(path, "/")
	if len(u.Segments) > maxSegments {
		return bad("too many path segments")
	}
	for i, seg := range u.Segments {
		if len(seg) > maxSegmentLen || !segmentRE.MatchString(seg) {
			return bad(fmt.Sprintf("path segment %d %q is invalid", i+1, sanitize(seg)))
		}
	}
	if u.Plugin == ResourcePlugin && len(u.Segments) != resourceLength {
		return bad("want exactly repo/type/tag")
	}
	return u, nil
}

// Path is the segments joined by "/".
func (u ResourceURI) Path() string { return strings.Join(u.Segments, "/") }

// String is the URI without a host.
func (u ResourceURI) String() string {
	scheme := "kbs"
	if u.Plugin != ResourcePlugin {
		scheme += "+" + u.Plugin
	}
	s := scheme + ":///" + u.Path()
	if u.Query != "" {
		s += "?" + u.Query
	}
	return s
}

// endpoint is the URL path (and query) of the resource below a KBS base.
func (u ResourceURI) endpoint() string {
	p := APIPrefix + "/" + u.Plugin + "/" + u.Path()
	if u.Query != "" {
		p += "?" + u.Query
	}
	return p
}
