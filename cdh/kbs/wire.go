package kbs

import (
	"crypto"
	_ "crypto/sha256" // sha256 for the hash registry
	_ "crypto/sha512" // sha384, sha512
	"encoding/json"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/canonjson"
)

// ProtocolVersion is the only KBS protocol version this client speaks;
// trustee requires an exact match.
const ProtocolVersion = "0.4.0"

// APIPrefix is the path prefix of every KBS endpoint.
const APIPrefix = "/kbs/v0"

// SessionCookie is the name of the KBS session cookie.
const SessionCookie = "kbs-session-id"

// Request is the body of POST /kbs/v0/auth.
type Request struct {
	Version     string          `json:"version"`
	Tee         string          `json:"tee"`
	ExtraParams json.RawMessage `json:"extra-params"`
}

// Challenge is the answer to /auth. ExtraParams is the empty string "" for
// every TEE but IBM SE, so it is kept raw.
type Challenge struct {
	Nonce       string          `json:"nonce"`
	ExtraParams json.RawMessage `json:"extra-params"`
}

// Attestation is the body of POST /kbs/v0/attest.
type Attestation struct {
	// InitData is the initdata document, or null when the guest has none.
	InitData    *InitData         `json:"init-data"`
	RuntimeData RuntimeData       `json:"runtime-data"`
	TeeEvidence CompositeEvidence `json:"tee-evidence"`
}

// InitData carries the initdata TOML verbatim.
type InitData struct {
	Format string `json:"format"`
	Body   string `json:"body"`
}

// InitDataFormat is the only initdata format trustee accepts.
const InitDataFormat = "toml"

// RuntimeData is what the report data binds (together with the additional
// evidence): the challenge nonce, verbatim, and the TEE public key.
type RuntimeData struct {
	Nonce     string    `json:"nonce"`
	TEEPubKey TEEPubKey `json:"tee-pubkey"`
}

// CompositeEvidence is the primary attester's evidence (a JSON value) and
// the additional devices' evidence as the exact JSON text that was hashed
// ("" without devices).
type CompositeEvidence struct {
	Primary    json.RawMessage `json:"primary_evidence"`
	Additional string          `json:"additional_evidence"`
}

// AttestResponse is the answer to /attest.
type AttestResponse struct {
	Token string `json:"token"`
}

// TEEPubKey is the tee-pubkey JWK with exactly the members kbs-types
// serializes: kty, crv, alg, x, y for EC and kty, alg, n, e for RSA. The KBS
// re-serializes this fixed shape before hashing, so any other member would
// break the report-data binding.
type TEEPubKey struct {
	Kty string `json:"kty"`
	Crv string `json:"crv,omitempty"`
	Alg string `json:"alg"`
	X   string `json:"x,omitempty"`
	Y   string `json:"y,omitempty"`
	N   string `json:"n,omitempty"`
	E   string `json:"e,omitempty"`
}

// ErrorInformation is the body of a KBS error answer.
type ErrorInformation struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

// ErrorTypePrefix starts ErrorInformation.Type; the KBS error variant follows.
const ErrorTypePrefix = "https://github.com/confidential-containers/kbs/errors/"

// Response is a KBS resource: a flattened JWE JSON serialization.
type Response struct {
	Protected    string `json:"protected"`
	EncryptedKey string `json:"encrypted_key"`
	IV           string `json:"iv"`
	Ciphertext   string `json:"ciphertext"`
	Tag          string `json:"tag"`
	AAD          string `json:"aad,omitempty"`
}

// Hash algorithm names of the protocol (kbs-types HashAlgorithm).
const (
	HashSHA256 = "sha256"
	HashSHA384 = "sha384"
	HashSHA512 = "sha512"
)

// supportedHashes is what the client offers in Request.extra-params. The
// Rust client also lists sm3; Cova cannot compute it, and only SE selects
// an algorithm at all.
var supportedHashes = []string{HashSHA256, HashSHA384, HashSHA512}

// ParseHash maps a protocol hash name (case-insensitive) to a crypto.Hash.
func ParseHash(name string) (crypto.Hash, error) {
	switch strings.ToLower(name) {
	case HashSHA256:
		return crypto.SHA256, nil
	case HashSHA384:
		return crypto.SHA384, nil
	case HashSHA512:
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("hash algorithm %q not supported: %w", sanitize(name), errdefs.ErrNotImplemented)
}

// SelectedHash returns the report-data hash a challenge asks for: its
// extra-params "selected-hash-algorithm" when present, else sha384 (what the
// KBS uses for every TEE but SE). extra-params that is not an object (the
// usual "") selects nothing. trustee v0.21 and later select sha512 for SE
// (and verify SE with sha512); earlier releases answer "" and verify SE with
// sha384, so this one rule serves both.
func SelectedHash(extraParams json.RawMessage) (crypto.Hash, error) {
	var obj map[string]json.RawMessage
	if len(extraParams) == 0 || json.Unmarshal(extraParams, &obj) != nil || obj == nil {
		return crypto.SHA384, nil
	}
	raw, ok := obj["selected-hash-algorithm"]
	if !ok {
		return crypto.SHA384, nil
	}
	var name string
	if err := json.Unmarshal(raw, &name); err != nil {
		return 0, fmt.Errorf("challenge extra-params selected-hash-algorithm is not a string: %w", errdefs.ErrInvalidArgument)
	}
	h, err := ParseHash(name)
	if err != nil {
		return 0, fmt.Errorf("challenge extra-params selected-hash-algorithm: %w", err)
	}
	return h, nil
}

// DeviceRuntimeDigest is the report data of the additional (device)
// attesters: H(JCS({"nonce","tee-pubkey"})).
func DeviceRuntimeDigest(h crypto.Hash, rd RuntimeData) ([]byte, error) {
	b, err := canonjson.Marshal(rd)
	if err != nil {
		return nil, fmt.Errorf("canonicalizing device runtime data: %w", err)
	}
	return digest(h, b), nil
}

// RuntimeDigest is the primary attester's report data:
// H(JCS({"additional-evidence": additional, "nonce", "tee-pubkey"})). The
// additional-evidence member is present even when additional is "".
func RuntimeDigest(h crypto.Hash, rd RuntimeData, additional string) ([]byte, error) {
	b, err := canonjson.Marshal(struct {
		Additional string    `json:"additional-evidence"`
		Nonce      string    `json:"nonce"`
		TEEPubKey  TEEPubKey `json:"tee-pubkey"`
	}{additional, rd.Nonce, rd.TEEPubKey})
	if err != nil {
		return nil, fmt.Errorf("canonicalizing runtime data: %w", err)
	}
	return digest(h, b), nil
}

func digest(h crypto.Hash, b []byte) []byte {
	w := h.New()
	w.Write(b)
	return w.Sum(nil)
}
