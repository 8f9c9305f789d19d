package ehsm

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
	"github.com/cova-project/cova/cdh/sealed"
	"github.com/cova-project/cova/cdh/sealed/sealedtest"
)

// marker is secret material no error or log line may contain.
const marker = "DATA-KEY-MARKER-7c2d"

func newTestProvider(t *testing.T, f *fakeEHSM, creds CredentialsProvider) *Provider {
	t.Helper()
	cfg := Config{Credentials: creds, Now: func() time.Time { return f.now }}
	if f.srv.TLS != nil {
		cfg.ExtraRootCAs = f.caPEM()
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.backoff = time.Millisecond
	return p
}

func goodCreds() StaticCredentials { return StaticCredentials{fakeAppID: fakeAPIKey} }

func settingsFor(appID, endpoint string) kms.Settings {
	s := kms.Settings{}
	if appID != "" {
		s["app_id"], _ = json.Marshal(appID)
	}
	if endpoint != "" {
		s["endpoint"], _ = json.Marshal(endpoint)
	}
	return s
}

// checkClean fails if s leaks secret material.
func checkClean(t *testing.T, s string) {
	t.Helper()
	for _, x := range []string{marker, base64.StdEncoding.EncodeToString([]byte(marker)), fakeAPIKey, `"sign"`} {
		if strings.Contains(s, x) {
			t.Fatalf("leaks %q: %s", x, s)
		}
	}
}

// TestSigningStringGolden checks the canonical string and signature of a
// Decrypt request against values built by hand from eHSM's documented
// rules (members sorted in ASCII order, name=value joined by '&', payload
// canonicalized the same way and nested as its value; sign =
// base64(HMAC-SHA256(APIKey, string))). The signature was computed with
// `printf %s "$S" | openssl dgst -sha256 -hmac "$KEY" -binary | base64`.
func TestSigningStringGolden(t *testing.T) {
	const (
		want    = "appid=86f0e9fe-7f05-4110-9f65-a224ddee1233&nonce=14542961232651287040&payload=ciphertext=q83vASNFZ4kAESIzRFVmd4iZqrvM3e7/+A==&keyid=aac3e45a-d3dc-4791-89b6-4ada0e38e6ef&timestamp=1764270000000"
		wantSig = "lyklAvyvPMW160B5ITSg0wBByX0S0gpaTlO7DjnWH/U="
	)
	// Deliberately out of order.
	got := signingString([]param{
		{key: "timestamp", value: "1764270000000"},
		{key: "payload", nested: []param{
			{key: "keyid", value: "aac3e45a-d3dc-4791-89b6-4ada0e38e6ef"},
			{key: "ciphertext", value: "q83vASNFZ4kAESIzRFVmd4iZqrvM3e7/+A=="},
		}},
		{key: "nonce", value: "14542961232651287040"},
		{key: "appid", value: "86f0e9fe-7f05-4110-9f65-a224ddee1233"},
	})
	if got != want {
		t.Fatalf("signing string\n got %s\nwant %s", got, want)
	}
	if s := sign("2LkLxbtXGHwBexb1pgnEz8JZWHLgaSVb", got); s != wantSig {
		t.Fatalf("sign = %s, want %s", s, wantSig)
	}
}

func TestSigningStringRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []param
		want string
	}{
		{"empty values skipped", []param{{key: "b", value: ""}, {key: "a", value: "1"}, {key: "c", value: "3"}}, "a=1&c=3"},
		{"empty payload skipped", []param{{key: "payload", nested: []param{}}, {key: "appid", value: "x"}}, "appid=x"},
		{"ASCII order, upper case first", []param{{key: "b", value: "2"}, {key: "B", value: "1"}, {key: "aa", value: "3"}}, "B=1&aa=3&b=2"},
		{"nested sorted", []param{{key: "p", nested: []param{{key: "z", value: "1"}, {key: "a", value: "2"}}}}, "p=a=2&z=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := signingString(tc.in); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestDecrypt(t *testing.T) {
	f := newFakeEHSM(t, true)
	ct := f.encrypt(fakeKeyID, []byte(marker))
	other := f.encrypt(otherKeyID, []byte("other"))
	tampered := []byte(ct)
	if tampered[0] == 'A' {
		tampered[0] = 'B'
	} else {
		tampered[0] = 'A'
	}
	credDir := t.TempDir()

	for _, tc := range []struct {
		name  string
		creds CredentialsProvider
		ct    []byte
		keyID string
		ann   kms.Annotations
		appID string
		now   time.Time
		class func(error) bool
		inErr []string
	}{
		{name: "ok", creds: goodCreds(), ct: []byte(ct), keyID: fakeKeyID},
		{name: "annotations ignored", creds: goodCreds(), ct: []byte(ct), keyID: fakeKeyID, ann: kms.Annotations{"iv": json.RawMessage(`"x"`)}},
		{name: "wrong key", creds: goodCreds(), ct: []byte(other), keyID: fakeKeyID, class: errdefs.IsInvalidArgument,
			inErr: []string{"ehsm Decrypt at 127.0.0.1:", "HTTP 200 eHSM code 400: Decryption failed"}},
		{name: "unknown key", creds: goodCreds(), ct: []byte(ct), keyID: "11111111-2222-3333-4444-555555555555", class: errdefs.IsNotFound,
			inErr: []string{"eHSM code 400: keyid error"}},
		{name: "tampered ciphertext", creds: goodCreds(), ct: tampered, keyID: fakeKeyID, class: errdefs.IsInvalidArgument,
			inErr: []string{"eHSM code 400: Decryption failed"}},
		{name: "wrong api key", creds: StaticCredentials{fakeAppID: "not-the-key"}, ct: []byte(ct), keyID: fakeKeyID, class: errdefs.IsPermissionDenied,
			inErr: []string{"ehsm Decrypt", "eHSM code 400: sign error"}},
		{name: "unknown app", creds: StaticCredentials{"0000": fakeAPIKey}, appID: "0000", ct: []byte(ct), keyID: fakeKeyID, class: errdefs.IsInvalidArgument,
			inErr: []string{"eHSM code 400"}},
		{name: "clock skew", creds: goodCreds(), ct: []byte(ct), keyID: fakeKeyID, now: f.now.Add(-11 * time.Minute), class: errdefs.IsPermissionDenied,
			inErr: []string{"eHSM code 400: Timestamp error"}},
		{name: "no credential for app", creds: StaticCredentials{}, ct: []byte(ct), keyID: fakeKeyID, class: errdefs.IsNotFound,
			inErr: []string{"ehsm credential for app_id"}},
		{name: "missing credential file", creds: CredentialDir(credDir), ct: []byte(ct), keyID: fakeKeyID, class: errdefs.IsFailedPrecondition,
			inErr: []string{"credential_" + fakeAppID + ".json", "is missing", "[[credentials]]"}},
		{name: "missing credential dir", creds: CredentialDir(filepath.Join(credDir, "nope")), ct: []byte(ct), keyID: fakeKeyID, class: errdefs.IsFailedPrecondition,
			inErr: []string{"is missing"}},
		{name: "empty ciphertext", creds: goodCreds(), ct: nil, keyID: fakeKeyID, class: errdefs.IsInvalidArgument, inErr: []string{"encrypted_key"}},
		{name: "ciphertext not base64", creds: goodCreds(), ct: []byte(marker), keyID: fakeKeyID, class: errdefs.IsInvalidArgument, inErr: []string{"encrypted_key"}},
		{name: "ciphertext unpadded", creds: goodCreds(), ct: []byte("q83vASNFZ4kAESIzRFVmd4iZqrvM3e7/+A"), keyID: fakeKeyID, class: errdefs.IsInvalidArgument},
		{name: "ciphertext too long", creds: goodCreds(), ct: bytes.Repeat([]byte("AAAA"), 3000), keyID: fakeKeyID, class: errdefs.IsInvalidArgument},
		{name: "empty key id", creds: goodCreds(), ct: []byte(ct), keyID: "", class: errdefs.IsInvalidArgument, inErr: []string{"key_id"}},
		{name: "key id with &", creds: goodCreds(), ct: []byte(ct), keyID: fakeKeyID + "&keyid=x", class: errdefs.IsInvalidArgument, inErr: []string{"key_id"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProvider(t, f, tc.creds)
			if !tc.now.IsZero() {
				p.now = func() time.Time { return tc.now }
			}
			appID := tc.appID
			if appID == "" {
				appID = fakeAppID
			}
			d, err := p.Decrypter(context.Background(), settingsFor(appID, f.srv.URL))
			if err != nil {
				t.Fatal(err)
			}
			before := f.count()
			got, err := d.Decrypt(context.Background(), tc.ct, tc.keyID, tc.ann)
			if tc.class == nil {
				if err != nil || string(got) != marker {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %q", got)
			}
			t.Logf("error: %v", err)
			if !tc.class(err) {
				t.Fatalf("err = %v: wrong class", err)
			}
			for _, s := range tc.inErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if n := f.count() - before; n > 1 {
				t.Errorf("%d requests for a non-retryable error", n)
			}
			checkClean(t, err.Error())
		})
	}
}

// TestRequestShape checks the request's URL, headers and members, and that
// every request carries a fresh nonce (the fake refuses a repeated nonce
// and timestamp, and the test clock does not move).
func TestRequestShape(t *testing.T) {
	f := newFakeEHSM(t, true)
	ct := f.encrypt(fakeKeyID, []byte(marker))
	p := newTestProvider(t, f, goodCreds())
	c, err := p.Client(fakeAppID, f.srv.URL+"/")
	if err != nil {
		t.Fatal(err)
	}
	nonces := map[string]bool{}
	for i := range 3 {
		if got, err := c.Decrypt(context.Background(), []byte(ct), fakeKeyID, nil); err != nil || string(got) != marker {
			t.Fatalf("call %d: got %q, %v", i, got, err)
		}
		body, u, h := f.last()
		if u != "/ehsm?Action=Decrypt" {
			t.Errorf("URL %s", u)
		}
		if h.Get("Content-Type") != "application/json" {
			t.Errorf("Content-Type %q", h.Get("Content-Type"))
		}
		if body["appid"] != fakeAppID {
			t.Errorf("appid %v", body["appid"])
		}
		if body["timestamp"] != strconv.FormatInt(f.now.UnixMilli(), 10) {
			t.Errorf("timestamp %v", body["timestamp"])
		}
		n, _ := body["nonce"].(string)
		if !regexp.MustCompile(`^[0-9]{1,20}$`).MatchString(n) {
			t.Errorf("nonce %q", n)
		}
		nonces[n] = true
		s, _ := body["sign"].(string)
		if sig, err := base64.StdEncoding.DecodeString(s); err != nil || len(sig) != 32 {
			t.Errorf("sign is not base64 of 32 bytes")
		}
		pl, _ := body["payload"].(map[string]any)
		if pl["ciphertext"] != ct || pl["keyid"] != fakeKeyID || len(pl) != 2 {
			t.Errorf("payload %v", pl)
		}
	}
	if len(nonces) != 3 {
		t.Errorf("nonces repeat: %v", nonces)
	}
}

func TestEndpointPrefixAndPlainLoopback(t *testing.T) {
	f := newFakeEHSM(t, false)
	f.prefix = "/kms"
	ct := f.encrypt(fakeKeyID, []byte(marker))
	p := newTestProvider(t, f, goodCreds())
	d, err := p.Decrypter(context.Background(), settingsFor(fakeAppID, f.srv.URL+"/kms/"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := d.Decrypt(context.Background(), []byte(ct), fakeKeyID, nil); err != nil || string(got) != marker {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, u, _ := f.last(); u != "/kms/ehsm?Action=Decrypt" {
		t.Fatalf("URL %s", u)
	}
}

func TestResponses(t *testing.T) {
	f := newFakeEHSM(t, true)
	ct := f.encrypt(fakeKeyID, []byte(marker))
	okBody := func(plaintext string) string {
		return `{"code":200,"message":"success!","result":{"plaintext":"` + plaintext + `"}}`
	}
	html := map[string]string{"Content-Type": "text/html"}
	for _, tc := range []struct {
		name     string
		failures []fakeFailure
		requests int
		class    func(error) bool
		inErr    []string
	}{
		{name: "two 5xx then ok", failures: []fakeFailure{{status: 502, header: html, body: "<html>bad gateway</html>"}, {status: 503}}, requests: 3},
		{name: "429 then ok", failures: []fakeFailure{{status: 429}}, requests: 2},
		{name: "500 always", failures: []fakeFailure{{status: 500}, {status: 500}, {status: 500}, {status: 500}}, requests: 3,
			class: errdefs.IsUnavailable, inErr: []string{"ehsm Decrypt at 127.0.0.1:", "HTTP 500"}},
		{name: "eHSM code 500 not retried", failures: []fakeFailure{{status: 200, body: `{"code":500,"message":"Server exception.","result":{}}`}}, requests: 1,
			class: errdefs.IsUnavailable, inErr: []string{"HTTP 200 eHSM code 500: Server exception."}},
		{name: "HTTP 400 with eHSM body", failures: []fakeFailure{{status: 400, body: `{"code":400,"message":"param type error"}`}}, requests: 1,
			class: errdefs.IsInvalidArgument, inErr: []string{"HTTP 400 eHSM code 400: param type error"}},
		{name: "HTTP 404 html", failures: []fakeFailure{{status: 404, header: html, body: "<html>Cannot POST</html>"}}, requests: 1,
			class: errdefs.IsNotFound, inErr: []string{"HTTP 404"}},
		{name: "redirect not followed", failures: []fakeFailure{{status: 307, header: map[string]string{"Location": "https://example.com/ehsm?Action=Decrypt"}}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"HTTP 307"}},
		{name: "malformed JSON", failures: []fakeFailure{{status: 200, body: `{"code":200,`}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"malformed response"}},
		{name: "code is a string", failures: []fakeFailure{{status: 200, body: `{"code":"200","result":{"plaintext":"AAAA"}}`}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"no integer code"}},
		{name: "result not an object", failures: []fakeFailure{{status: 200, body: `{"code":200,"result":"AAAA"}`}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"result is not an object"}},
		{name: "no plaintext", failures: []fakeFailure{{status: 200, body: `{"code":200,"message":"success!","result":{}}`}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"no plaintext"}},
		{name: "plaintext not a string", failures: []fakeFailure{{status: 200, body: `{"code":200,"result":{"plaintext":5}}`}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"no plaintext"}},
		{name: "plaintext wrong base64", failures: []fakeFailure{{status: 200, body: okBody("not base64!")}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"result plaintext"}},
		{name: "plaintext unpadded", failures: []fakeFailure{{status: 200, body: okBody("REFUQS1LRVk")}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"result plaintext"}},
		{name: "plaintext empty", failures: []fakeFailure{{status: 200, body: okBody("")}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"result plaintext"}},
		{name: "plaintext too long", failures: []fakeFailure{{status: 200, body: okBody(strings.Repeat("AAAA", 3000))}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"result plaintext"}},
		{name: "oversize body", failures: []fakeFailure{{status: 200, body: okBody(strings.Repeat("A", 70<<10))}}, requests: 1,
			class: errdefs.IsUnknown, inErr: []string{"larger than 65536 bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProvider(t, f, goodCreds())
			c, err := p.Client(fakeAppID, f.srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			f.setFailures(tc.failures...)
			defer f.setFailures()
			before := f.count()
			got, err := c.Decrypt(context.Background(), []byte(ct), fakeKeyID, nil)
			if n := f.count() - before; n != tc.requests {
				t.Errorf("%d requests, want %d", n, tc.requests)
			}
			if tc.class == nil {
				if err != nil || string(got) != marker {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted: %q", got)
			}
			t.Logf("error: %v", err)
			if !tc.class(err) {
				t.Fatalf("err = %v: wrong class", err)
			}
			for _, s := range tc.inErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			checkClean(t, err.Error())
		})
	}

	t.Run("context cancels retries", func(t *testing.T) {
		p := newTestProvider(t, f, goodCreds())
		p.backoff = time.Hour
		c, _ := p.Client(fakeAppID, f.srv.URL)
		f.setFailures(fakeFailure{status: 500}, fakeFailure{status: 500}, fakeFailure{status: 500})
		defer f.setFailures()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := c.Decrypt(ctx, []byte(ct), fakeKeyID, nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("retry ignored the context")
		}
	})

	t.Run("untrusted certificate", func(t *testing.T) {
		p, err := New(Config{Credentials: goodCreds(), Now: func() time.Time { return f.now }})
		if err != nil {
			t.Fatal(err)
		}
		p.backoff = time.Millisecond
		c, _ := p.Client(fakeAppID, f.srv.URL)
		before, conns := f.count(), f.conns.Load()
		_, err = c.Decrypt(context.Background(), []byte(ct), fakeKeyID, nil)
		if n := f.conns.Load() - conns; n != 1 {
			t.Errorf("%d connections, want 1 (no retry of a certificate failure)", n)
		}
		if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "certificate") {
			t.Fatalf("err = %v", err)
		}
		if f.count() != before {
			t.Fatal("request reached the server over an unverified connection")
		}
	})
}

func TestSettings(t *testing.T) {
	p, err := New(Config{Credentials: goodCreds()})
	if err != nil {
		t.Fatal(err)
	}
	pinned, err := New(Config{Credentials: goodCreds(), AllowedEndpoints: []string{"https://ehsm.example.com:9000/"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		p        *Provider
		settings kms.Settings
		url      string
		class    func(error) bool
		inErr    string
	}{
		{name: "reference settings", settings: settingsFor(fakeAppID, "https://172.16.1.1:9002"), url: "https://172.16.1.1:9002"},
		{name: "trailing slash", settings: settingsFor("app_1", "https://EHSM.example.com:9000/"), url: "https://ehsm.example.com:9000"},
		{name: "path prefix", settings: settingsFor("a", "https://gw.example.com/kms/"), url: "https://gw.example.com/kms"},
		{name: "http loopback", settings: settingsFor("a", "http://127.0.0.1:9000"), url: "http://127.0.0.1:9000"},
		{name: "http localhost", settings: settingsFor("a", "http://localhost:9000"), url: "http://localhost:9000"},
		{name: "unknown member ignored", settings: kms.Settings{"app_id": json.RawMessage(`"a"`), "endpoint": json.RawMessage(`"https://h"`), "x": json.RawMessage(`1`)}, url: "https://h"},
		{name: "pinned ok", p: pinned, settings: settingsFor("a", "https://ehsm.example.com:9000"), url: "https://ehsm.example.com:9000"},
		{name: "pinned other", p: pinned, settings: settingsFor("a", "https://evil.example.com:9000"), class: errdefs.IsPermissionDenied, inErr: "provider_settings.endpoint"},
		{name: "missing app_id", settings: settingsFor("", "https://h"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.app_id: missing"},
		{name: "missing endpoint", settings: settingsFor("a", ""), class: errdefs.IsInvalidArgument, inErr: "provider_settings.endpoint: missing"},
		{name: "empty", settings: kms.Settings{}, class: errdefs.IsInvalidArgument, inErr: "provider_settings.app_id"},
		{name: "app_id not a string", settings: kms.Settings{"app_id": json.RawMessage(`1`), "endpoint": json.RawMessage(`"https://h"`)}, class: errdefs.IsInvalidArgument, inErr: "provider_settings.app_id"},
		{name: "endpoint not a string", settings: kms.Settings{"app_id": json.RawMessage(`"a"`), "endpoint": json.RawMessage(`{}`)}, class: errdefs.IsInvalidArgument, inErr: "provider_settings.endpoint"},
		{name: "AppId case", settings: kms.Settings{"AppId": json.RawMessage(`"a"`), "endpoint": json.RawMessage(`"https://h"`)}, class: errdefs.IsInvalidArgument, inErr: "provider_settings.app_id"},
		{name: "app_id traversal", settings: settingsFor("../../etc/x", "https://h"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.app_id"},
		{name: "app_id dot", settings: settingsFor("a.b", "https://h"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.app_id"},
		{name: "app_id empty", settings: settingsFor("", "https://h"), class: errdefs.IsInvalidArgument},
		{name: "http remote", settings: settingsFor("a", "http://ehsm.example.com:9000"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.endpoint"},
		{name: "scheme", settings: settingsFor("a", "ftp://h"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.endpoint"},
		{name: "no scheme", settings: settingsFor("a", "1.2.3.4:9000"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.endpoint"},
		{name: "userinfo", settings: settingsFor("a", "https://u:p@h"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.endpoint"},
		{name: "query", settings: settingsFor("a", "https://h/?x=1"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.endpoint"},
		{name: "empty query", settings: settingsFor("a", "https://h/?"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.endpoint"},
		{name: "fragment", settings: settingsFor("a", "https://h/#x"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.endpoint"},
		{name: "dot-dot path", settings: settingsFor("a", "https://h/a/../b"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pp := p
			if tc.p != nil {
				pp = tc.p
			}
			d, err := pp.Decrypter(context.Background(), tc.settings)
			if tc.class != nil {
				if err == nil || !tc.class(err) || !strings.Contains(err.Error(), tc.inErr) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := d.(*Client).ep.String(); got != tc.url {
				t.Fatalf("endpoint %s, want %s", got, tc.url)
			}
		})
	}
}

func TestSecretGetterNotImplemented(t *testing.T) {
	p, err := New(Config{Credentials: goodCreds()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.SecretGetter(context.Background(), settingsFor("a", "https://h"))
	if !errdefs.IsNotImplemented(err) {
		t.Fatalf("err = %v", err)
	}
	_, err = kms.Providers{kms.ProviderEHSM: p}.SecretGetter(context.Background(), "EHSM", settingsFor("a", "https://h"))
	if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), `"EHSM"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{}, true},
		{"allowed endpoints", Config{AllowedEndpoints: []string{"https://ehsm:9000", "http://127.0.0.1:9000/kms"}}, true},
		{"bad allowed endpoint", Config{AllowedEndpoints: []string{"http://ehsm.example.com"}}, false},
		{"bad CA", Config{ExtraRootCAs: "not pem"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := New(tc.cfg)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v", err)
			}
			if err != nil && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err = %v: wrong class", err)
			}
			if err == nil && tc.cfg.Credentials == nil && p.creds != CredentialDir(DefaultCredentialDir) {
				t.Fatalf("default credentials %v", p.creds)
			}
		})
	}
	if DefaultCredentialDir != "/run/confidential-containers/cdh/kbs/kms-credential/ehsm" {
		t.Fatalf("DefaultCredentialDir = %s", DefaultCredentialDir)
	}
}

func TestCredentialDir(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "credential_esc.json"), []byte(`{"AppId":"esc","ApiKey":"k"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		file    string // file name; content below
		content string
		appID   string
		want    string // API key
		class   func(error) bool
	}{
		{name: "reference format", file: "credential_app1.json", content: `{"AppId":"app1","ApiKey":"2LkL-key"}`, appID: "app1", want: "2LkL-key"},
		{name: "documented dot name", file: "credential.app1.json", content: `{"AppId":"app1","ApiKey":"dot-key"}`, appID: "app1", want: "dot-key"},
		{name: "AppId differs", file: "credential_app1.json", content: `{"AppId":"other","ApiKey":"k2"}`, appID: "app1", want: "k2"},
		{name: "unknown member ignored", file: "credential_app1.json", content: `{"AppId":"app1","ApiKey":"k3","Extra":1}`, appID: "app1", want: "k3"},
		{name: "missing ApiKey", file: "credential_app1.json", content: `{"AppId":"app1"}`, appID: "app1", class: errdefs.IsInvalidArgument},
		{name: "empty ApiKey", file: "credential_app1.json", content: `{"AppId":"app1","ApiKey":""}`, appID: "app1", class: errdefs.IsInvalidArgument},
		{name: "missing AppId", file: "credential_app1.json", content: `{"ApiKey":"` + marker + `"}`, appID: "app1", class: errdefs.IsInvalidArgument},
		{name: "snake case", file: "credential_app1.json", content: `{"app_id":"app1","api_key":"` + marker + `"}`, appID: "app1", class: errdefs.IsInvalidArgument},
		{name: "ApiKey wrong type", file: "credential_app1.json", content: `{"AppId":"app1","ApiKey":["` + marker + `"]}`, appID: "app1", class: errdefs.IsInvalidArgument},
		{name: "not JSON", file: "credential_app1.json", content: marker, appID: "app1", class: errdefs.IsInvalidArgument},
		{name: "oversize", file: "credential_app1.json", content: `{"AppId":"app1","ApiKey":"` + strings.Repeat("k", 70<<10) + `"}`, appID: "app1", class: errdefs.IsInvalidArgument},
		{name: "missing", appID: "app1", class: errdefs.IsFailedPrecondition},
		{name: "bad app id", appID: "../x", class: errdefs.IsInvalidArgument},
		{name: "symlink out of the directory", file: "-", appID: "esc", class: func(err error) bool { return err != nil && !errdefs.IsFailedPrecondition(err) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			switch tc.file {
			case "":
			case "-":
				if err := os.Symlink(filepath.Join(outside, "credential_esc.json"), filepath.Join(dir, "credential_esc.json")); err != nil {
					t.Fatal(err)
				}
			default:
				if err := os.WriteFile(filepath.Join(dir, tc.file), []byte(tc.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := CredentialDir(dir).Credential(context.Background(), tc.appID)
			if tc.class != nil {
				if err == nil || !tc.class(err) {
					t.Fatalf("got %+v, err = %v", got, err)
				}
				t.Logf("error: %v", err)
				checkClean(t, err.Error())
				return
			}
			if err != nil || got.APIKey != tc.want || got.AppID != tc.appID {
				t.Fatalf("got %+v, %v", got, err)
			}
		})
	}
}

// TestNoSecretsInLogs runs a failing and a succeeding call with a debug
// logger and checks the log carries no secret material.
func TestNoSecretsInLogs(t *testing.T) {
	f := newFakeEHSM(t, true)
	ct := f.encrypt(fakeKeyID, []byte(marker))
	var buf bytes.Buffer
	p, err := New(Config{
		Credentials: goodCreds(), ExtraRootCAs: f.caPEM(), Now: func() time.Time { return f.now },
		Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := p.Client(fakeAppID, f.srv.URL)
	if _, err := c.Decrypt(context.Background(), []byte(ct), fakeKeyID, nil); err != nil {
		t.Fatal(err)
	}
	c2, _ := New(Config{Credentials: StaticCredentials{fakeAppID: "wrong"}, ExtraRootCAs: f.caPEM(), Now: func() time.Time { return f.now },
		Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	cc, _ := c2.Client(fakeAppID, f.srv.URL)
	if _, err := cc.Decrypt(context.Background(), []byte(ct), fakeKeyID, nil); err == nil {
		t.Fatal("wrong key accepted")
	}
	out := buf.String()
	if !strings.Contains(out, "ehsm call") || !strings.Contains(out, fakeKeyID) {
		t.Fatalf("log lacks the call: %s", out)
	}
	checkClean(t, out)
	if strings.Contains(out, ct) {
		t.Fatalf("log carries the ciphertext: %s", out)
	}
}

// TestUnsealThroughEHSM unseals envelope secrets end to end:
// sealed.Unsealer → kms.Providers → ehsm → the signing fake, with the
// credential read from a file laid out as [[credentials]] writes it.
func TestUnsealThroughEHSM(t *testing.T) {
	f := newFakeEHSM(t, true)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "credential_"+fakeAppID+".json"), []byte(`{"AppId":"`+fakeAppID+`","ApiKey":"`+fakeAPIKey+`"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	p := newTestProvider(t, f, CredentialDir(dir))
	u := sealed.New(nil, sealed.WithSkipVerification(true), sealed.WithProviders(kms.Providers{kms.ProviderEHSM: p}))
	settings := map[string]any{"app_id": fakeAppID, "endpoint": f.srv.URL}
	wrapWith := func(keyID string) func([]byte) []byte {
		return func(dek []byte) []byte { return []byte(f.encrypt(keyID, dek)) }
	}
	for _, wrap := range []string{sealed.WrapA256GCM, sealed.WrapA256CTR} {
		t.Run(wrap, func(t *testing.T) {
			s := sealedtest.Envelope(t, "ehsm", fakeKeyID, wrap, []byte(marker), settings, map[string]any{}, wrapWith(fakeKeyID))
			got, err := u.Unseal(context.Background(), s)
			if err != nil || string(got) != marker {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	t.Run("provider name case-insensitive", func(t *testing.T) {
		s := sealedtest.Envelope(t, "eHSM", fakeKeyID, sealed.WrapA256GCM, []byte(marker), settings, map[string]any{}, wrapWith(fakeKeyID))
		if got, err := u.Unseal(context.Background(), s); err != nil || string(got) != marker {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		s := sealedtest.Envelope(t, "ehsm", fakeKeyID, sealed.WrapA256GCM, []byte(marker), settings, map[string]any{}, wrapWith(otherKeyID))
		_, err := u.Unseal(context.Background(), s)
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "Decryption failed") || !strings.Contains(err.Error(), `"ehsm"`) {
			t.Fatalf("err = %v", err)
		}
		checkClean(t, err.Error())
	})
	t.Run("missing endpoint", func(t *testing.T) {
		s := sealedtest.Envelope(t, "ehsm", fakeKeyID, sealed.WrapA256GCM, []byte(marker), map[string]any{"app_id": fakeAppID}, map[string]any{}, wrapWith(fakeKeyID))
		_, err := u.Unseal(context.Background(), s)
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "provider_settings.endpoint") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("vault not offered", func(t *testing.T) {
		v, _ := json.Marshal(map[string]any{"version": "0.1.0", "type": "vault", "name": "x", "provider": "ehsm",
			"provider_settings": settings, "annotations": map[string]any{}})
		_, err := u.Unseal(context.Background(), "sealed.h."+base64.RawURLEncoding.EncodeToString(v)+".s")
		if !errdefs.IsNotImplemented(err) {
			t.Fatalf("err = %v", err)
		}
	})
}

// FuzzParse feeds arbitrary bytes to the credential parser, the error
// decoder and the endpoint parser: no panic, classified errors, no echo of
// credential content.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"AppId":"a","ApiKey":"k"}`))
	f.Add([]byte(`{"code":400,"message":"sign error"}`))
	f.Add([]byte(`https://h:1/p`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		if _, err := ParseCredential(raw); err != nil && !errdefs.IsInvalidArgument(err) {
			t.Fatalf("unclassified: %v", err)
		}
		if code, msg, ok := parseError(raw); ok {
			_ = codeClass(code, msg)
			if d := describe(code, msg); strings.ContainsAny(d, "\n\r\x00") {
				t.Fatalf("describe = %q", d)
			}
		}
		if u, err := parseEndpoint(string(raw)); err == nil {
			if u.Scheme != "https" && u.Scheme != "http" || u.RawQuery != "" || u.User != nil {
				t.Fatalf("accepted %q as %v", raw, u)
			}
		} else if !errdefs.IsInvalidArgument(err) {
			t.Fatalf("unclassified: %v", err)
		}
	})
}
