package sigpolicy

import (
	"testing"
)

// FuzzParse feeds policies and payloads to the parsers: no panics, and a
// policy that parses has a requirement list for every reference.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"default":[{"type":"reject"}],"transports":{"docker":{"quay.io/a":[{"type":"sigstoreSigned","keyPath":"/k","signedIdentity":{"type":"remapIdentity","prefix":"quay.io","signedPrefix":"b.io/x"}}]}}}`))
	f.Add([]byte(`{"critical":{"identity":{"docker-reference":"quay.io/a"},"image":{"docker-manifest-digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},"type":"cosign container image signature"},"optional":null}`))
	f.Add([]byte(`{"default":[{"type":"insecureAcceptAnything"}],"transports":{"docker":{"*.io":[{"type":"reject"}],"":[{"type":"reject"}]}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if p, err := Parse(b); err == nil {
			for _, r := range []string{"quay.io/a/b:1", "busybox", "localhost:5000/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"} {
				if reqs, _ := p.RequirementsFor(mustRef(t, r)); len(reqs) == 0 {
					t.Fatalf("no requirements for %s", r)
				}
			}
		}
		_, _ = parsePayload(b, cosignSignatureType)
		_, _ = ParseLookaside(b)
	})
}
