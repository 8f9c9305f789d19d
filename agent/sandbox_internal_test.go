package agent

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
)

func TestResolvConf(t *testing.T) {
	good, err := resolvConf([]string{"nameserver 10.0.0.1", "", "search svc.cluster.local", "options ndots:5"})
	if err != nil || good != "nameserver 10.0.0.1\nsearch svc.cluster.local\noptions ndots:5\n" {
		t.Fatalf("resolvConf = %q, %v", good, err)
	}
	for name, lines := range map[string][]string{
		"newline":   {"nameserver 1.1.1.1\nnameserver 2.2.2.2"},
		"nul":       {"nameserver 1.1.1.1\x00"},
		"keyword":   {"include /etc/shadow"},
		"too long":  {"search " + strings.Repeat("a", 2000)},
		"cr inject": {"nameserver 1.1.1.1\r"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := resolvConf(lines); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "dns[0]") {
				t.Fatalf("want invalid dns[0], got %v", err)
			}
		})
	}
}

func TestCgroupsPath(t *testing.T) {
	sb := &sandbox{id: "sb"}
	cases := []struct {
		parent, in, want string
		bad              bool
	}{
		{"", "", "/kata/sb/c", false},
		{"", "/kubepods/pod1/c", "/kubepods/pod1/c", false},
		{"", "system.slice:kata:c", "/kata/sb/c", false},
		{"cova", "/kubepods/pod1/c", "cova/kubepods/pod1/c", false},
		{"", "/kubepods/../../etc", "", true},
		{"", "a\x00b", "", true},
	}
	for _, tc := range cases {
		a := &Agent{opts: Options{CgroupParent: tc.parent}}
		s := &specs.Spec{Linux: &specs.Linux{CgroupsPath: tc.in}}
		err := a.setCgroupsPath(sb, "c", s)
		if tc.bad {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%q: want invalid argument, got %v", tc.in, err)
			}
			continue
		}
		if err != nil || s.Linux.CgroupsPath != tc.want {
			t.Errorf("%q (parent %q) = %q, %v; want %q", tc.in, tc.parent, s.Linux.CgroupsPath, err, tc.want)
		}
	}
}
