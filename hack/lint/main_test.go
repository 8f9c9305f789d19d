package main

import (
	"strings"
	"testing"

	"github.com/cova-project/cova/hack/lint/covalint"
)

// TestAllowlist: allow.txt parses, names only Cova packages, and has no
// duplicate entry.
func TestAllowlist(t *testing.T) {
	es, err := covalint.ParseAllowlist(allowTxt)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) == 0 {
		t.Fatal("allow.txt has no entries")
	}
	seen := map[string]bool{}
	for _, e := range es {
		if e.Package != covalint.Module && !strings.HasPrefix(e.Package, covalint.Module+"/") {
			t.Errorf("entry %+v: not a package of %s", e, covalint.Module)
		}
		k := e.Analyzer + " " + e.Package + " " + e.Func
		if seen[k] {
			t.Errorf("duplicate entry %s", k)
		}
		seen[k] = true
		if len(e.Reason) < 20 {
			t.Errorf("entry %s: the reason %q does not explain the review", k, e.Reason)
		}
	}
}
