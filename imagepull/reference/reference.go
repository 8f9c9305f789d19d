// Package reference parses and normalises image references the way Docker
// does: "busybox" is "docker.io/library/busybox:latest", a first component
// with a dot, a colon or "localhost" is a registry host, and a digest pins the
// content. Parsing is strict and allocation-light; the grammar follows the
// distribution project's reference grammar.
package reference

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/internal/textclip"
)

// Registry names used for Docker Hub.
const (
	DockerHub      = "docker.io"
	dockerHubIndex = "index.docker.io"
	libraryPrefix  = "library/"
	DefaultTag     = "latest"
	maxNameLen     = 255
	maxTagLen      = 128
	maxInputLen    = 4096
)

// Reference is a normalised image reference.
type Reference struct {
	// Domain is the registry host with an optional port, e.g. "docker.io"
	// or "127.0.0.1:5000".
	Domain string
	// Path is the repository path inside the registry, e.g. "library/busybox".
	Path string
	// Tag is the tag; "latest" when neither tag nor digest was given, and
	// may be set alongside Digest (the digest wins when pulling).
	Tag string
	// Digest pins the manifest; zero when not given.
	Digest oci.Digest
}

// Parse validates and normalises s. Errors wrap errdefs.ErrInvalidArgument.
func Parse(s string) (Reference, error) {
	if s == "" {
		return Reference{}, fmt.Errorf("image reference: empty: %w", errdefs.ErrInvalidArgument)
	}
	if len(s) > maxInputLen {
		return Reference{}, fmt.Errorf("image reference: %d bytes is too long: %w", len(s), errdefs.ErrInvalidArgument)
	}
	var r Reference
	rest := s
	if i := strings.IndexByte(rest, '@'); i >= 0 {
		d, err := oci.ParseDigest(rest[i+1:])
		if err != nil {
			return Reference{}, fmt.Errorf("image reference %q: %w", clip(s), err)
		}
		r.Digest = d
		rest = rest[:i]
	}
	// A tag follows the last ':' that comes after the last '/'.
	lastSlash := strings.LastIndexByte(rest, '/')
	if i := strings.LastIndexByte(rest, ':'); i > lastSlash {
		r.Tag = rest[i+1:]
		rest = rest[:i]
		if !validTag(r.Tag) {
			return Reference{}, fmt.Errorf("image reference %q: invalid tag %q: %w", clip(s), clip(r.Tag), errdefs.ErrInvalidArgument)
		}
	}
	domain, path := splitDomain(rest)
	if domain == dockerHubIndex {
		domain = DockerHub
	}
	if domain == DockerHub && !strings.Contains(path, "/") {
		path = libraryPrefix + path
	}
	if err := validDomain(domain); err != nil {
		return Reference{}, fmt.Errorf("image reference %q: %w", clip(s), err)
	}
	if err := validPath(path); err != nil {
		return Reference{}, fmt.Errorf("image reference %q: %w", clip(s), err)
	}
	if len(domain)+1+len(path) > maxNameLen {
		return Reference{}, fmt.Errorf("image reference %q: name longer than %d: %w", clip(s), maxNameLen, errdefs.ErrInvalidArgument)
	}
	r.Domain, r.Path = domain, path
	if r.Tag == "" && r.Digest.IsZero() {
		r.Tag = DefaultTag
	}
	return r, nil
}

// splitDomain splits "host/path" as Docker does: the first component is a
// host if it has a '.' or ':', is "localhost", or has uppercase letters.
func splitDomain(name string) (domain, path string) {
	i := strings.IndexByte(name, '/')
	if i < 0 {
		return DockerHub, name
	}
	first := name[:i]
	if strings.ContainsAny(first, ".:") || first == "localhost" || strings.ToLower(first) != first {
		return first, name[i+1:]
	}
	return DockerHub, name
}

// Name returns "domain/path".
func (r Reference) Name() string { return r.Domain + "/" + r.Path }

// String returns the full normalised reference.
func (r Reference) String() string {
	s := r.Name()
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if !r.Digest.IsZero() {
		s += "@" + r.Digest.String()
	}
	return s
}

// Object returns what to ask the registry for: the digest if set, else the tag.
func (r Reference) Object() string {
	if !r.Digest.IsZero() {
		return r.Digest.String()
	}
	return r.Tag
}

// ValidTag reports whether t is a valid tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`).
func ValidTag(t string) bool { return validTag(t) }

func validTag(t string) bool {
	if len(t) == 0 || len(t) > maxTagLen {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		word := c == '_' || isAlnum(c)
		if i == 0 && !word {
			return false
		}
		if !word && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
}

func isLowerAlnum(c byte) bool {
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
}

// validPath checks path-component(/path-component)* where a component is
// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*.
func validPath(p string) error {
	if p == "" {
		return fmt.Errorf("empty repository path: %w", errdefs.ErrInvalidArgument)
	}
	for _, comp := range strings.Split(p, "/") {
		if !validComponent(comp) {
			return fmt.Errorf("invalid repository path component %q: %w", clip(comp), errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

func validComponent(c string) bool {
	if c == "" || !isLowerAlnum(c[0]) || !isLowerAlnum(c[len(c)-1]) {
		return false
	}
	for i := 1; i < len(c); {
		if isLowerAlnum(c[i]) {
			i++
			continue
		}
		// a separator run: ".", "_", "__" or "-"+
		switch c[i] {
		case '.':
			i++
		case '_':
			i++
			if c[i] == '_' {
				i++
			}
		case '-':
			for c[i] == '-' {
				i++
			}
		default:
			return false
		}
		if !isLowerAlnum(c[i]) {
			return false
		}
	}
	return true
}

// validDomain checks host[:port] where host is a DNS name or an IPv6
// literal in brackets.
func validDomain(d string) error {
	host, port := d, ""
	if strings.HasPrefix(d, "[") {
		end := strings.IndexByte(d, ']')
		if end < 0 {
			return fmt.Errorf("registry %q: unterminated IPv6 literal: %w", clip(d), errdefs.ErrInvalidArgument)
		}
		host, port = d[1:end], d[end+1:]
		if port != "" {
			if port[0] != ':' {
				return fmt.Errorf("registry %q: junk after IPv6 literal: %w", clip(d), errdefs.ErrInvalidArgument)
			}
			port = port[1:]
		}
		for i := 0; i < len(host); i++ {
			c := host[i]
			if c != ':' && c != '.' && !isAlnum(c) {
				return fmt.Errorf("registry %q: bad IPv6 literal: %w", clip(d), errdefs.ErrInvalidArgument)
			}
		}
		if host == "" {
			return fmt.Errorf("registry %q: empty IPv6 literal: %w", clip(d), errdefs.ErrInvalidArgument)
		}
	} else {
		if i := strings.IndexByte(d, ':'); i >= 0 {
			host, port = d[:i], d[i+1:]
			if port == "" {
				return fmt.Errorf("registry %q: empty port: %w", clip(d), errdefs.ErrInvalidArgument)
			}
		}
		if host == "" {
			return fmt.Errorf("registry %q: empty host: %w", clip(d), errdefs.ErrInvalidArgument)
		}
		for _, label := range strings.Split(host, ".") {
			if label == "" || label[0] == '-' || label[len(label)-1] == '-' {
				return fmt.Errorf("registry %q: bad host label %q: %w", clip(d), clip(label), errdefs.ErrInvalidArgument)
			}
			for i := 0; i < len(label); i++ {
				if !isAlnum(label[i]) && label[i] != '-' {
					return fmt.Errorf("registry %q: bad host character: %w", clip(d), errdefs.ErrInvalidArgument)
				}
			}
		}
	}
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 || port[0] == '0' {
			return fmt.Errorf("registry %q: bad port: %w", clip(d), errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

func clip(s string) string { return textclip.Clip(s, 80) }
