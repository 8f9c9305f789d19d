package aliyun

import (
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// fakeInstance is a recorded-protocol fake of a KMS instance's Decrypt and
// GetSecretValue. It checks the headers, verifies the RSA signature over
// the documented string to sign with its own (deliberately separate and
// minimal) code and the client key's public key, decodes the protobuf
// request itself, and answers 200 with a protobuf response or an error
// status with a protobuf Error, as the service does.
type fakeInstance struct {
	t   *testing.T
	srv *httptest.Server
	now time.Time

	mu       sync.Mutex
	keys     map[string]*rsa.PublicKey // client key id -> public key
	blobs    map[string]fakeBlob       // ciphertext -> contents
	secrets  map[string]map[string]string
	next     []func(w http.ResponseWriter) // injected answers, consumed first
	requests int
	conns    atomic.Int32
	last     map[protowire.Number][]byte // last request's fields
	lastHdr  http.Header
}

type fakeBlob struct {
	keyID     string
	iv        []byte
	plaintext []byte
}

func newFakeInstance(t *testing.T) *fakeInstance {
	f := &fakeInstance{
		t: t, now: time.Date(2026, 11, 27, 19, 0, 0, 0, time.UTC),
		keys: map[string]*rsa.PublicKey{}, blobs: map[string]fakeBlob{}, secrets: map[string]map[string]string{},
	}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // expected TLS failures
	f.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			f.conns.Add(1)
		}
	}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

// caPEM is the fake's certificate, standing in for PrivateKmsCA_<id>.pem.
func (f *fakeInstance) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
}

// seal records a ciphertext for keyID and iv and returns it.
func (f *fakeInstance) seal(keyID string, iv, plaintext []byte) []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	blob := []byte(fmt.Sprintf("blob-%d-%s", len(f.blobs), keyID))
	f.blobs[string(blob)] = fakeBlob{keyID: keyID, iv: iv, plaintext: plaintext}
	return blob
}

func (f *fakeInstance) inject(fs ...func(w http.ResponseWriter)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.next = append(f.next[:0:0], fs...)
}

func (f *fakeInstance) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests
}

// fakeError writes the protobuf Error message.
func fakeError(w http.ResponseWriter, status int, code, msg string) {
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(status))
	for i, s := range []string{code, msg, "req-0001"} {
		b = protowire.AppendTag(b, protowire.Number(i+2), protowire.BytesType)
		b = protowire.AppendString(b, s)
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(status)
	w.Write(b)
}

// parseFields decodes a flat protobuf message: length-delimited fields as
// their payload, varints as their decimal text.
func parseFields(b []byte) (map[protowire.Number][]byte, error) {
	out := map[protowire.Number][]byte{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		switch typ {
		case protowire.BytesType:
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			out[num] = v
			b = b[n:]
		case protowire.VarintType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			out[num] = []byte(fmt.Sprint(v))
			b = b[n:]
		default:
			return nil, fmt.Errorf("wire type %d", typ)
		}
	}
	return out, nil
}

func (f *fakeInstance) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	body, _ := io.ReadAll(r.Body)
	if len(f.next) > 0 {
		h := f.next[0]
		f.next = f.next[1:]
		h(w)
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != "/" || r.URL.RawQuery != "" {
		fakeError(w, 404, "InvalidApiName", "no such path")
		return
	}
	if code, msg := f.verify(r, body); code != "" {
		status := 400
		if code == "SignatureNotMatch" {
			status = 401
		}
		fakeError(w, status, code, msg)
		return
	}
	fields, err := parseFields(body)
	if err != nil {
		fakeError(w, 400, "InvalidParameter", "body is not protobuf")
		return
	}
	f.last, f.lastHdr = fields, r.Header.Clone()
	var resp []byte
	switch r.Header.Get("X-Kms-Apiname") {
	case "Decrypt":
		blob, ok := f.blobs[string(fields[1])]
		switch {
		case string(fields[3]) != "AES_GCM" || len(fields[4]) != 0 || len(fields[6]) != 0:
			fakeError(w, 400, "InvalidParameter", "algorithm, aad or padding")
			return
		case !ok:
			fakeError(w, 400, "InvalidParameter", "The CiphertextBlob is invalid")
			return
		case blob.keyID != string(fields[2]):
			fakeError(w, 404, "Forbidden.KeyNotFound", "The specified Key is not found.")
			return
		case string(blob.iv) != string(fields[5]):
			fakeError(w, 400, "InvalidParameter", "decryption failed")
			return
		}
		resp = protowire.AppendTag(resp, 1, protowire.BytesType)
		resp = protowire.AppendString(resp, blob.keyID)
		resp = protowire.AppendTag(resp, 2, protowire.BytesType)
		resp = protowire.AppendBytes(resp, blob.plaintext)
		resp = protowire.AppendTag(resp, 3, protowire.BytesType)
		resp = protowire.AppendString(resp, "req-0002")
		resp = protowire.AppendTag(resp, 4, protowire.BytesType)
		resp = protowire.AppendString(resp, "AES_GCM")
		// An unknown field a newer server might add.
		resp = protowire.AppendTag(resp, 99, protowire.Fixed64Type)
		resp = protowire.AppendFixed64(resp, 7)
	case "GetSecretValue":
		versions, ok := f.secrets[string(fields[1])]
		stage := string(fields[2])
		if stage == "" {
			stage = "ACSCurrent"
		}
		data, okStage := versions[stage]
		if string(fields[4]) != "1" {
			fakeError(w, 400, "InvalidParameter", "FetchExtendedConfig")
			return
		}
		if !ok || !okStage {
			fakeError(w, 404, "Forbidden.ResourceNotFound", "The resource not exists.")
			return
		}
		for _, kv := range []struct {
			n int
			v string
		}{{1, string(fields[1])}, {2, "Generic"}, {3, data}, {4, "text"}, {5, stage}, {5, "ACSCurrent"}, {6, "v1"}, {8, "req-0003"}} {
			resp = protowire.AppendTag(resp, protowire.Number(kv.n), protowire.BytesType)
			resp = protowire.AppendString(resp, kv.v)
		}
	default:
		fakeError(w, 400, "InvalidApiName", "unknown api")
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(resp)
}

// verify checks the request's headers and signature; it returns an error
// code and message, or "".
func (f *fakeInstance) verify(r *http.Request, body []byte) (string, string) {
	if r.Header.Get("x-kms-apiversion") != "dkms-gcs-0.2" {
		return "InvalidApiVersion", "bad api version"
	}
	if r.Header.Get("x-kms-signaturemethod") != "RSA_PKCS1_SHA_256" {
		return "InvalidParam", "The Param x-kms-signaturemethod is invalid."
	}
	if r.Header.Get("Content-Type") != "application/x-protobuf" || r.Header.Get("Accept") != "application/x-protobuf" {
		return "InvalidParameter", "content type"
	}
	sum := sha256.Sum256(body)
	if r.Header.Get("Content-Sha256") != strings.ToUpper(hex.EncodeToString(sum[:])) {
		return "InvalidParameter", "content sha256"
	}
	date, err := time.Parse(time.RFC1123, r.Header.Get("Date"))
	if err != nil || !strings.HasSuffix(r.Header.Get("Date"), " GMT") {
		return "InvalidParam", "The Param Date is invalid."
	}
	if d := date.Sub(f.now); d > 15*time.Minute || d < -15*time.Minute {
		return "RequestTimeTooSkewed", "Request time exceeds server time more than 15 minutes."
	}
	pub := f.keys[r.Header.Get("x-kms-acccesskeyid")]
	if pub == nil {
		return "MissingParameter", "Parameter x-kms-acccesskeyid does not exist in http header or body."
	}
	// The documented string to sign, assembled here independently.
	var kms []string
	for name, vals := range r.Header {
		if l := strings.ToLower(name); strings.HasPrefix(l, "x-kms-") {
			kms = append(kms, l+":"+strings.TrimSpace(vals[0])+"\n")
		}
	}
	sort.Strings(kms)
	sts := "POST\n" + r.Header.Get("Content-Sha256") + "\n" + r.Header.Get("Content-Type") + "\n" +
		r.Header.Get("Date") + "\n" + strings.Join(kms, "") + "/"
	auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	sig, err := base64.StdEncoding.DecodeString(auth)
	digest := sha256.Sum256([]byte(sts))
	if !ok || err != nil || rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) != nil {
		return "SignatureNotMatch", "Signature is not matched."
	}
	return "", ""
}

// fakeOpenAPI is a recorded-protocol fake of the KMS OpenAPI
// GetSecretValue (RPC style). It verifies the HMAC-SHA1 signature with
// its own encoding (url.QueryEscape with the RPC substitutions) and
// answers JSON as KMS does.
type fakeOpenAPI struct {
	srv    *httptest.Server
	now    time.Time
	region string
	creds  map[string][2]string // access key id -> secret, token

	mu       sync.Mutex
	secrets  map[string]string
	requests int
	last     url.Values
}

func newFakeOpenAPI(t *testing.T) *fakeOpenAPI {
	f := &fakeOpenAPI{
		now: time.Date(2026, 11, 27, 19, 0, 0, 0, time.UTC), region: "cn-hangzhou",
		creds: map[string][2]string{}, secrets: map[string]string{},
	}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeOpenAPI) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}))
}

func rpcEscape(s string) string {
	s = url.QueryEscape(s)
	s = strings.ReplaceAll(s, "+", "%20")
	s = strings.ReplaceAll(s, "*", "%2A")
	return strings.ReplaceAll(s, "%7E", "~")
}

func (f *fakeOpenAPI) fail(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]any{"HttpStatus": status, "Code": code, "Message": msg, "RequestId": "rpc-req-1"})
	w.Write(b)
}

func (f *fakeOpenAPI) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	q := r.URL.Query()
	f.last = q
	if r.Method != http.MethodPost || r.URL.Path != "/" {
		f.fail(w, 404, "InvalidAction", "")
		return
	}
	for k, want := range map[string]string{"Version": "2016-01-20", "Format": "JSON", "SignatureMethod": "HMAC-SHA1",
		"SignatureVersion": "1.0", "Action": "GetSecretValue", "RegionId": f.region} {
		if q.Get(k) != want {
			f.fail(w, 400, "MissingParameter", k)
			return
		}
	}
	if ts, err := time.Parse("2006-01-02T15:04:05Z", q.Get("Timestamp")); err != nil || ts.Sub(f.now).Abs() > 15*time.Minute {
		f.fail(w, 400, "IllegalTimestamp", "bad timestamp")
		return
	}
	cred, ok := f.creds[q.Get("AccessKeyId")]
	if !ok || q.Get("SignatureNonce") == "" {
		f.fail(w, 404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
		return
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		if k != "Signature" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var pairs []string
	for _, k := range keys {
		pairs = append(pairs, rpcEscape(k)+"="+rpcEscape(q.Get(k)))
	}
	mac := hmac.New(sha1.New, []byte(cred[0]+"&"))
	mac.Write([]byte("POST&%2F&" + rpcEscape(strings.Join(pairs, "&"))))
	if q.Get("Signature") != base64.StdEncoding.EncodeToString(mac.Sum(nil)) {
		f.fail(w, 400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
		return
	}
	if q.Get("SecurityToken") != cred[1] {
		f.fail(w, 400, "InvalidSecurityToken.MismatchWithAccessKey", "token")
		return
	}
	data, ok := f.secrets[q.Get("SecretName")+"/"+q.Get("VersionStage")]
	if !ok {
		f.fail(w, 404, "Forbidden.ResourceNotFound", "The resource not exists.")
		return
	}
	b, _ := json.Marshal(map[string]any{"SecretName": q.Get("SecretName"), "SecretData": data, "SecretDataType": "text",
		"VersionStages": map[string]any{"VersionStage": []string{"ACSCurrent"}}, "RequestId": "rpc-req-2"})
	w.Header().Set("Content-Type", "application/json")
	w.Write(b)
}

// fakeMetadata is the ECS metadata server's RAM credential endpoint.
func fakeMetadata(t *testing.T, role string, body string) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/latest/meta-data/ram/security-credentials/"+role {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv
}
