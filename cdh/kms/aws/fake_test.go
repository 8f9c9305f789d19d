package aws

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAWS is a recorded-protocol fake of the awsJson1.1 KMS Decrypt and
// Secrets Manager GetSecretValue operations. It verifies SigV4 signatures
// with its own (deliberately separate and minimal) implementation and
// answers as AWS does: 200 with the operation's JSON, or a 4xx/5xx with
// {"__type","message"}.
type fakeAWS struct {
	t      *testing.T
	srv    *httptest.Server
	region string
	now    time.Time
	keys   map[string]string // access key id -> secret

	mu sync.Mutex
	// ciphertexts maps a ciphertext blob to its key, context and plaintext.
	ciphertexts map[string]fakeCiphertext
	secrets     map[string]fakeSecret
	// failures answers the next len(failures) requests with these statuses.
	failures []int
	requests int
	lastBody map[string]any
}

type fakeCiphertext struct {
	keyID     string
	context   map[string]string
	plaintext []byte
}

type fakeSecret struct {
	str    *string
	bin    []byte
	stages map[string]string // stage -> value
}

const (
	fakeAKID      = "AKIDFAKE0001"
	fakeSecretKey = "fake/secret+access/key"
)

func newFakeAWS(t *testing.T) *fakeAWS {
	f := &fakeAWS{
		t: t, region: "eu-west-1", now: time.Date(2026, 11, 27, 19, 0, 0, 0, time.UTC),
		keys:        map[string]string{fakeAKID: fakeSecretKey},
		ciphertexts: map[string]fakeCiphertext{},
		secrets:     map[string]fakeSecret{},
	}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAWS) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}))
}

func (f *fakeAWS) fail(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", ContentType)
	w.Header().Set("X-Amzn-ErrorType", typ)
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]string{"__type": typ, "message": msg})
	w.Write(b)
}

func (f *fakeAWS) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	body, _ := io.ReadAll(r.Body)
	if len(f.failures) > 0 {
		st := f.failures[0]
		f.failures = f.failures[1:]
		if st == http.StatusForbidden {
			w.WriteHeader(st)
			io.WriteString(w, "<html>forbidden</html>")
			return
		}
		f.fail(w, st, "InternalFailure", "injected failure")
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/" || r.URL.RawQuery != "" {
		f.fail(w, 404, "UnknownOperationException", "")
		return
	}
	if r.Header.Get("Content-Type") != ContentType {
		f.fail(w, 400, "SerializationException", "bad content type")
		return
	}
	target := r.Header.Get("X-Amz-Target")
	service := map[string]string{TargetDecrypt: ServiceKMS, TargetGetSecretValue: ServiceSecrets}[target]
	if service == "" {
		f.fail(w, 400, "UnknownOperationException", "")
		return
	}
	if typ, msg := f.verify(r, body, service); typ != "" {
		f.fail(w, 400, typ, msg)
		return
	}
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		f.fail(w, 400, "SerializationException", "")
		return
	}
	f.lastBody = req
	w.Header().Set("Content-Type", ContentType)
	switch target {
	case TargetDecrypt:
		var d struct {
			CiphertextBlob    []byte
			KeyID             *string `json:"KeyId"`
			EncryptionContext map[string]string
		}
		if err := json.Unmarshal(body, &d); err != nil {
			f.fail(w, 400, "SerializationException", "")
			return
		}
		ct, ok := f.ciphertexts[string(d.CiphertextBlob)]
		if !ok || !equalContext(ct.context, d.EncryptionContext) {
			f.fail(w, 400, "InvalidCiphertextException", "")
			return
		}
		if d.KeyID != nil && *d.KeyID != ct.keyID {
			f.fail(w, 400, "IncorrectKeyException", "The key ID in the request does not identify a CMK that can perform this operation.")
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"KeyId": ct.keyID, "Plaintext": ct.plaintext, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
	case TargetGetSecretValue:
		var g struct {
			SecretID     string `json:"SecretId"`
			VersionID    string `json:"VersionId"`
			VersionStage string `json:"VersionStage"`
		}
		json.Unmarshal(body, &g)
		s, ok := f.secrets[g.SecretID]
		if !ok {
			f.fail(w, 400, "ResourceNotFoundException", "Secrets Manager can't find the specified secret.")
			return
		}
		out := map[string]any{"ARN": "arn:aws:secretsmanager:eu-west-1:111122223333:secret:" + g.SecretID, "Name": g.SecretID}
		switch {
		case g.VersionStage != "":
			v, ok := s.stages[g.VersionStage]
			if !ok {
				f.fail(w, 400, "ResourceNotFoundException", "Secrets Manager can't find the specified secret value for staging label: "+g.VersionStage)
				return
			}
			out["SecretString"] = v
		case s.str != nil:
			out["SecretString"] = *s.str
		case s.bin != nil:
			out["SecretBinary"] = s.bin
		}
		json.NewEncoder(w).Encode(out)
	}
}

func equalContext(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// verify checks the SigV4 Authorization header; it returns an AWS error
// type and message when the request is not correctly signed.
func (f *fakeAWS) verify(r *http.Request, body []byte, service string) (string, string) {
	auth := r.Header.Get("Authorization")
	rest, ok := strings.CutPrefix(auth, "AWS4-HMAC-SHA256 ")
	if !ok {
		return "MissingAuthenticationTokenException", "Missing Authentication Token"
	}
	fields := map[string]string{}
	for _, p := range strings.Split(rest, ", ") {
		k, v, _ := strings.Cut(p, "=")
		fields[k] = v
	}
	cred := strings.Split(fields["Credential"], "/")
	if len(cred) != 5 || cred[4] != "aws4_request" {
		return "IncompleteSignatureException", "bad Credential"
	}
	secret, ok := f.keys[cred[0]]
	if !ok {
		return "UnrecognizedClientException", "The security token included in the request is invalid."
	}
	if cred[2] != f.region || cred[3] != service {
		return "InvalidSignatureException", "Credential should be scoped to a valid region/service."
	}
	date, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil || date.Sub(f.now).Abs() > 5*time.Minute || cred[1] != date.Format("20060102") {
		return "InvalidSignatureException", "Signature expired or bad date."
	}
	signed := strings.Split(fields["SignedHeaders"], ";")
	if !sort.StringsAreSorted(signed) {
		return "InvalidSignatureException", "SignedHeaders not sorted"
	}
	need := []string{"content-type", "host", "x-amz-date", "x-amz-target"}
	if r.Header.Get("X-Amz-Security-Token") != "" {
		need = append(need, "x-amz-security-token")
	}
	for _, n := range need {
		if !contains(signed, n) {
			return "InvalidSignatureException", "header " + n + " is not signed"
		}
	}
	var canon strings.Builder
	canon.WriteString("POST\n/\n\n")
	for _, n := range signed {
		v := r.Header.Get(n)
		if n == "host" {
			v = r.Host
		}
		canon.WriteString(n + ":" + strings.TrimSpace(v) + "\n")
	}
	bh := sha256.Sum256(body)
	canon.WriteString("\n" + fields["SignedHeaders"] + "\n" + hex.EncodeToString(bh[:]))
	ch := sha256.Sum256([]byte(canon.String()))
	sts := "AWS4-HMAC-SHA256\n" + r.Header.Get("X-Amz-Date") + "\n" + strings.Join(cred[1:], "/") + "\n" + hex.EncodeToString(ch[:])
	mac := func(k []byte, s string) []byte { m := hmac.New(sha256.New, k); m.Write([]byte(s)); return m.Sum(nil) }
	k := mac(mac(mac(mac([]byte("AWS4"+secret), cred[1]), cred[2]), cred[3]), "aws4_request")
	want := hex.EncodeToString(mac(k, sts))
	if !hmac.Equal([]byte(want), []byte(fields["Signature"])) {
		return "InvalidSignatureException", "The request signature we calculated does not match the signature you provided."
	}
	return "", ""
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// encrypt registers plaintext under keyID and context and returns the
// ciphertext blob KMS would have returned.
func (f *fakeAWS) encrypt(keyID string, context map[string]string, plaintext []byte) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	blob := []byte(fmt.Sprintf("fake-ciphertext-%d-%s", len(f.ciphertexts), keyID))
	f.ciphertexts[string(blob)] = fakeCiphertext{keyID: keyID, context: context, plaintext: append([]byte(nil), plaintext...)}
	return blob
}

func (f *fakeAWS) setFailures(st ...int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = st
}

func (f *fakeAWS) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests
}
