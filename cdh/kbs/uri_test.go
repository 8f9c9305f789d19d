package kbs

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestParseResourceURI(t *testing.T) {
	for _, tc := range []struct {
		in       string
		plugin   string
		segs     []string
		query    string
		endpoint string
	}{
		{"kbs:///default/key/1", "resource", []string{"default", "key", "1"}, "", "/kbs/v0/resource/default/key/1"},
		{"kbs://kbs.example:8080/repo/type/tag", "resource", []string{"repo", "type", "tag"}, "", "/kbs/v0/resource/repo/type/tag"},
		{"kbs:///a_b/c-d/e.f", "resource", []string{"a_b", "c-d", "e.f"}, "", "/kbs/v0/resource/a_b/c-d/e.f"},
		{"kbs:///r/t/g?version=2", "resource", []string{"r", "t", "g"}, "version=2", "/kbs/v0/resource/r/t/g?version=2"},
		{"kbs+plugin:///a/b", "plugin", []string{"a", "b"}, "", "/kbs/v0/plugin/a/b"},
		{"kbs+nebula-ca:///credential?ip=1.2.3.4%2F24", "nebula-ca", []string{"credential"}, "ip=1.2.3.4%2F24", "/kbs/v0/nebula-ca/credential?ip=1.2.3.4%2F24"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			u, err := ParseResourceURI(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if u.Plugin != tc.plugin || !slices.Equal(u.Segments, tc.segs) || u.Query != tc.query || u.endpoint() != tc.endpoint {
				t.Fatalf("got %+v endpoint %s", u, u.endpoint())
			}
			back, err := ParseResourceURI(u.String())
			if err != nil || back.endpoint() != u.endpoint() {
				t.Fatalf("String() %q does not round-trip: %v", u.String(), err)
			}
		})
	}
	for _, tc := range []struct{ name, in string }{
		{"empty", ""},
		{"no-scheme", "default/key/1"},
		{"kid-path", "/default/key/1"},
		{"other-scheme", "https:///default/key/1"},
		{"file", "file:///etc/passwd"},
		{"two-segments", "kbs:///default/key"},
		{"four-segments", "kbs:///a/b/c/d"},
		{"dotdot", "kbs:///default/../key"},
		{"dot", "kbs:///default/./key"},
		{"leading-dot", "kbs:///default/key/.hidden"},
		{"dotdot-tag", "kbs:///default/key/.."},
		{"empty-segment", "kbs:///default//key"},
		{"trailing-slash", "kbs:///default/key/1/"},
		{"encoded-dotdot", "kbs:///default/%2e%2e/key"},
		{"encoded-slash", "kbs:///default/a%2Fb/key"},
		{"backslash", `kbs:///default/a\b/key`},
		{"space", "kbs:///default/a b/key"},
		{"unicode", "kbs:///default/ключ/1"},
		{"nul", "kbs:///default/a\x00/key"},
		{"fragment", "kbs:///default/key/1#x"},
		{"userinfo", "kbs://user:pw@host/default/key/1"},
		{"no-path", "kbs://host"},
		{"bad-plugin", "kbs+../default/key/1"},
		{"upper-plugin", "kbs+Plugin:///a"},
		{"empty-plugin", "kbs+:///a/b/c"},
		{"query-control", "kbs:///a/b/c?x=\n"},
		{"query-bad-escape", "kbs:///a/b/c?x=%zz"},
		{"long", "kbs:///a/b/" + strings.Repeat("c", 5000)},
		{"long-segment", "kbs:///a/b/" + strings.Repeat("c", 256)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, err := ParseResourceURI(tc.in)
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("ParseResourceURI(%q) = %+v, %v; want invalid argument", tc.in, u, err)
			}
			if !strings.Contains(err.Error(), "resource URI") {
				t.Fatalf("error does not name the field: %v", err)
			}
		})
	}
}
