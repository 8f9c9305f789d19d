package kbs

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	jose "github.com/go-jose/go-jose/v4"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/attester/se"
)

// seTags is a 208-byte SE header tag block.
func seTags() []byte {
	b := make([]byte, se.BootHdrTagsSize)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// seRequest is the attestation request trustee's SE verifier puts in the
// challenge nonce (no runtime_data_digest yet).
func seRequest() se.Request {
	return se.Request{
		RequestBlob:        bytes.Repeat([]byte{0xa5}, 600),
		MeasurementSize:    64,
		AdditionalSize:     32,
		EncrMeasurementKey: bytes.Repeat([]byte{0x11}, 256),
		EncrRequestNonce:   bytes.Repeat([]byte{0x22}, 256),
		ImageHdrTags:       seTags(),
	}
}

func seNonce(t testing.TB, mutate func(map[string]any)) string {
	t.Helper()
	b, err := json.Marshal(seRequest())
	if err != nil {
		t.Fatal(err)
	}
	if mutate == nil {
		return string(b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	mutate(m)
	b, _ = json.Marshal(m)
	return string(b)
}

// seUV fakes the Ultravisor: it records the call and answers a measurement
// derived from the request and user data.
type seUV struct {
	mu    sync.Mutex
	calls []se.AttestRequest
	err   error
	res   *se.AttestResult
}

func (u *seUV) Attest(_ context.Context, req se.AttestRequest) (*se.AttestResult, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls = append(u.calls, req)
	if u.err != nil {
		return nil, u.err
	}
	if u.res != nil {
		return u.res, nil
	}
	m := sha512.Sum512(append(slices.Clone(req.ARCB), req.UserData...))
	return &se.AttestResult{Measurement: m[:req.MeasurementSize], Additional: bytes.Repeat([]byte{0xad}, 20), CUID: [16]byte{0xc0, 0xff, 0xee}}, nil
}

func (u *seUV) last(t *testing.T) se.AttestRequest {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.calls) == 0 {
		t.Fatal("the UV was not called")
	}
	return u.calls[len(u.calls)-1]
}

// seKBS is a test-local KBS that speaks the SE variant of protocol 0.4.0
// as trustee v0.21 does: the nonce is an SE attestation request and
// extra-params selects the hash. It checks the Attestation's shape and the
// binding of the runtime data to the evidence's user_data with its own
// canonical JSON, issues a token and serves one JWE resource.
type seKBS struct {
	t   *testing.T
	srv *httptest.Server
	// nonce and extra are the challenge's members; extra "-" omits
	// extra-params.
	nonce string
	extra string
	// hash is what the KBS verifies the runtime data with.
	hash crypto.Hash

	mu                     sync.Mutex
	auth, attest, resource int
	session, token         string
	teePub                 json.RawMessage
	digest                 []byte // the runtime-data digest last verified
}

func startSEKBS(t *testing.T, nonce, extra string, hash crypto.Hash) *seKBS {
	k := &seKBS{t: t, nonce: nonce, extra: extra, hash: hash}
	k.srv = httptest.NewTLSServer(http.HandlerFunc(k.serve))
	t.Cleanup(k.srv.Close)
	return k
}

func (k *seKBS) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: k.srv.Certificate().Raw}))
}

func (k *seKBS) lastDigest() []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.digest)
}

func (k *seKBS) counts() (auth, attest, resource int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.auth, k.attest, k.resource
}

func kbsError(w http.ResponseWriter, status int, variant, detail string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(ErrorInformation{Type: ErrorTypePrefix + variant, Detail: detail})
}

// keysOf returns the object's member names in document order.
func keysOf(t *testing.T, what string, b []byte) []string {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Errorf("%s is not a JSON object: %s", what, b)
		return nil
	}
	var keys []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return nil
		}
		keys = append(keys, tok.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Errorf("%s: %v", what, err)
			return nil
		}
	}
	return keys
}

func sorted(s []string) string { return strings.Join(slices.Sorted(slices.Values(s)), ",") }

func (k *seKBS) serve(w http.ResponseWriter, r *http.Request) {
	t := k.t
	k.mu.Lock()
	defer k.mu.Unlock()
	switch {
	case r.Method == http.MethodPost && r.URL.Path == APIPrefix+"/auth":
		k.auth++
		var req struct {
			Version     string `json:"version"`
			Tee         string `json:"tee"`
			ExtraParams struct {
				Hashes []string `json:"supported-hash-algorithms"`
			} `json:"extra-params"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Version != ProtocolVersion || req.Tee != "se" || !slices.Contains(req.ExtraParams.Hashes, HashSHA512) {
			t.Errorf("auth request %+v (%v): want version 0.4.0, tee se, sha512 offered", req, err)
			kbsError(w, http.StatusUnauthorized, "HTTPFailed", "bad request")
			return
		}
		id := make([]byte, 16)
		_, _ = rand.Read(id)
		k.session = hex.EncodeToString(id)
		http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: k.session, Expires: time.Now().Add(5 * time.Minute)})
		ch := map[string]any{"nonce": k.nonce}
		if k.extra != "-" {
			ch["extra-params"] = json.RawMessage(k.extra)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(ch)
	case r.Method == http.MethodPost && r.URL.Path == APIPrefix+"/attest":
		k.attest++
		if ck, err := r.Cookie(SessionCookie); err != nil || ck.Value != k.session {
			t.Errorf("attest without the session cookie")
			kbsError(w, http.StatusUnauthorized, "AttestationError", "session not found")
			return
		}
		var body bytes.Buffer
		_, _ = body.ReadFrom(r.Body)
		status, detail := k.verify(body.Bytes())
		if status != http.StatusOK {
			kbsError(w, status, "AttestationError", detail)
			return
		}
		enc := base64.RawURLEncoding
		claims, _ := json.Marshal(map[string]any{"iat": time.Now().Unix(), "exp": time.Now().Add(5 * time.Minute).Unix(), "tee-pubkey": k.teePub})
		k.token = enc.EncodeToString([]byte(`{"alg":"ES256","typ":"JWT"}`)) + "." + enc.EncodeToString(claims) + "." + enc.EncodeToString([]byte("not checked by the guest"))
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"token": k.token})
	case r.Method == http.MethodGet && r.URL.Path == APIPrefix+"/resource/"+secretPath:
		k.resource++
		if k.token == "" || r.Header.Get("Authorization") != "Bearer "+k.token {
			kbsError(w, http.StatusUnauthorized, "TokenNotFound", "no token")
			return
		}
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(k.teePub); err != nil {
			t.Errorf("tee-pubkey is not a JWK go-jose reads: %v", err)
			kbsError(w, http.StatusUnauthorized, "JweError", err.Error())
			return
		}
		alg := jose.ECDH_ES_A256KW
		if jwk.Algorithm == AlgRSAOAEP256 {
			alg = jose.RSA_OAEP_256
		}
		e, err := jose.NewEncrypter(jose.A256GCM, jose.Recipient{Algorithm: alg, Key: jwk.Key}, nil)
		if err != nil {
			t.Errorf("encrypter: %v", err)
			return
		}
		obj, err := e.Encrypt(secret)
		if err != nil {
			t.Errorf("encrypt: %v", err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(obj.FullSerialize()))
	default:
		kbsError(w, http.StatusNotFound, "InvalidRequestPath", r.URL.Path)
	}
}

// verify checks an Attestation body as trustee does for SE and returns the
// HTTP status and the error detail. Shape errors also fail the test.
func (k *seKBS) verify(body []byte) (int, string) {
	t := k.t
	shape := func(format string, args ...any) (int, string) {
		t.Errorf("attestation: "+format, args...)
		return http.StatusBadRequest, "SerdeError"
	}
	var att map[string]json.RawMessage
	if err := json.Unmarshal(body, &att); err != nil {
		return shape("not a JSON object: %v", err)
	}
	if got := sorted(keysOf(t, "attestation", body)); got != "init-data,runtime-data,tee-evidence" {
		return shape("members %s", got)
	}
	if string(att["init-data"]) != "null" {
		return shape("init-data %s, want null", att["init-data"])
	}
	if got := sorted(keysOf(t, "runtime-data", att["runtime-data"])); got != "nonce,tee-pubkey" {
		return shape("runtime-data members %s", got)
	}
	var rd struct {
		Nonce  string          `json:"nonce"`
		TEEKey json.RawMessage `json:"tee-pubkey"`
	}
	if err := json.Unmarshal(att["runtime-data"], &rd); err != nil {
		return shape("runtime-data: %v", err)
	}
	if rd.Nonce != k.nonce {
		return http.StatusUnauthorized, "the nonce in the handshake session is different"
	}
	var key map[string]string
	if err := json.Unmarshal(rd.TEEKey, &key); err != nil {
		return shape("tee-pubkey: %v", err)
	}
	want := "alg,crv,kty,x,y"
	if key["kty"] == "RSA" {
		want = "alg,e,kty,n"
	}
	if got := sorted(keysOf(t, "tee-pubkey", rd.TEEKey)); got != want {
		return shape("tee-pubkey members %s, want %s", got, want)
	}
	k.teePub = rd.TEEKey
	var te map[string]json.RawMessage
	if err := json.Unmarshal(att["tee-evidence"], &te); err != nil {
		return shape("tee-evidence: %v", err)
	}
	if got := sorted(keysOf(t, "tee-evidence", att["tee-evidence"])); got != "additional_evidence,primary_evidence" || string(te["additional_evidence"]) != `""` {
		return shape("tee-evidence members %s, additional_evidence %s", got, te["additional_evidence"])
	}
	// The SE evidence: guest-components' SeAttestationResponse.
	ev := te["primary_evidence"]
	if got := strings.Join(keysOf(t, "primary_evidence", ev), ","); got != "measurement,additional_data,user_data,cuid,encr_measurement_key,encr_request_nonce,image_hdr_tags" {
		return shape("primary_evidence members %s", got)
	}
	var sev se.Evidence
	if err := json.Unmarshal(ev, &sev); err != nil {
		return shape("primary_evidence: %v", err)
	}
	req := seRequest()
	if len(sev.Measurement) != int(req.MeasurementSize) || len(sev.CUID) != se.CUIDSize || len(sev.UserData) != se.UserDataSize ||
		!bytes.Equal(sev.ImageHdrTags, req.ImageHdrTags) || !bytes.Equal(sev.EncrMeasurementKey, req.EncrMeasurementKey) || !bytes.Equal(sev.EncrRequestNonce, req.EncrRequestNonce) {
		return shape("primary_evidence fields %+v", sev)
	}
	// The binding, computed independently of the client: sorted keys,
	// no HTML escaping, no insignificant space (JCS for this ASCII data).
	var pub map[string]any
	_ = json.Unmarshal(rd.TEEKey, &pub)
	var canon bytes.Buffer
	enc := json.NewEncoder(&canon)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(map[string]any{"additional-evidence": "", "nonce": rd.Nonce, "tee-pubkey": pub}); err != nil {
		return shape("canonical runtime data: %v", err)
	}
	h := k.hash.New()
	h.Write(bytes.TrimSuffix(canon.Bytes(), []byte("\n")))
	d := h.Sum(nil)
	k.digest = d
	if !bytes.Equal(sev.UserData[:len(d)], d) || !bytes.Equal(sev.UserData[len(d):], make([]byte, se.UserDataSize-len(d))) {
		return http.StatusUnauthorized, fmt.Sprintf("USER_DATA content mismatch in IBM SEL evidence: got %x, want %x", sev.UserData, d)
	}
	return http.StatusOK, ""
}

func newSEClient(t *testing.T, k *seKBS, primary attester.Attester, mod func(*Config)) *Client {
	t.Helper()
	cfg := Config{URL: k.srv.URL, ExtraRootCAs: k.caPEM(), Primary: primary, Backoff: fast}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestSERoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name  string
		extra string
		hash  crypto.Hash
		alg   KeyAlgorithm
	}{
		// trustee v0.21 and later select sha512 for SE.
		{"sha512-selected", `{"selected-hash-algorithm":"sha512"}`, crypto.SHA512, KeyECDHP256},
		{"sha512-uppercase", `{"selected-hash-algorithm":"SHA512"}`, crypto.SHA512, KeyECDHP521},
		{"sha512-rsa-key", `{"selected-hash-algorithm":"sha512"}`, crypto.SHA512, KeyRSAOAEP},
		// trustee v0.20 answers "" and verifies SE with sha384.
		{"no-selection-sha384", `""`, crypto.SHA384, KeyECDHP256},
		{"extra-params-absent-sha384", "-", crypto.SHA384, KeyECDHP256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nonce := seNonce(t, nil)
			k := startSEKBS(t, nonce, tc.extra, tc.hash)
			uv := &seUV{}
			c := newSEClient(t, k, se.New(uv), func(c *Config) { c.KeyAlgorithm = tc.alg })
			for range 2 {
				got, err := c.Resource(context.Background(), "kbs:///"+secretPath)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, secret) {
					t.Fatalf("resource = %q", got)
				}
			}
			if a, at, r := k.counts(); a != 1 || at != 1 || r != 2 {
				t.Fatalf("KBS saw auth %d attest %d resource %d; want 1 1 2 (token reused)", a, at, r)
			}
			// The UV got the verifier's request and the digest the KBS
			// computed, zero-padded to 64 bytes.
			kd := k.lastDigest()
			if len(kd) != tc.hash.Size() {
				t.Fatalf("KBS digest %d bytes, want %d", len(kd), tc.hash.Size())
			}
			req := seRequest()
			got := uv.last(t)
			wantUD := append(slices.Clone(kd), make([]byte, se.UserDataSize-len(kd))...)
			if !bytes.Equal(got.UserData, wantUD) || !bytes.Equal(got.ARCB, req.RequestBlob) || got.MeasurementSize != req.MeasurementSize || got.AdditionalSize != req.AdditionalSize {
				t.Fatalf("UV call %+v, want user data %x", got, wantUD)
			}
			// The client's own digest agrees with the KBS's.
			pub, _ := c.TEEPublicKey()
			d, err := RuntimeDigest(tc.hash, RuntimeData{Nonce: nonce, TEEPubKey: pub}, "")
			if err != nil || !bytes.Equal(d, kd) {
				t.Fatalf("RuntimeDigest %x, %v; KBS %x", d, err, kd)
			}
		})
	}
}

// tamperSE flips a bit of the runtime_data_digest the client injected.
type tamperSE struct{ *se.Attester }

func (a tamperSE) Evidence(ctx context.Context, request []byte) ([]byte, error) {
	r, err := se.ParseRequest(request)
	if err != nil {
		return nil, err
	}
	r.RuntimeDataDigest[0] ^= 1
	b, _ := json.Marshal(r)
	return a.Attester.Evidence(ctx, b)
}

func TestSEWrongBindingRefused(t *testing.T) {
	k := startSEKBS(t, seNonce(t, nil), `{"selected-hash-algorithm":"sha512"}`, crypto.SHA512)
	c := newSEClient(t, k, tamperSE{se.New(&seUV{})}, nil)
	_, err := c.Resource(context.Background(), "kbs:///"+secretPath)
	ke := checkError(t, err, k.srv.URL, StepAttest, http.StatusUnauthorized, errdefs.ErrPermissionDenied)
	if ke.Type != "AttestationError" || !strings.Contains(ke.Detail, "USER_DATA") {
		t.Fatalf("error %v", err)
	}
}

func TestSEChallengeErrors(t *testing.T) {
	const sha512 = `{"selected-hash-algorithm":"sha512"}`
	for _, tc := range []struct {
		name, nonce, extra string
		class              error
		want               []string
	}{
		{"empty-nonce", "", sha512, errdefs.ErrInvalidArgument, []string{"challenge nonce empty"}},
		{"plain-nonce", base64.StdEncoding.EncodeToString(make([]byte, 32)), sha512, errdefs.ErrInvalidArgument,
			[]string{"challenge nonce is not an se attestation request", "document"}},
		{"nonce-json-array", `[1,2,3]`, sha512, errdefs.ErrInvalidArgument, []string{"se attestation request", "document"}},
		{"request-blob-missing", seNonce(t, func(m map[string]any) { delete(m, "request_blob") }), sha512, errdefs.ErrInvalidArgument,
			[]string{"se attestation request", "request_blob", "missing"}},
		{"request-blob-not-base64", seNonce(t, func(m map[string]any) { m["request_blob"] = "%%%" }), sha512, errdefs.ErrInvalidArgument,
			[]string{"request_blob"}},
		{"image-hdr-tags-short", seNonce(t, func(m map[string]any) { m["image_hdr_tags"] = "AAAA" }), sha512, errdefs.ErrInvalidArgument,
			[]string{"image_hdr_tags"}},
		{"measurement-size-zero", seNonce(t, func(m map[string]any) { m["measurement_size"] = 0 }), sha512, errdefs.ErrInvalidArgument,
			[]string{"measurement_size"}},
		{"nonce-too-long", strings.Repeat("A", maxSEChallenge), sha512, errdefs.ErrOutOfRange, []string{"longer than"}},
		{"extra-params-hash-not-string", seNonce(t, nil), `{"selected-hash-algorithm":512}`, errdefs.ErrInvalidArgument,
			[]string{"extra-params selected-hash-algorithm", "not a string"}},
		{"extra-params-hash-null", seNonce(t, nil), `{"selected-hash-algorithm":null}`, errdefs.ErrNotImplemented,
			[]string{"extra-params selected-hash-algorithm"}},
		{"extra-params-hash-unknown", seNonce(t, nil), `{"selected-hash-algorithm":"sm3"}`, errdefs.ErrNotImplemented,
			[]string{"extra-params selected-hash-algorithm", `"sm3"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := startSEKBS(t, tc.nonce, tc.extra, crypto.SHA512)
			uv := &seUV{}
			c := newSEClient(t, k, se.New(uv), nil)
			_, err := c.Resource(context.Background(), "kbs:///"+secretPath)
			checkError(t, err, k.srv.URL, StepAuth, 0, tc.class)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error %q does not say %q", err, w)
				}
			}
			// A broken challenge is not retried, and nothing reaches the UV
			// or /attest.
			if a, at, _ := k.counts(); a != 1 || at != 0 || len(uv.calls) != 0 {
				t.Fatalf("KBS saw auth %d attest %d, UV calls %d", a, at, len(uv.calls))
			}
		})
	}
}

func TestSEUVFailure(t *testing.T) {
	uvErr := fmt.Errorf("uv attest: ultravisor rc 0x0106 rrc 0x0000: %w", errdefs.ErrFailedPrecondition)
	for _, tc := range []struct {
		name  string
		uv    se.UV
		class error
		auths int
		want  string
	}{
		// A failed UV call may pass with a fresh request: retried.
		{"uv-error", &seUV{err: uvErr}, errdefs.ErrFailedPrecondition, 2, "rc 0x0106"},
		{"uv-short-measurement", &seUV{res: &se.AttestResult{Measurement: make([]byte, 3)}}, errdefs.ErrDataLoss, 2, "measurement"},
		// No UV device at all is not retried.
		{"no-uv", nil, errdefs.ErrNotImplemented, 1, "ultravisor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := startSEKBS(t, seNonce(t, nil), `{"selected-hash-algorithm":"sha512"}`, crypto.SHA512)
			c := newSEClient(t, k, se.New(tc.uv), func(c *Config) { c.RCARAttempts = 2 })
			_, err := c.Resource(context.Background(), "kbs:///"+secretPath)
			checkError(t, err, k.srv.URL, StepEvidence, 0, tc.class)
			if !strings.Contains(err.Error(), "se evidence") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not name the se evidence and %q", err, tc.want)
			}
			if a, at, _ := k.counts(); a != tc.auths || at != 0 {
				t.Fatalf("KBS saw auth %d attest %d, want %d 0", a, at, tc.auths)
			}
		})
	}
}

func TestSEWithDevicesRejected(t *testing.T) {
	_, err := New(Config{URL: "https://kbs", Primary: se.New(nil), Additional: []attester.Attester{sample.NewDevice()}})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "Additional") {
		t.Fatalf("New = %v", err)
	}
}
