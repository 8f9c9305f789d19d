package kbs

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// EATProfile is the eat_profile of trustee's EAR tokens.
const EATProfile = "tag:github.com,2024:confidential-containers/Trustee"

// Issuer is the iss claim of the tokens this KBS issues.
const Issuer = "cova-dev-kbs"

// teePubKeyPath is where trustee's KBS finds the TEE key in an EAR token.
var teePubKeyPath = []string{"submods", "cpu0", "ear.veraison.annotated-evidence", "runtime_data_claims", "tee-pubkey"}

type jwtHeader struct {
	Alg string `json:"alg"`
	Typ string `json:"typ"`
	JWK jwkEC  `json:"jwk"`
}

type jwkEC struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

func ecJWK(pub *ecdsa.PublicKey) (jwkEC, error) {
	raw, err := pub.ECDH()
	if err != nil {
		return jwkEC{}, err
	}
	b := raw.Bytes()
	return jwkEC{Kty: "EC", Crv: "P-256", X: b64url.EncodeToString(b[1:33]), Y: b64url.EncodeToString(b[33:])}, nil
}

// signJWT signs claims as an ES256 JWT with the signer's public key in the
// header (as trustee's AS token broker does).
func signJWT(key *ecdsa.PrivateKey, claims any) (string, error) {
	jwk, err := ecJWK(&key.PublicKey)
	if err != nil {
		return "", err
	}
	hb, err := json.Marshal(jwtHeader{Alg: "ES256", Typ: "JWT", JWK: jwk})
	if err != nil {
		return "", err
	}
	pb, err := json.Marshal(claims)
	if err != nil {
		return "", err
	}
	input := b64url.EncodeToString(hb) + "." + b64url.EncodeToString(pb)
	d := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
	if err != nil {
		return "", err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + b64url.EncodeToString(sig), nil
}

// expLeeway absorbs the truncation of integer NumericDates: a token issued
// at x.999 s carries iat = x, so without it a 1 s token could be refused
// a few milliseconds after issue.
const expLeeway = time.Second

// verifyJWT checks an ES256 JWT against the trusted keys and the time claims
// against now (exp with expLeeway), and returns its claims.
func verifyJWT(tok string, trusted []*ecdsa.PublicKey, now time.Time) (map[string]any, *ecdsa.PublicKey, error) {
	if len(tok) > 256<<10 {
		return nil, nil, errors.New("token too large")
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, nil, errors.New("token is not a compact JWS")
	}
	hb, err := b64url.DecodeString(parts[0])
	if err != nil {
		return nil, nil, fmt.Errorf("token header: %w", err)
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if err := json.Unmarshal(hb, &h); err != nil || h.Alg != "ES256" {
		return nil, nil, fmt.Errorf("token alg %q, want ES256", h.Alg)
	}
	sig, err := b64url.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return nil, nil, errors.New("token signature is not 64 bytes of base64url")
	}
	d := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	var signer *ecdsa.PublicKey
	for _, k := range trusted {
		if ecdsa.Verify(k, d[:], r, s) {
			signer = k
			break
		}
	}
	if signer == nil {
		return nil, nil, errors.New("token signature does not verify with a trusted key")
	}
	pb, err := b64url.DecodeString(parts[1])
	if err != nil {
		return nil, nil, fmt.Errorf("token payload: %w", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(pb)))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		return nil, nil, fmt.Errorf("token claims: %w", err)
	}
	num := func(name string) (time.Time, bool, error) {
		v, ok := claims[name]
		if !ok {
			return time.Time{}, false, nil
		}
		n, ok := v.(json.Number)
		if !ok {
			return time.Time{}, false, fmt.Errorf("token %s is not a number", name)
		}
		i, err := n.Int64()
		if err != nil {
			return time.Time{}, false, fmt.Errorf("token %s: %w", name, err)
		}
		return time.Unix(i, 0), true, nil
	}
	exp, ok, err := num("exp")
	if err != nil {
		return nil, nil, err
	}
	if !ok || !now.Before(exp.Add(expLeeway)) {
		return nil, nil, fmt.Errorf("token expired at %s (KBS time %s)", exp.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if nbf, ok, err := num("nbf"); err != nil {
		return nil, nil, err
	} else if ok && now.Before(nbf) {
		return nil, nil, fmt.Errorf("token not valid before %s", nbf.UTC().Format(time.RFC3339))
	}
	return claims, signer, nil
}

// lookup walks a JSON pointer given as segments.
func lookup(v any, path []string) (any, bool) {
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = m[p]; !ok {
			return nil, false
		}
	}
	return v, true
}

// tokenTEEKey extracts the TEE public key a token certifies.
func tokenTEEKey(claims map[string]any) (teePubKey, error) {
	v, ok := lookup(claims, teePubKeyPath)
	if !ok {
		return teePubKey{}, errors.New("token has no tee-pubkey")
	}
	b, err := json.Marshal(v)
	if err != nil {
		return teePubKey{}, err
	}
	var k teePubKey
	if err := json.Unmarshal(b, &k); err != nil {
		return teePubKey{}, fmt.Errorf("token tee-pubkey: %w", err)
	}
	return k, k.check()
}
