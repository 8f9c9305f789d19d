package sigpolicy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/cova-project/cova/imagepull/oci"
)

// Simple-signing payload types.
const (
	atomicSignatureType = "atomic container signature"
	cosignSignatureType = "cosign container image signature"
)

// payload is the part of a simple-signing payload that is checked.
type payload struct {
	typ             string
	manifestDigest  oci.Digest
	dockerReference string
}

// parsePayload decodes a simple-signing payload paranoidly, as
// containers/image does: exact field names, no duplicates, no unknown
// fields in "critical", and the expected type.
func parsePayload(b []byte, wantType string) (payload, error) {
	var p payload
	top, err := exactFields(b, "critical", "optional")
	if err != nil {
		return p, fmt.Errorf("payload: %w", err)
	}
	if o := bytes.TrimSpace(top["optional"]); len(o) == 0 || (o[0] != '{' && !bytes.Equal(o, []byte("null"))) {
		return p, errors.New("payload.optional: not an object")
	}
	crit, err := exactFields(top["critical"], "type", "image", "identity")
	if err != nil {
		return p, fmt.Errorf("payload.critical: %w", err)
	}
	if err := json.Unmarshal(crit["type"], &p.typ); err != nil || p.typ != wantType {
		return p, fmt.Errorf("payload.critical.type %q: want %q", clip(string(crit["type"])), wantType)
	}
	img, err := exactFields(crit["image"], "docker-manifest-digest")
	if err != nil {
		return p, fmt.Errorf("payload.critical.image: %w", err)
	}
	var ds string
	if err := json.Unmarshal(img["docker-manifest-digest"], &ds); err != nil {
		return p, errors.New("payload.critical.image.docker-manifest-digest: not a string")
	}
	if p.manifestDigest, err = oci.ParseDigest(ds); err != nil {
		return p, fmt.Errorf("payload.critical.image.docker-manifest-digest: %v", err)
	}
	id, err := exactFields(crit["identity"], "docker-reference")
	if err != nil {
		return p, fmt.Errorf("payload.critical.identity: %w", err)
	}
	if err := json.Unmarshal(id["docker-reference"], &p.dockerReference); err != nil {
		return p, errors.New("payload.critical.identity.docker-reference: not a string")
	}
	return p, nil
}

// exactFields decodes a JSON object that must have exactly the named
// fields (case-sensitive, each once) and nothing after it.
func exactFields(b []byte, names ...string) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		if !want[key] {
			return nil, fmt.Errorf("unexpected field %q", clip(key))
		}
		if _, dup := out[key]; dup {
			return nil, fmt.Errorf("duplicate field %q", key)
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out[key] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err == nil {
		return nil, errors.New("data after the JSON object")
	}
	for _, n := range names {
		if _, ok := out[n]; !ok {
			return nil, fmt.Errorf("field %q missing", n)
		}
	}
	return out, nil
}
