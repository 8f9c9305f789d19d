package aws

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// suiteContext is context.json of AWS's SigV4 test suite.
type suiteContext struct {
	Credentials struct {
		AccessKeyID     string `json:"access_key_id"`
		SecretAccessKey string `json:"secret_access_key"`
		Token           string `json:"token"`
	} `json:"credentials"`
	Region    string    `json:"region"`
	Service   string    `json:"service"`
	SignBody  bool      `json:"sign_body"`
	Timestamp time.Time `json:"timestamp"`
}

// parseSuiteRequest parses request.txt: request line, headers (a line
// starting with white space continues the previous header), blank line,
// body.
func parseSuiteRequest(t *testing.T, raw string) (method, path, query, host string, h http.Header, body []byte) {
	t.Helper()
	head, b, _ := strings.Cut(raw, "\n\n")
	lines := strings.Split(strings.TrimRight(head, "\n"), "\n")
	reqLine := strings.TrimSuffix(lines[0], " HTTP/1.1")
	method, target, ok := strings.Cut(reqLine, " ")
	if !ok {
		t.Fatalf("request line %q", lines[0])
	}
	path, query, _ = strings.Cut(target, "?")
	h = http.Header{}
	var last string
	for _, l := range lines[1:] {
		if l == "" {
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			vs := h[last]
			vs[len(vs)-1] += "\n" + l
			continue
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			t.Fatalf("header line %q", l)
		}
		if strings.EqualFold(k, "host") {
			host = strings.TrimSpace(v)
			continue
		}
		last = http.CanonicalHeaderKey(k)
		h.Add(last, v)
	}
	return method, path, query, host, h, []byte(b)
}

func TestSigV4Suite(t *testing.T) {
	dirs, err := filepath.Glob("testdata/sigv4/*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, dir := range dirs {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			continue
		}
		n++
		t.Run(filepath.Base(dir), func(t *testing.T) {
			read := func(name string) string {
				b, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				return string(b)
			}
			var ctx suiteContext
			if err := json.Unmarshal([]byte(read("context.json")), &ctx); err != nil {
				t.Fatal(err)
			}
			method, path, query, host, h, body := parseSuiteRequest(t, read("request.txt"))
			h.Set("X-Amz-Date", ctx.Timestamp.UTC().Format(amzDate))
			if ctx.Credentials.Token != "" {
				h.Set("X-Amz-Security-Token", ctx.Credentials.Token)
			}
			if ctx.SignBody {
				h.Set("X-Amz-Content-Sha256", hashHex(body))
			}
			got := sign(sigInput{
				Method: method, Path: path, RawQuery: query, Host: host, Header: h, Payload: body,
				Region: ctx.Region, Service: ctx.Service, Time: ctx.Timestamp,
			}, Credentials{AccessKeyID: ctx.Credentials.AccessKeyID, SecretAccessKey: ctx.Credentials.SecretAccessKey, SessionToken: ctx.Credentials.Token})
			if want := read("header-canonical-request.txt"); got.Canonical != want {
				t.Errorf("canonical request:\n%s\nwant:\n%s", got.Canonical, want)
			}
			if want := read("header-string-to-sign.txt"); got.StringToSign != want {
				t.Errorf("string to sign:\n%s\nwant:\n%s", got.StringToSign, want)
			}
			if want := strings.TrimSpace(read("header-signature.txt")); got.Signature != want {
				t.Errorf("signature %s, want %s", got.Signature, want)
			}
			wantAuth := "AWS4-HMAC-SHA256 Credential=" + ctx.Credentials.AccessKeyID + "/" +
				ctx.Timestamp.UTC().Format("20060102") + "/" + ctx.Region + "/" + ctx.Service +
				"/aws4_request, SignedHeaders=" + got.SignedHeaders + ", Signature=" + got.Signature
			if got.Authorization != wantAuth {
				t.Errorf("Authorization %q, want %q", got.Authorization, wantAuth)
			}
		})
	}
	if n < 20 {
		t.Fatalf("only %d suite vectors found", n)
	}
}

// TestSignRequest checks that signRequest signs what the transport sends:
// the host with port, the KMS headers and the session token.
func TestSignRequest(t *testing.T) {
	body := []byte(`{"CiphertextBlob":"AAAA"}`)
	req, err := http.NewRequest(http.MethodPost, "https://127.0.0.1:8443/", strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", ContentType)
	req.Header.Set("X-Amz-Target", TargetDecrypt)
	now := time.Date(2026, 11, 27, 19, 0, 0, 0, time.UTC)
	signRequest(req, body, Credentials{AccessKeyID: "AKID", SecretAccessKey: "secret", SessionToken: "tok"}, "eu-west-1", ServiceKMS, now)
	auth := req.Header.Get("Authorization")
	for _, want := range []string{
		"AWS4-HMAC-SHA256 Credential=AKID/20261127/eu-west-1/kms/aws4_request",
		"SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target,",
	} {
		if !strings.Contains(auth, want) {
			t.Errorf("Authorization %q lacks %q", auth, want)
		}
	}
	if strings.Contains(auth, "secret") {
		t.Fatal("Authorization contains the secret key")
	}
	if req.Header.Get("X-Amz-Date") != "20261127T190000Z" || req.Header.Get("X-Amz-Security-Token") != "tok" {
		t.Fatalf("headers %v", req.Header)
	}
}

func TestCanonicalQuery(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", ""},
		{"b=2&a=1", "a=1&b=2"},
		{"a=2&a=1", "a=1&a=2"},
		{"Param-3=x&Param=y", "Param=y&Param-3=x"},
		{"a+b=c d", "a%2Bb=c%20d"},
		{"k", "k="},
	} {
		t.Run(tc.in, func(t *testing.T) {
			if got := canonicalQuery(tc.in); got != tc.want {
				t.Fatalf("canonicalQuery(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
