package policy

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Redaction for logs and denial messages. Env values (OCI.Process.Env,
// process.Env) can carry credentials; stdin and other byte payloads are
// container data; a policy text is large and is not the host's to read back.
// None of them appears in a log line or an error produced by this package.

const redactedMark = "<redacted>"

// minScrubLen is the shortest env value scrubbed out of free text (print
// output). Shorter values are not worth the false positives ("1", "on").
const minScrubLen = 4

// redacted returns a copy of n fit for a debug log: every "Env" list has its
// values replaced ("KEY=<redacted>"), every "data" byte array and the
// "policy" text become a length note. n is not modified.
func redacted(n node) node {
	switch n := n.(type) {
	case *object:
		o := &object{keys: n.keys, vals: make([]node, len(n.vals))}
		for i, k := range n.keys {
			v := n.vals[i]
			switch {
			case k == "Env":
				o.vals[i] = redactEnv(v)
			case k == "data":
				if a, ok := v.([]node); ok {
					o.vals[i] = fmt.Sprintf("<%d bytes>", len(a))
				} else {
					o.vals[i] = redacted(v)
				}
			case k == "policy":
				if s, ok := v.(string); ok {
					o.vals[i] = fmt.Sprintf("<%d bytes>", len(s))
				} else {
					o.vals[i] = redacted(v)
				}
			default:
				o.vals[i] = redacted(v)
			}
		}
		return o
	case []node:
		a := make([]node, len(n))
		for i, v := range n {
			a[i] = redacted(v)
		}
		return a
	}
	return n
}

func redactEnv(v node) node {
	a, ok := v.([]node)
	if !ok {
		return redacted(v)
	}
	out := make([]node, len(a))
	for i, e := range a {
		s, ok := e.(string)
		if !ok {
			out[i] = redactedMark
			continue
		}
		if k, _, found := strings.Cut(s, "="); found {
			out[i] = k + "=" + redactedMark
		} else {
			out[i] = redactedMark
		}
	}
	return out
}

// scrubberFor returns a replacer that hides env values in free text (print
// output quoted in a denial or logged): every whole "KEY=VALUE" entry
// becomes "KEY=<redacted>", and a bare VALUE of at least minScrubLen bytes
// becomes "<redacted>" unless the same string is also a value elsewhere in
// the input (then it is no secret of the env: a hostname, a sandbox name).
func scrubberFor(n node) *strings.Replacer {
	var entries []string
	public := map[string]bool{}
	var walk func(node, bool)
	walk = func(n node, inEnv bool) {
		switch n := n.(type) {
		case *object:
			for i, k := range n.keys {
				walk(n.vals[i], k == "Env")
			}
		case []node:
			for _, v := range n {
				walk(v, inEnv)
			}
		case string:
			if inEnv {
				entries = append(entries, n)
			} else {
				public[n] = true
			}
		}
	}
	walk(n, false)
	type pair struct{ old, new string }
	var pairs []pair
	for _, e := range entries {
		k, v, found := strings.Cut(e, "=")
		if !found || v == "" {
			continue
		}
		// Print output shows strings inside composite values quoted, so
		// the escaped spellings are hidden too.
		for _, form := range spellings(e) {
			pairs = append(pairs, pair{form, k + "=" + redactedMark})
		}
		if len(v) >= minScrubLen && !public[v] {
			for _, form := range spellings(v) {
				pairs = append(pairs, pair{form, redactedMark})
			}
		}
	}
	// Longest first: at a given position the replacer tries its pairs in
	// order, so a whole entry wins over the value inside it.
	slices.SortStableFunc(pairs, func(a, b pair) int { return len(b.old) - len(a.old) })
	args := make([]string, 0, 2*len(pairs))
	for _, p := range pairs {
		args = append(args, p.old, p.new)
	}
	return strings.NewReplacer(args...)
}

// spellings returns s as written raw, Go-quoted and JSON-quoted (without the
// quotes), once each.
func spellings(s string) []string {
	out := []string{s}
	q := strconv.Quote(s)
	if q = q[1 : len(q)-1]; q != s {
		out = append(out, q)
	}
	var b bytes.Buffer
	writeString(&b, s)
	if j := b.String(); j[1:len(j)-1] != s && j[1:len(j)-1] != q {
		out = append(out, j[1:len(j)-1])
	}
	return out
}
