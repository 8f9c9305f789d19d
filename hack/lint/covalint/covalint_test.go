package covalint

import (
	"testing"

	"golang.org/x/tools/go/analysis"
	"golang.org/x/tools/go/analysis/analysistest"
)

func TestAnalyzers(t *testing.T) {
	es, err := ParseAllowlist(`
# a comment
pathjoin github.com/cova-project/cova/agent/x allowedJoin reviewed: id is validated by the caller
`)
	if err != nil {
		t.Fatal(err)
	}
	SetAllowlist(es)
	t.Cleanup(func() { SetAllowlist(nil) })
	const m = "github.com/cova-project/cova/"
	for _, tc := range []struct {
		a *analysis.Analyzer
		// pkgs hold this analyzer's "// want" comments, or none.
		pkgs []string
	}{
		{PathJoin, []string{m + "agent/x", m + "agent/copyfile", m + "imagepull/z", m + "other/clean"}},
		{OSCreate, []string{m + "imagepull/y", m + "imagepull/z", m + "other/clean"}},
		{ErrCompare, []string{m + "other/cmp", m + "other/clean"}},
		{ErrAssert, []string{m + "other/assert", m + "other/clean"}},
	} {
		t.Run(tc.a.Name, func(t *testing.T) {
			analysistest.Run(t, analysistest.TestData(), tc.a, tc.pkgs...)
		})
	}
}

func TestParseAllowlist(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		n          int
		ok         bool
	}{
		{"empty", "", 0, true},
		{"comments and blanks", "# x\n\n  # y\n", 0, true},
		{"entry", "oscreate github.com/cova-project/cova/mount F because reviewed\n", 1, true},
		{"no reason", "oscreate github.com/cova-project/cova/mount F\n", 0, false},
		{"unknown analyzer", "nosuch github.com/cova-project/cova/mount F reason\n", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			es, err := ParseAllowlist(tc.text)
			if (err == nil) != tc.ok || len(es) != tc.n {
				t.Fatalf("ParseAllowlist = %v, %v; want %d entries, ok %v", es, err, tc.n, tc.ok)
			}
			if tc.n == 1 && es[0].Reason != "because reviewed" {
				t.Fatalf("reason %q", es[0].Reason)
			}
		})
	}
}
