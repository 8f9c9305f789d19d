package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"
)

// The key provider JSON contract (ocicrypt's
// KeyProviderKeyWrapProtocolInput/Output, as ocicrypt-rs and
// guest-components' CDH spell it):
//
//	in:  {"op":"keyunwrap",
//	      "keywrapparams":{"ec":null,"optsdata":null},
//	      "keyunwrapparams":{"dc":{"Parameters":{"<name>":["<b64>",…]}},
//	                         "annotation":"<standard base64 of the AnnotationPacket JSON>"}}
//	out: {"keyunwrapresults":{"optsdata":[<byte>,<byte>,…]}}
//
// The output's optsdata is serde's default form of a Vec<u8>, a JSON array
// of numbers: ocicrypt-rs rejects a base64 string there (Go's ocicrypt
// accepts both). Unknown members are ignored, as serde does.
const (
	opKeyUnwrap    = "keyunwrap"
	inputField     = "KeyProviderKeyWrapProtocolInput"
	unwrapOutStart = `{"keyunwrapresults":{"optsdata":[`
	unwrapOutEnd   = `]}}`
)

// unwrapInput is the part of the input UnWrapKey reads.
type unwrapInput struct {
	Op              *string `json:"op"`
	KeyUnwrapParams *struct {
		// DC is decoded only to reject a malformed one, as upstream does;
		// the KBS-backed unwrap needs no parameters.
		DC *struct {
			Parameters map[string][]string `json:"Parameters"`
		} `json:"dc"`
		Annotation *string `json:"annotation"`
	} `json:"keyunwrapparams"`
}

// parseUnwrapInput validates a keyunwrap request and returns the decoded
// AnnotationPacket.
func parseUnwrapInput(raw []byte) ([]byte, error) {
	switch {
	case len(raw) == 0:
		return nil, invalid(inputField, "empty")
	case len(raw) > MaxKeyProviderInputSize:
		return nil, invalid(inputField, "%d bytes, more than %d", len(raw), MaxKeyProviderInputSize)
	}
	var in unwrapInput
	if err := json.Unmarshal(raw, &in); err != nil {
		return nil, invalid(inputField, "not key provider JSON: %v", err)
	}
	if in.Op == nil || *in.Op != opKeyUnwrap {
		got := "missing"
		if in.Op != nil {
			got = strconv.Quote(clip(*in.Op))
		}
		return nil, invalid(inputField+".op", "%s, want %q (only unwrapping is served)", got, opKeyUnwrap)
	}
	if in.KeyUnwrapParams == nil {
		return nil, invalid(inputField+".keyunwrapparams", "missing")
	}
	const af = inputField + ".keyunwrapparams.annotation"
	a := in.KeyUnwrapParams.Annotation
	if a == nil || *a == "" {
		return nil, invalid(af, "missing: no AnnotationPacket given")
	}
	if base64.StdEncoding.DecodedLen(len(*a)) > MaxAnnotationSize+2 {
		return nil, invalid(af, "more than %d bytes decoded", MaxAnnotationSize)
	}
	packet, err := base64.StdEncoding.DecodeString(*a)
	if err != nil {
		return nil, invalid(af, "not standard base64: %v", err)
	}
	if len(packet) == 0 || len(packet) > MaxAnnotationSize {
		return nil, invalid(af, "%d bytes decoded, want 1 to %d", len(packet), MaxAnnotationSize)
	}
	return packet, nil
}

// unwrapOutput encodes the keyunwrap answer with optsdata as a JSON array
// of numbers, byte for byte as serde_json writes it.
func unwrapOutput(opts []byte) []byte {
	var b bytes.Buffer
	b.Grow(len(unwrapOutStart) + 4*len(opts) + len(unwrapOutEnd))
	b.WriteString(unwrapOutStart)
	var num [3]byte
	for i, c := range opts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(strconv.AppendUint(num[:0], uint64(c), 10))
	}
	b.WriteString(unwrapOutEnd)
	return b.Bytes()
}
