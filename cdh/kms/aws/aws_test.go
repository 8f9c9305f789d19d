package aws

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
	"github.com/cova-project/cova/cdh/sealed"
	"github.com/cova-project/cova/cdh/sealed/sealedtest"
)

// marker is secret material no error may contain.
const marker = "DATA-KEY-MARKER-5b1e"

func newTestProvider(t *testing.T, f *fakeAWS, creds CredentialsProvider) *Provider {
	t.Helper()
	p, err := New(Config{
		Credentials: creds, KMSEndpoint: f.srv.URL, SecretsManagerEndpoint: f.srv.URL,
		ExtraRootCAs: f.caPEM(), Now: func() time.Time { return f.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	p.backoff = time.Millisecond
	return p
}

func goodCreds() StaticCredentials {
	return StaticCredentials{AccessKeyID: fakeAKID, SecretAccessKey: fakeSecretKey}
}

func settingsFor(region string) kms.Settings {
	return kms.Settings{"region": json.RawMessage(`"` + region + `"`)}
}

func ann(t *testing.T, v map[string]any) kms.Annotations {
	t.Helper()
	out := kms.Annotations{}
	for k, x := range v {
		b, err := json.Marshal(x)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = b
	}
	return out
}

// checkClean fails if err leaks secret material.
func checkClean(t *testing.T, err error) {
	t.Helper()
	for _, s := range []string{marker, fakeSecretKey, "Signature=", "session-token-value"} {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("error leaks %q: %v", s, err)
		}
	}
}

func TestDecrypt(t *testing.T) {
	f := newFakeAWS(t)
	ctxMap := map[string]string{"purpose": "cdh"}
	blob := f.encrypt("key-1", nil, []byte(marker))
	blobCtx := f.encrypt("key-1", ctxMap, []byte(marker))
	other := f.encrypt("key-2", nil, []byte("other"))
	tampered := append([]byte(nil), blob...)
	tampered[0] ^= 1

	for _, tc := range []struct {
		name   string
		creds  CredentialsProvider
		blob   []byte
		keyID  string
		ann    map[string]any
		region string
		class  func(error) bool
		inErr  []string
	}{
		{name: "ok", creds: goodCreds(), blob: blob, keyID: "key-1"},
		{name: "ok without key id", creds: goodCreds(), blob: blob},
		{name: "ok with session token", creds: StaticCredentials{AccessKeyID: fakeAKID, SecretAccessKey: fakeSecretKey, SessionToken: "session-token-value"}, blob: blob, keyID: "key-1"},
		{name: "ok with encryption context", creds: goodCreds(), blob: blobCtx, keyID: "key-1", ann: map[string]any{"encryption_context": ctxMap}},
		{name: "unknown annotation ignored", creds: goodCreds(), blob: blob, keyID: "key-1", ann: map[string]any{"iv": "x"}},
		{name: "wrong key", creds: goodCreds(), blob: other, keyID: "key-1", class: errdefs.IsInvalidArgument,
			inErr: []string{"aws kms Decrypt", "HTTP 400", "IncorrectKeyException"}},
		{name: "tampered ciphertext", creds: goodCreds(), blob: tampered, keyID: "key-1", class: errdefs.IsInvalidArgument,
			inErr: []string{"aws kms Decrypt", "HTTP 400", "InvalidCiphertextException"}},
		{name: "missing encryption context", creds: goodCreds(), blob: blobCtx, keyID: "key-1", class: errdefs.IsInvalidArgument,
			inErr: []string{"InvalidCiphertextException"}},
		{name: "wrong encryption context", creds: goodCreds(), blob: blobCtx, keyID: "key-1", ann: map[string]any{"encryption_context": map[string]string{"purpose": "x"}}, class: errdefs.IsInvalidArgument},
		{name: "encryption context not an object", creds: goodCreds(), blob: blobCtx, keyID: "key-1", ann: map[string]any{"encryption_context": "purpose=cdh"}, class: errdefs.IsInvalidArgument,
			inErr: []string{"annotations.encryption_context"}},
		{name: "wrong secret key", creds: StaticCredentials{AccessKeyID: fakeAKID, SecretAccessKey: "not-the-secret"}, blob: blob, keyID: "key-1", class: errdefs.IsPermissionDenied,
			inErr: []string{"aws kms Decrypt", "HTTP 400", "InvalidSignatureException"}},
		{name: "unknown access key", creds: StaticCredentials{AccessKeyID: "AKIDOTHER", SecretAccessKey: fakeSecretKey}, blob: blob, class: errdefs.IsPermissionDenied,
			inErr: []string{"UnrecognizedClientException"}},
		{name: "wrong region scope", creds: goodCreds(), blob: blob, region: "us-east-1", class: errdefs.IsPermissionDenied},
		{name: "missing credentials file", creds: FileCredentials(filepath.Join(t.TempDir(), "credential.json")), blob: blob, class: errdefs.IsFailedPrecondition,
			inErr: []string{"credential.json", "[[credentials]]"}},
		{name: "empty ciphertext", creds: goodCreds(), blob: nil, class: errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProvider(t, f, tc.creds)
			region := tc.region
			if region == "" {
				region = f.region
			}
			d, err := p.Decrypter(context.Background(), settingsFor(region))
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.Decrypt(context.Background(), tc.blob, tc.keyID, ann(t, tc.ann))
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
			checkClean(t, err)
		})
	}
	// The request carried the encryption context and the blob as base64.
	p := newTestProvider(t, f, goodCreds())
	c, _ := p.Client(f.region)
	if _, err := c.Decrypt(context.Background(), blobCtx, "key-1", ann(t, map[string]any{"encryption_context": ctxMap})); err != nil {
		t.Fatal(err)
	}
	if f.lastBody["CiphertextBlob"] != base64.StdEncoding.EncodeToString(blobCtx) || f.lastBody["KeyId"] != "key-1" {
		t.Fatalf("request body %v", f.lastBody)
	}
}

func TestRetries(t *testing.T) {
	f := newFakeAWS(t)
	blob := f.encrypt("key-1", nil, []byte(marker))
	for _, tc := range []struct {
		name     string
		failures []int
		requests int
		class    func(error) bool
		inErr    string
	}{
		{"two 500 then ok", []int{500, 503}, 3, nil, ""},
		{"429 then ok", []int{429}, 2, nil, ""},
		{"500 always", []int{500, 500, 500, 500}, 3, errdefs.IsUnavailable, "HTTP 500 InternalFailure"},
		{"403 html not retried", []int{403}, 1, errdefs.IsPermissionDenied, "HTTP 403"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProvider(t, f, goodCreds())
			c, _ := p.Client(f.region)
			f.setFailures(tc.failures...)
			before := f.count()
			got, err := c.Decrypt(context.Background(), blob, "key-1", nil)
			if n := f.count() - before; n != tc.requests {
				t.Errorf("%d requests, want %d", n, tc.requests)
			}
			f.setFailures()
			if tc.class == nil {
				if err != nil || string(got) != marker {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			if err == nil || !tc.class(err) || !strings.Contains(err.Error(), tc.inErr) || !strings.Contains(err.Error(), "aws kms Decrypt") {
				t.Fatalf("err = %v", err)
			}
			checkClean(t, err)
		})
	}
	// A cancelled context stops the retries.
	p := newTestProvider(t, f, goodCreds())
	p.backoff = time.Hour
	c, _ := p.Client(f.region)
	f.setFailures(500, 500, 500)
	defer f.setFailures()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := c.Decrypt(ctx, blob, "key-1", nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("retry ignored the context")
	}
}

func TestGetSecret(t *testing.T) {
	f := newFakeAWS(t)
	str := marker
	f.secrets["db"] = fakeSecret{str: &str, stages: map[string]string{"AWSPREVIOUS": "old-" + marker}}
	f.secrets["bin"] = fakeSecret{bin: []byte{0, 1, 2, 0xff}}
	f.secrets["empty"] = fakeSecret{}
	for _, tc := range []struct {
		name  string
		sec   string
		ann   map[string]any
		want  []byte
		class func(error) bool
		inErr []string
	}{
		{name: "string", sec: "db", want: []byte(marker)},
		{name: "stage", sec: "db", ann: map[string]any{"version_stage": "AWSPREVIOUS", "version_id": ""}, want: []byte("old-" + marker)},
		{name: "binary", sec: "bin", want: []byte{0, 1, 2, 0xff}},
		{name: "not found", sec: "nope", class: errdefs.IsNotFound,
			inErr: []string{"aws secretsmanager GetSecretValue", "HTTP 400", "ResourceNotFoundException"}},
		{name: "unknown stage", sec: "db", ann: map[string]any{"version_stage": "X"}, class: errdefs.IsNotFound},
		{name: "no value", sec: "empty", class: errdefs.IsNotFound},
		{name: "version_id not a string", sec: "db", ann: map[string]any{"version_id": 3}, class: errdefs.IsInvalidArgument},
		{name: "empty name", sec: "", class: errdefs.IsInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestProvider(t, f, goodCreds())
			g, err := p.SecretGetter(context.Background(), settingsFor(f.region))
			if err != nil {
				t.Fatal(err)
			}
			got, err := g.GetSecret(context.Background(), tc.sec, ann(t, tc.ann))
			if tc.class == nil {
				if err != nil || !bytes.Equal(got, tc.want) {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			if err == nil || !tc.class(err) {
				t.Fatalf("got %q, err = %v", got, err)
			}
			for _, s := range tc.inErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			checkClean(t, err)
		})
	}
	if f.lastBody["SecretId"] == nil {
		t.Fatalf("request body %v", f.lastBody)
	}
}

func TestSettings(t *testing.T) {
	p, err := New(Config{Credentials: goodCreds()})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		settings kms.Settings
		host     string
		ok       bool
	}{
		{"region", settingsFor("eu-west-1"), "kms.eu-west-1.amazonaws.com", true},
		{"china", settingsFor("cn-north-1"), "kms.cn-north-1.amazonaws.com.cn", true},
		{"unknown member ignored", kms.Settings{"region": json.RawMessage(`"us-east-1"`), "x": json.RawMessage(`1`)}, "kms.us-east-1.amazonaws.com", true},
		{"missing region", kms.Settings{}, "", false},
		{"region with host", settingsFor("evil.example.com/x"), "", false},
		{"region with dot", settingsFor("us-east-1.evil"), "", false},
		{"empty region", settingsFor(""), "", false},
		{"region not a string", kms.Settings{"region": json.RawMessage(`1`)}, "", false},
		{"Region case", kms.Settings{"Region": json.RawMessage(`"us-east-1"`)}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := p.Decrypter(context.Background(), tc.settings)
			if !tc.ok {
				if err == nil || !errdefs.IsInvalidArgument(err) {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h := d.(*Client).endpoint(ServiceKMS).Host; h != tc.host {
				t.Fatalf("endpoint %s, want %s", h, tc.host)
			}
		})
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{}, true},
		{"https endpoint", Config{KMSEndpoint: "https://kms.internal:8443"}, true},
		{"http loopback", Config{KMSEndpoint: "http://127.0.0.1:4599"}, true},
		{"http localhost", Config{SecretsManagerEndpoint: "http://localhost:4599/"}, true},
		{"http remote", Config{KMSEndpoint: "http://kms.example.com"}, false},
		{"path", Config{KMSEndpoint: "https://kms.example.com/x"}, false},
		{"userinfo", Config{KMSEndpoint: "https://u:p@kms.example.com"}, false},
		{"scheme", Config{KMSEndpoint: "ftp://kms.example.com"}, false},
		{"bad CA", Config{ExtraRootCAs: "not pem"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if tc.ok != (err == nil) {
				t.Fatalf("err = %v", err)
			}
			if err != nil && !errdefs.IsInvalidArgument(err) {
				t.Fatalf("err = %v: wrong class", err)
			}
		})
	}
}

func TestCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, content string
		want          Credentials
		ok            bool
	}{
		{"reference format", `{"access_key_id":"AKIA1","secret_access_key":"s/k+1","session_token":null}`, Credentials{AccessKeyID: "AKIA1", SecretAccessKey: "s/k+1"}, true},
		{"session token", `{"access_key_id":"ASIA1","secret_access_key":"s","session_token":"t/o+k=="}`, Credentials{AccessKeyID: "ASIA1", SecretAccessKey: "s", SessionToken: "t/o+k=="}, true},
		{"missing secret", `{"access_key_id":"AKIA1"}`, Credentials{}, false},
		{"missing key id", `{"secret_access_key":"` + marker + `"}`, Credentials{}, false},
		{"bad key id", `{"access_key_id":"AK IA","secret_access_key":"s"}`, Credentials{}, false},
		{"token with newline", `{"access_key_id":"A","secret_access_key":"s","session_token":"a\nb"}`, Credentials{}, false},
		{"not json", marker, Credentials{}, false},
		{"wrong type", `{"access_key_id":"A","secret_access_key":["` + marker + `"]}`, Credentials{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := FileCredentials(path).Credentials(context.Background())
			if !tc.ok {
				if err == nil || !errdefs.IsInvalidArgument(err) {
					t.Fatalf("got %+v, err = %v", got, err)
				}
				checkClean(t, err)
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %+v, %v", got, err)
			}
		})
	}
}

// TestUnsealThroughAWS unseals envelope and vault secrets end to end:
// sealed.Unsealer → kms.Providers → aws → the signing fake.
func TestUnsealThroughAWS(t *testing.T) {
	f := newFakeAWS(t)
	str := marker
	f.secrets["app/db"] = fakeSecret{str: &str}
	p := newTestProvider(t, f, goodCreds())
	u := sealed.New(nil, sealed.WithSkipVerification(true), sealed.WithProviders(kms.Providers{kms.ProviderAWS: p}))
	region := map[string]any{"region": f.region}
	ctxMap := map[string]string{"app": "x"}
	for _, wrap := range []string{sealed.WrapA256GCM, sealed.WrapA256CTR} {
		t.Run(wrap, func(t *testing.T) {
			s := sealedtest.Envelope(t, "aws", "key-1", wrap, []byte(marker), region, map[string]any{"encryption_context": ctxMap},
				func(dek []byte) []byte { return f.encrypt("key-1", ctxMap, dek) })
			got, err := u.Unseal(context.Background(), s)
			if err != nil || string(got) != marker {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	t.Run("provider name case-insensitive", func(t *testing.T) {
		s := sealedtest.Envelope(t, "AWS", "key-1", sealed.WrapA256GCM, []byte(marker), region, map[string]any{},
			func(dek []byte) []byte { return f.encrypt("key-1", nil, dek) })
		if got, err := u.Unseal(context.Background(), s); err != nil || string(got) != marker {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("wrong key", func(t *testing.T) {
		s := sealedtest.Envelope(t, "aws", "key-1", sealed.WrapA256GCM, []byte(marker), region, map[string]any{},
			func(dek []byte) []byte { return f.encrypt("key-2", nil, dek) })
		_, err := u.Unseal(context.Background(), s)
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "IncorrectKeyException") || !strings.Contains(err.Error(), `"aws"`) {
			t.Fatalf("err = %v", err)
		}
		checkClean(t, err)
	})
	t.Run("vault", func(t *testing.T) {
		v, _ := json.Marshal(map[string]any{"version": "0.1.0", "type": "vault", "name": "app/db", "provider": "aws",
			"provider_settings": region, "annotations": map[string]any{"version_stage": ""}})
		got, err := u.Unseal(context.Background(), "sealed.h."+base64.RawURLEncoding.EncodeToString(v)+".s")
		if err != nil || string(got) != marker {
			t.Fatalf("got %q, %v", got, err)
		}
	})
	t.Run("unknown provider", func(t *testing.T) {
		s := sealedtest.Envelope(t, "ehsm", "k", sealed.WrapA256GCM, []byte(marker), map[string]any{}, map[string]any{},
			func(dek []byte) []byte { return dek })
		_, err := u.Unseal(context.Background(), s)
		if !errdefs.IsNotImplemented(err) || !strings.Contains(err.Error(), `"ehsm"`) {
			t.Fatalf("err = %v", err)
		}
	})
}

// FuzzParse feeds arbitrary bytes to the credential parser, the AWS error
// decoder and the query canonicalizer: no panic, classified errors, no
// echo of credential content.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"access_key_id":"AKIA1","secret_access_key":"s","session_token":null}`))
	f.Add([]byte(`{"__type":"com.amazonaws.kms#NotFoundException","message":"x"}`))
	f.Add([]byte(`a=1&b=%zz&=&&c`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		if _, err := ParseCredentials(raw); err != nil && !errdefs.IsInvalidArgument(err) {
			t.Fatalf("unclassified: %v", err)
		}
		err := awsError(&http.Response{StatusCode: 400, Header: http.Header{}}, raw)
		if err == nil || !strings.HasPrefix(err.Error(), "HTTP 400") {
			t.Fatalf("awsError = %v", err)
		}
		_ = canonicalQuery(string(raw))
	})
}
