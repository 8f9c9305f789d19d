package reference

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

const dg = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want string // normalised String(); "" means an error is expected
	}{
		{"busybox", "docker.io/library/busybox:latest"},
		{"busybox:1.36", "docker.io/library/busybox:1.36"},
		{"library/busybox", "docker.io/library/busybox:latest"},
		{"docker.io/busybox", "docker.io/library/busybox:latest"},
		{"index.docker.io/busybox", "docker.io/library/busybox:latest"},
		{"index.docker.io/foo/bar:v1", "docker.io/foo/bar:v1"},
		{"foo/bar", "docker.io/foo/bar:latest"},
		{"quay.io/a/b/c:v2", "quay.io/a/b/c:v2"},
		{"localhost/x", "localhost/x:latest"},
		{"localhost:5000/x:t", "localhost:5000/x:t"},
		{"127.0.0.1:5000/test/busybox:latest", "127.0.0.1:5000/test/busybox:latest"},
		{"[::1]:5000/x", "[::1]:5000/x:latest"},
		{"Registry/x", "Registry/x:latest"},
		{"busybox@" + dg, "docker.io/library/busybox@" + dg},
		{"busybox:1@" + dg, "docker.io/library/busybox:1@" + dg},
		{"a.io/x-y__z.w--v:T_a.g-1", "a.io/x-y__z.w--v:T_a.g-1"},
		{"", ""},
		{"Busybox", ""},
		{"busybox:", ""},
		{"busybox:-x", ""},
		{"busybox:" + strings.Repeat("a", 129), ""},
		{"busybox@sha256:abc", ""},
		{"busybox@sha256:" + strings.ToUpper(dg[7:]), ""},
		{"busybox@md5:d41d8cd98f00b204e9800998ecf8427e", ""},
		{"a.io/../etc", ""},
		{"a.io/x/../y", ""},
		{"a.io//x", ""},
		{"a.io/x/", ""},
		{"a.io/_x", ""},
		{"a.io/x___y", ""},
		{"a.io/x.-y", ""},
		{"a.io:0/x", ""},
		{"a.io:65536/x", ""},
		{"a.io:/x", ""},
		{"-a.io/x", ""},
		{"a_b.io/x", ""},
		{"[::1/x", ""},
		{"[]:5/x", ""},
		{"a.io/x y", ""},
		{"a.io/x\x00y", ""},
		{"a.io/" + strings.Repeat("x", 260), ""},
		{"http://a.io/x", ""},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			r, err := Parse(tc.in)
			if tc.want == "" {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Fatalf("Parse(%q) = %v, %v; want ErrInvalidArgument", tc.in, r, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tc.in, err)
			}
			if r.String() != tc.want {
				t.Fatalf("Parse(%q) = %q, want %q", tc.in, r.String(), tc.want)
			}
			// Normalised output parses to itself.
			r2, err := Parse(r.String())
			if err != nil || r2 != r {
				t.Fatalf("reparse %q: %v %v", r.String(), r2, err)
			}
		})
	}
}

func TestObject(t *testing.T) {
	r, _ := Parse("busybox:1@" + dg)
	if r.Object() != dg {
		t.Fatalf("Object() = %q, want the digest", r.Object())
	}
	r, _ = Parse("busybox:1")
	if r.Object() != "1" {
		t.Fatalf("Object() = %q, want the tag", r.Object())
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"busybox", "a.io:5000/x/y:z@" + dg, "[::1]:1/a", "a__b-c.d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			return
		}
		r2, err := Parse(r.String())
		if err != nil || r2 != r {
			t.Fatalf("%q -> %q does not round-trip: %v", s, r.String(), err)
		}
	})
}
