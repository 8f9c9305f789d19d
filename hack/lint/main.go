// Command lint runs Cova's security checkers (hack/lint/covalint: pathjoin,
// oscreate, errcompare, errassert) over packages, with the reviewed findings
// in allow.txt allowed:
//
//	go run ./hack/lint ./...
//
// It exits non-zero when a checker reports a finding. It is a development
// tool: nothing of it is linked into the agent.
package main

import (
	_ "embed"
	"fmt"
	"os"

	"golang.org/x/tools/go/analysis/multichecker"

	"github.com/cova-project/cova/hack/lint/covalint"
)

//go:embed allow.txt
var allowTxt string

func main() {
	es, err := covalint.ParseAllowlist(allowTxt)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hack/lint/allow.txt:", err)
		os.Exit(2)
	}
	covalint.SetAllowlist(es)
	multichecker.Main(covalint.Analyzers...)
}
