package policy

import (
	"embed"
)

//go:embed policies/*.rego
var shipped embed.FS

// AllowAllPolicy returns the development policy: every request is allowed.
func AllowAllPolicy() string { return mustShipped("allow-all.rego") }

// CocoDefaultPolicy returns the policy for a confidential guest whose
// initdata carries none: the pod lifecycle is allowed; exec, stream access,
// SetPolicy, the clock, entropy, iptables, swap, hooks, kernel modules and
// loopback network changes are refused.
func CocoDefaultPolicy() string { return mustShipped("coco-default.rego") }

func mustShipped(name string) string {
	b, err := shipped.ReadFile("policies/" + name)
	if err != nil {
		panic("policy: shipped policy missing: " + name) // build defect, not input
	}
	return string(b)
}
