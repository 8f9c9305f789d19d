package ehsm

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeEHSM is a recorded-protocol fake of eHSM-KMS's Decrypt action. It
// checks requests the way ehsm_kms_service does (member types, 13-digit
// timestamp within 10 minutes, nonce length and replay, payload formats)
// and verifies the signature with its own, deliberately separate
// re-implementation of the service's params_sort_str: walk the decoded JSON
// object, sort names, skip empty values, recurse into objects. It answers
// as the service does: HTTP 200 with {"code","message","result"}.
type fakeEHSM struct {
	t      *testing.T
	srv    *httptest.Server
	prefix string
	now    time.Time
	keys   map[string]string // app id -> API key

	mu          sync.Mutex
	ciphertexts map[string]fakeCiphertext // base64 ciphertext -> entry
	cmks        map[string]bool           // known key ids
	seen        map[string]bool           // appid/nonce/timestamp
	failures    []fakeFailure
	requests    int
	lastBody    map[string]any
	lastURL     string
	lastHeader  http.Header
	conns       atomic.Int32
}

type fakeCiphertext struct {
	keyID     string
	plaintext []byte
}

// fakeFailure answers one request with status and body instead.
type fakeFailure struct {
	status int
	header map[string]string
	body   string
}

const (
	fakeAppID  = "86f0e9fe-7f05-4110-9f65-a224ddee1233"
	fakeAPIKey = "APIKEY-MARKER-2LkLxbtXGHwBexb1pgnE"
	fakeKeyID  = "aac3e45a-d3dc-4791-89b6-4ada0e38e6ef"
	otherKeyID = "0d6fb2a4-7f34-4f2e-9a44-5a6c1c2d3e4f"
)

var (
	fakeUUID   = regexp.MustCompile(`^[a-z\d]{8}-[a-z\d]{4}-[a-z\d]{4}-[a-z\d]{4}-[a-z\d]{12}$`)
	fakeBase64 = regexp.MustCompile(`^[a-zA-Z0-9+/]+={0,2}$`)
)

func newFakeEHSM(t *testing.T, tlsServer bool) *fakeEHSM {
	f := &fakeEHSM{
		t: t, now: time.Date(2026, 11, 27, 19, 0, 0, 0, time.UTC),
		keys:        map[string]string{fakeAppID: fakeAPIKey},
		ciphertexts: map[string]fakeCiphertext{},
		cmks:        map[string]bool{fakeKeyID: true, otherKeyID: true},
		seen:        map[string]bool{},
	}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // expected TLS handshake failures
	f.srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			f.conns.Add(1)
		}
	}
	if tlsServer {
		f.srv.StartTLS()
	} else {
		f.srv.Start()
	}
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeEHSM) caPEM() string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw}))
}

// reply writes eHSM's result envelope with HTTP 200.
func (f *fakeEHSM) reply(w http.ResponseWriter, code int, msg string, result map[string]any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	body := map[string]any{"code": code, "result": map[string]any{}}
	if msg != "" {
		body["message"] = msg
	}
	if result != nil {
		body["result"] = result
	}
	json.NewEncoder(w).Encode(body)
}

func (f *fakeEHSM) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	raw, _ := io.ReadAll(r.Body)
	f.lastURL, f.lastHeader = r.URL.String(), r.Header.Clone()
	if len(f.failures) > 0 {
		fl := f.failures[0]
		f.failures = f.failures[1:]
		for k, v := range fl.header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(fl.status)
		io.WriteString(w, fl.body)
		return
	}
	if r.Method != http.MethodPost || r.URL.Path != f.prefix+"/ehsm" {
		w.WriteHeader(http.StatusNotFound)
		io.WriteString(w, "<html>Cannot "+r.Method+"</html>")
		return
	}
	if r.URL.Query().Get("Action") != "Decrypt" || len(r.URL.Query()) != 1 {
		f.reply(w, 404, "API Not Found", nil)
		return
	}
	if r.Header.Get("Content-Type") != "application/json" {
		f.reply(w, 400, "Missing required parameters", nil)
		return
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var body map[string]any
	if err := dec.Decode(&body); err != nil {
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, "<html>SyntaxError</html>")
		return
	}
	f.lastBody = body
	for k := range body {
		switch k {
		case "appid", "nonce", "timestamp", "sign", "payload":
		default:
			f.t.Errorf("request has unexpected member %q", k)
		}
	}
	appid, ok1 := body["appid"].(string)
	timestamp, ok2 := body["timestamp"].(string)
	sig, ok3 := body["sign"].(string)
	payload, ok4 := body["payload"].(map[string]any)
	if appid == "" || timestamp == "" || sig == "" || body["payload"] == nil {
		f.reply(w, 400, "Missing required parameters", nil)
		return
	}
	if !ok1 || !ok2 || !ok3 || !ok4 {
		f.reply(w, 400, "param type error", nil)
		return
	}
	nonce, ok := body["nonce"].(string)
	if !ok || len(nonce) > 64 {
		f.reply(w, 400, "Nonce length error", nil)
		return
	}
	if len(timestamp) != 13 {
		f.reply(w, 400, "Timestamp length error", nil)
		return
	}
	ms, err := strconv.ParseInt(timestamp, 10, 64)
	if err != nil || time.UnixMilli(ms).Sub(f.now).Abs() >= 10*time.Minute {
		f.reply(w, 400, "Timestamp error", nil)
		return
	}
	if f.seen[appid+"/"+nonce+"/"+timestamp] {
		f.reply(w, 400, "Timestamp can't be repeated in 20 minutes", nil)
		return
	}
	f.seen[appid+"/"+nonce+"/"+timestamp] = true
	for k := range payload {
		if k != "ciphertext" && k != "keyid" {
			f.t.Errorf("payload has unexpected member %q", k)
		}
	}
	keyid, _ := payload["keyid"].(string)
	ct, _ := payload["ciphertext"].(string)
	if keyid == "" || ct == "" {
		f.reply(w, 400, "Missing required parameters, The keyid cannot be empty.", nil)
		return
	}
	if !fakeUUID.MatchString(keyid) {
		f.reply(w, 400, "Parameter invalid, The keyid format wrong.", nil)
		return
	}
	if len(ct)%4 != 0 || !fakeBase64.MatchString(ct) || len(ct) > (6*1024+30)*4/3 {
		f.reply(w, 400, "Parameter invalid, The ciphertext must be of base64 type.", nil)
		return
	}
	key, ok := f.keys[appid]
	if !ok {
		// gen_hmac finds no user: _result(400, undefined).
		f.reply(w, 400, "", nil)
		return
	}
	m := hmac.New(sha256.New, []byte(key))
	m.Write([]byte(sortString(map[string]any{"appid": appid, "nonce": nonce, "timestamp": timestamp, "payload": payload})))
	if sig != base64.StdEncoding.EncodeToString(m.Sum(nil)) {
		f.reply(w, 400, "sign error", nil)
		return
	}
	if !f.cmks[keyid] {
		f.reply(w, 400, "keyid error", nil)
		return
	}
	entry, ok := f.ciphertexts[ct]
	if !ok || entry.keyID != keyid {
		f.reply(w, 400, "Decryption failed, Please confirm that your parameters are correct.", nil)
		return
	}
	f.reply(w, 200, "success!", map[string]any{"plaintext": base64.StdEncoding.EncodeToString(entry.plaintext)})
}

// sortString is the fake's own params_sort_str: names sorted, members whose
// value is empty or null skipped, objects canonicalized recursively.
func sortString(obj map[string]any) string {
	names := make([]string, 0, len(obj))
	for k := range obj {
		names = append(names, k)
	}
	sort.Strings(names)
	out := ""
	for _, k := range names {
		var v string
		switch x := obj[k].(type) {
		case nil:
			continue
		case map[string]any:
			v = sortString(x)
		default:
			v = fmt.Sprint(x)
		}
		if v == "" {
			continue
		}
		if out != "" {
			out += "&"
		}
		out += k + "=" + v
	}
	return out
}

// encrypt registers plaintext under keyID and returns the ciphertext text
// eHSM's Encrypt would have returned (base64 of IV, data and tag).
func (f *fakeEHSM) encrypt(keyID string, plaintext []byte) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	blob := make([]byte, 12+len(plaintext)+16)
	rand.Read(blob)
	ct := base64.StdEncoding.EncodeToString(blob)
	f.ciphertexts[ct] = fakeCiphertext{keyID: keyID, plaintext: append([]byte(nil), plaintext...)}
	return ct
}

func (f *fakeEHSM) setFailures(fs ...fakeFailure) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = fs
}

func (f *fakeEHSM) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.requests
}

func (f *fakeEHSM) last() (map[string]any, string, http.Header) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lastBody, f.lastURL, f.lastHeader
}
