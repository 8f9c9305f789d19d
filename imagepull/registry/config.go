package registry

import (
	"fmt"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/reference"
)

// Registry configures how references under Prefix are reached, after the
// `[[registry]]` tables of containers-registries.conf as CDH reads them.
type Registry struct {
	// Prefix matches a reference name ("docker.io", "quay.io/org") at a
	// path boundary; the longest matching prefix wins.
	Prefix string `toml:"prefix" json:"prefix"`
	// Location replaces Prefix (host[:port][/path]); empty keeps Prefix.
	Location string `toml:"location" json:"location"`
	// Insecure lets Location be reached over plain HTTP, and only that.
	Insecure bool `toml:"insecure" json:"insecure"`
	// Blocked refuses every pull under Prefix.
	Blocked bool `toml:"blocked" json:"blocked"`
	// Mirrors are tried in order before Location.
	Mirrors []Mirror `toml:"mirror" json:"mirror"`
}

// Mirror is one alternative location.
type Mirror struct {
	Location string `toml:"location" json:"location"`
	Insecure bool   `toml:"insecure" json:"insecure"`
}

// endpoint is one place to try for a repository.
type endpoint struct {
	host     string // host[:port] to dial
	repo     string // repository path on that host
	insecure bool   // plain http
	mirror   bool
}

func (e endpoint) scheme() string {
	if e.insecure {
		return "http"
	}
	return "https"
}

func (e endpoint) String() string { return e.scheme() + "://" + e.host + "/" + e.repo }

// validate checks a configuration entry.
func (r Registry) validate(i int) error {
	if r.Prefix == "" {
		return fmt.Errorf("registries[%d].prefix: empty: %w", i, errdefs.ErrInvalidArgument)
	}
	if _, err := splitLocation(r.Prefix); err != nil {
		return fmt.Errorf("registries[%d].prefix: %w", i, err)
	}
	if r.Location != "" {
		if _, err := splitLocation(r.Location); err != nil {
			return fmt.Errorf("registries[%d].location: %w", i, err)
		}
	}
	for j, m := range r.Mirrors {
		if _, err := splitLocation(m.Location); err != nil {
			return fmt.Errorf("registries[%d].mirror[%d].location: %w", i, j, err)
		}
	}
	return nil
}

// splitLocation checks "host[:port][/path]" by parsing it as a reference name.
func splitLocation(loc string) (reference.Reference, error) {
	if strings.Contains(loc, "://") {
		return reference.Reference{}, fmt.Errorf("%q: no scheme allowed: %w", loc, errdefs.ErrInvalidArgument)
	}
	host, path, _ := strings.Cut(loc, "/")
	probe := host + "/x"
	if path != "" {
		probe = host + "/" + path
	}
	r, err := reference.Parse(probe)
	if err != nil {
		return reference.Reference{}, err
	}
	if r.Domain != host && !(host == "index.docker.io" && r.Domain == reference.DockerHub) {
		return reference.Reference{}, fmt.Errorf("%q: first component is not a host: %w", loc, errdefs.ErrInvalidArgument)
	}
	return r, nil
}

// prefixMatch reports whether name is prefix or lies under it.
func prefixMatch(name, prefix string) bool {
	return name == prefix || strings.HasPrefix(name, prefix+"/")
}

// endpoints returns where to look for ref, mirrors first.
func (c *Client) endpoints(ref reference.Reference) ([]endpoint, error) {
	name := ref.Name()
	var best *Registry
	for i := range c.registries {
		r := &c.registries[i]
		if prefixMatch(name, r.Prefix) && (best == nil || len(r.Prefix) > len(best.Prefix)) {
			best = r
		}
	}
	if best == nil {
		return []endpoint{directEndpoint(ref.Domain, ref.Path, false)}, nil
	}
	if best.Blocked {
		return nil, fmt.Errorf("registry %q is blocked by configuration: %w", best.Prefix, errdefs.ErrPermissionDenied)
	}
	rest := strings.TrimPrefix(strings.TrimPrefix(name, best.Prefix), "/")
	mk := func(loc string, insecure, mirror bool) endpoint {
		full := loc
		if rest != "" {
			full = loc + "/" + rest
		}
		host, repo, _ := strings.Cut(full, "/")
		e := directEndpoint(host, repo, insecure)
		e.mirror = mirror
		return e
	}
	var eps []endpoint
	for _, m := range best.Mirrors {
		eps = append(eps, mk(m.Location, m.Insecure, true))
	}
	loc := best.Location
	if loc == "" {
		loc = best.Prefix
	}
	eps = append(eps, mk(loc, best.Insecure, false))
	return eps, nil
}

// directEndpoint maps Docker Hub's name to its API host.
func directEndpoint(host, repo string, insecure bool) endpoint {
	if host == reference.DockerHub || host == "index.docker.io" {
		host = "registry-1.docker.io"
	}
	return endpoint{host: host, repo: repo, insecure: insecure}
}
