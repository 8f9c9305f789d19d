package aliyun

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/cova-project/cova/cdh/kms"
	"github.com/cova-project/cova/cdh/sealed"
	"github.com/cova-project/cova/cdh/sealed/sealedtest"
)

// Secret material no error may contain.
const (
	marker       = "DATA-KEY-MARKER-7c3d"
	testPassword = "pw-MARKER-91ab"
	stsSecret    = "sts-secret-MARKER-55"
	stsToken     = "sts-token-MARKER-66"
)

const (
	testClientKeyID = "KAAP.f4c8test"
	testInstance    = "kst-hzz65f1a2b3c4d"
)

var (
	keysOnce            sync.Once
	goodKey, otherKey   *rsa.PrivateKey
	testIV              = []byte("0123456789ab")
	errCredentialAbsent = errors.New("absent")
)

func testKeys(t *testing.T) (*rsa.PrivateKey, *rsa.PrivateKey) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if goodKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if otherKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
	})
	return goodKey, otherKey
}

// testCreds is an injected Credentials.
type testCreds struct {
	key  *ClientKey
	ca   []byte
	role ECSRAMRole
	sts  STSCredential
}

func (c testCreds) ClientKey(_ context.Context, id string) (*ClientKey, error) {
	if c.key == nil || id != testClientKeyID {
		return nil, errCredentialAbsent
	}
	return c.key, nil
}

func (c testCreds) InstanceCA(context.Context, string) ([]byte, error) {
	if c.ca == nil {
		return nil, errCredentialAbsent
	}
	return c.ca, nil
}

func (c testCreds) ECSRAMRole(context.Context) (ECSRAMRole, error) {
	if c.role.RoleName == "" {
		return ECSRAMRole{}, errCredentialAbsent
	}
	return c.role, nil
}

func (c testCreds) STSToken(context.Context, string) (STSCredential, error) {
	return c.sts, nil
}

func instanceCreds(t *testing.T, f *fakeInstance) testCreds {
	good, _ := testKeys(t)
	f.keys[testClientKeyID] = &good.PublicKey
	return testCreds{key: &ClientKey{KeyID: testClientKeyID, Key: good}, ca: f.caPEM()}
}

func newInstanceProvider(t *testing.T, f *fakeInstance, creds Credentials) *Provider {
	t.Helper()
	p, err := New(Config{Credentials: creds, InstanceEndpoint: f.srv.URL, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	p.backoff = time.Millisecond
	return p
}

func raw(t *testing.T, m map[string]any) map[string]json.RawMessage {
	t.Helper()
	out := map[string]json.RawMessage{}
	for k, v := range m {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		out[k] = b
	}
	return out
}

func instanceSettings() map[string]any {
	return map[string]any{"client_type": "client_key", "client_key_id": testClientKeyID, "kms_instance_id": testInstance}
}

func ivAnn() map[string]any {
	return map[string]any{"iv": base64.StdEncoding.EncodeToString(testIV)}
}

// selfSignedPEM returns a self-signed CA certificate for key (the
// httptest servers all share one certificate, so it cannot stand in for
// another instance's CA).
func selfSignedPEM(t *testing.T, key *rsa.PrivateKey) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Private KMS test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// checkClean fails if err leaks secret material.
func checkClean(t *testing.T, err error) {
	t.Helper()
	for _, s := range []string{marker, testPassword, stsSecret, stsToken, "Bearer", "Signature="} {
		if strings.Contains(err.Error(), s) {
			t.Fatalf("error leaks %q: %v", s, err)
		}
	}
}

func wantErr(t *testing.T, err error, class func(error) bool, inErr ...string) {
	t.Helper()
	if err == nil {
		t.Fatal("accepted")
	}
	t.Logf("error: %v", err)
	if !class(err) {
		t.Fatalf("err = %v: wrong class", err)
	}
	for _, s := range inErr {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	checkClean(t, err)
}

func TestInstanceDecrypt(t *testing.T) {
	f := newFakeInstance(t)
	creds := instanceCreds(t, f)
	_, other := testKeys(t)
	blob := f.seal("key-1", testIV, []byte(marker))
	otherBlob := f.seal("key-2", testIV, []byte("other"))
	otherCA := selfSignedPEM(t, other)

	for _, tc := range []struct {
		name  string
		creds testCreds
		blob  []byte
		keyID string
		ann   map[string]any
		now   time.Time
		class func(error) bool
		inErr []string
	}{
		{name: "ok", blob: blob, keyID: "key-1", ann: ivAnn()},
		{name: "unknown annotation ignored", blob: blob, keyID: "key-1", ann: map[string]any{"iv": ivAnn()["iv"], "aad": "x"}},
		{name: "wrong key", blob: otherBlob, keyID: "key-1", ann: ivAnn(), class: errdefs.IsNotFound,
			inErr: []string{"aliyun kms-instance Decrypt", "HTTP 404", "Forbidden.KeyNotFound", "request id req-0001"}},
		{name: "wrong iv", blob: blob, keyID: "key-1", ann: map[string]any{"iv": base64.StdEncoding.EncodeToString([]byte("other-iv"))}, class: errdefs.IsInvalidArgument,
			inErr: []string{"HTTP 400", "InvalidParameter"}},
		{name: "unknown ciphertext", blob: []byte("nope"), keyID: "key-1", ann: ivAnn(), class: errdefs.IsInvalidArgument},
		{name: "missing iv", blob: blob, keyID: "key-1", class: errdefs.IsInvalidArgument, inErr: []string{"annotations.iv: missing"}},
		{name: "iv not base64", blob: blob, keyID: "key-1", ann: map[string]any{"iv": "***"}, class: errdefs.IsInvalidArgument, inErr: []string{"annotations.iv"}},
		{name: "iv not a string", blob: blob, keyID: "key-1", ann: map[string]any{"iv": 12}, class: errdefs.IsInvalidArgument, inErr: []string{"annotations.iv"}},
		{name: "empty ciphertext", blob: nil, keyID: "key-1", ann: ivAnn(), class: errdefs.IsInvalidArgument, inErr: []string{"encrypted_key"}},
		{name: "bad signature", creds: testCreds{key: &ClientKey{KeyID: testClientKeyID, Key: other}}, blob: blob, keyID: "key-1", ann: ivAnn(),
			class: errdefs.IsPermissionDenied, inErr: []string{"HTTP 401", "SignatureNotMatch", "Signature is not matched"}},
		{name: "unknown client key", creds: testCreds{key: &ClientKey{KeyID: "KAAP.unknown", Key: other}}, blob: blob, keyID: "key-1", ann: ivAnn(),
			class: errdefs.IsInvalidArgument, inErr: []string{"MissingParameter"}},
		{name: "clock skew", now: time.Date(2026, 11, 27, 20, 0, 0, 0, time.UTC), blob: blob, keyID: "key-1", ann: ivAnn(),
			class: errdefs.IsFailedPrecondition, inErr: []string{"RequestTimeTooSkewed"}},
		{name: "server not signed by instance CA", creds: testCreds{ca: otherCA}, blob: blob, keyID: "key-1", ann: ivAnn(),
			class: errdefs.IsUnavailable, inErr: []string{"certificate"}},
		{name: "CA file without certificate", creds: testCreds{ca: []byte("not pem")}, blob: blob, keyID: "key-1", ann: ivAnn(),
			class: errdefs.IsInvalidArgument, inErr: []string{"PrivateKmsCA_" + testInstance + ".pem"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := creds
			if tc.creds.key != nil {
				c.key = tc.creds.key
			}
			if tc.creds.ca != nil {
				c.ca = tc.creds.ca
			}
			p := newInstanceProvider(t, f, c)
			if !tc.now.IsZero() {
				p.now = func() time.Time { return tc.now }
			}
			d, err := p.Decrypter(context.Background(), raw(t, instanceSettings()))
			if err != nil {
				t.Fatal(err)
			}
			got, err := d.Decrypt(context.Background(), tc.blob, tc.keyID, raw(t, tc.ann))
			if tc.class == nil {
				if err != nil || string(got) != marker {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			wantErr(t, err, tc.class, tc.inErr...)
		})
	}
	// A server the instance CA does not vouch for is not retried.
	p := newInstanceProvider(t, f, testCreds{key: creds.key, ca: otherCA})
	before := f.conns.Load()
	c, _ := p.InstanceClient(testInstance, testClientKeyID)
	if _, err := c.Decrypt(context.Background(), blob, "key-1", raw(t, ivAnn())); err == nil || f.conns.Load()-before != 1 {
		t.Fatalf("err = %v, %d connections", err, f.conns.Load()-before)
	}
	// The request carried the reference's members and headers.
	p = newInstanceProvider(t, f, creds)
	c, _ = p.InstanceClient(testInstance, testClientKeyID)
	if _, err := c.Decrypt(context.Background(), blob, "key-1", raw(t, ivAnn())); err != nil {
		t.Fatal(err)
	}
	if string(f.last[1]) != string(blob) || string(f.last[2]) != "key-1" || string(f.last[3]) != "AES_GCM" || string(f.last[5]) != string(testIV) {
		t.Fatalf("request fields %q", f.last)
	}
	if f.lastHdr.Get("X-Kms-Apiname") != "Decrypt" || f.lastHdr.Get("X-Kms-Acccesskeyid") != testClientKeyID {
		t.Fatalf("request headers %v", f.lastHdr)
	}
}

func TestInstanceResponses(t *testing.T) {
	f := newFakeInstance(t)
	creds := instanceCreds(t, f)
	blob := f.seal("key-1", testIV, []byte(marker))
	status := func(code int, errCode string) func(http.ResponseWriter) {
		return func(w http.ResponseWriter) { fakeError(w, code, errCode, "injected") }
	}
	body := func(b []byte) func(http.ResponseWriter) {
		return func(w http.ResponseWriter) { w.Write(b) }
	}
	html := func(w http.ResponseWriter) { w.WriteHeader(502); w.Write([]byte("<html>bad gateway</html>")) }
	plaintextAsVarint := protowire.AppendVarint(protowire.AppendTag(nil, 2, protowire.VarintType), 5)
	group := protowire.AppendTag(nil, 2, protowire.StartGroupType)
	badUTF8 := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), []byte{0xff, 0xfe})
	for _, tc := range []struct {
		name     string
		inject   []func(http.ResponseWriter)
		requests int
		class    func(error) bool
		inErr    []string
	}{
		{"two 5xx then ok", []func(http.ResponseWriter){status(500, "InternalFailure"), status(503, "ServiceUnavailableTemporary")}, 3, nil, nil},
		{"throttled then ok", []func(http.ResponseWriter){status(400, "Rejected.Throttling")}, 2, nil, nil},
		{"5xx always", []func(http.ResponseWriter){status(500, "InternalFailure"), status(500, "InternalFailure"), status(500, "InternalFailure")}, 3,
			errdefs.IsUnavailable, []string{"HTTP 500 InternalFailure: injected"}},
		{"html 502", []func(http.ResponseWriter){html, html, html}, 3, errdefs.IsUnavailable, []string{"HTTP 502"}},
		{"403 not retried", []func(http.ResponseWriter){status(403, "Forbidden.NoPermission")}, 1, errdefs.IsPermissionDenied, []string{"HTTP 403 Forbidden.NoPermission"}},
		{"truncated protobuf", []func(http.ResponseWriter){body([]byte{0x12, 0xff})}, 1, errdefs.IsUnknown, []string{"malformed DecryptResponse"}},
		{"wrong wire type", []func(http.ResponseWriter){body(plaintextAsVarint)}, 1, errdefs.IsUnknown, []string{"malformed DecryptResponse"}},
		{"group", []func(http.ResponseWriter){body(group)}, 1, errdefs.IsUnknown, []string{"malformed DecryptResponse"}},
		{"invalid UTF-8 string", []func(http.ResponseWriter){body(badUTF8)}, 1, errdefs.IsUnknown, []string{"malformed DecryptResponse"}},
		{"empty response", []func(http.ResponseWriter){body(nil)}, 1, errdefs.IsUnknown, []string{"no Plaintext"}},
		{"oversize", []func(http.ResponseWriter){body(make([]byte, maxResponse+1))}, 1, errdefs.IsUnknown, []string{"larger than"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newInstanceProvider(t, f, creds)
			c, _ := p.InstanceClient(testInstance, testClientKeyID)
			f.inject(tc.inject...)
			before := f.count()
			got, err := c.Decrypt(context.Background(), blob, "key-1", raw(t, ivAnn()))
			if n := f.count() - before; n != tc.requests {
				t.Errorf("%d requests, want %d", n, tc.requests)
			}
			f.inject()
			if tc.class == nil {
				if err != nil || string(got) != marker {
					t.Fatalf("got %q, %v", got, err)
				}
				return
			}
			wantErr(t, err, tc.class, append(tc.inErr, "aliyun kms-instance Decrypt")...)
		})
	}
	t.Run("cancelled context stops retries", func(t *testing.T) {
		p := newInstanceProvider(t, f, creds)
		p.backoff = time.Hour
		c, _ := p.InstanceClient(testInstance, testClientKeyID)
		f.inject(status(500, "InternalFailure"), status(500, "InternalFailure"))
		defer f.inject()
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		if _, err := c.Decrypt(ctx, blob, "key-1", raw(t, ivAnn())); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v", err)
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("retry ignored the context")
		}
	})
}

func TestInstanceGetSecret(t *testing.T) {
	f := newFakeInstance(t)
	creds := instanceCreds(t, f)
	f.secrets["db"] = map[string]string{"ACSCurrent": marker, "ACSPrevious": "old-" + marker}
	noData := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), "db")
	for _, tc := range []struct {
		name   string
		secret string
		ann    map[string]any
		inject func(http.ResponseWriter)
		want   string
		class  func(error) bool
		inErr  []string
	}{
		{name: "current", secret: "db", want: marker},
		{name: "reference annotations", secret: "db", ann: map[string]any{"version_stage": "", "version_id": ""}, want: marker},
		{name: "stage", secret: "db", ann: map[string]any{"version_stage": "ACSPrevious"}, want: "old-" + marker},
		{name: "not found", secret: "nope", class: errdefs.IsNotFound, inErr: []string{"aliyun kms-instance GetSecretValue", "HTTP 404", "Forbidden.ResourceNotFound"}},
		{name: "version_id not a string", secret: "db", ann: map[string]any{"version_id": 3}, class: errdefs.IsInvalidArgument, inErr: []string{"annotations.version_id"}},
		{name: "empty name", secret: "", class: errdefs.IsInvalidArgument, inErr: []string{"name"}},
		{name: "no SecretData", secret: "db", inject: func(w http.ResponseWriter) { w.Write(noData) }, class: errdefs.IsNotFound, inErr: []string{"no SecretData"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newInstanceProvider(t, f, creds)
			g, err := p.SecretGetter(context.Background(), raw(t, instanceSettings()))
			if err != nil {
				t.Fatal(err)
			}
			if tc.inject != nil {
				f.inject(tc.inject)
				defer f.inject()
			}
			got, err := g.GetSecret(context.Background(), tc.secret, raw(t, tc.ann))
			if tc.class == nil {
				if err != nil || string(got) != tc.want {
					t.Fatalf("got %q, %v", got, err)
				}
				if string(f.last[1]) != tc.secret || string(f.last[4]) != "1" || f.lastHdr.Get("X-Kms-Apiname") != "GetSecretValue" {
					t.Fatalf("request fields %q", f.last)
				}
				return
			}
			wantErr(t, err, tc.class, tc.inErr...)
		})
	}
}

func TestSettings(t *testing.T) {
	p, err := New(Config{Credentials: testCreds{}})
	if err != nil {
		t.Fatal(err)
	}
	with := func(kv ...any) map[string]any {
		m := instanceSettings()
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(m, kv[i].(string))
			} else {
				m[kv[i].(string)] = kv[i+1]
			}
		}
		return m
	}
	sts := map[string]any{"client_type": "sts_token", "token_path": kms.DefaultCredentialRoot + "/aliyun/sts", "region_id": "cn-beijing"}
	stsWith := func(k string, v any) map[string]any {
		m := map[string]any{}
		for a, b := range sts {
			m[a] = b
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name     string
		settings map[string]any
		host     string
		class    func(error) bool
		inErr    string
	}{
		{name: "client_key", settings: instanceSettings(), host: testInstance + ".cryptoservice.kms.aliyuncs.com"},
		{name: "unknown member ignored", settings: with("x", 1), host: testInstance + ".cryptoservice.kms.aliyuncs.com"},
		{name: "missing client_type", settings: with("client_type", nil), class: errdefs.IsInvalidArgument, inErr: "provider_settings.client_type: missing"},
		{name: "client_type not a string", settings: with("client_type", 1), class: errdefs.IsInvalidArgument, inErr: "provider_settings.client_type"},
		{name: "unknown client_type", settings: with("client_type", "access_key"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.client_type"},
		{name: "missing client_key_id", settings: with("client_key_id", nil), class: errdefs.IsInvalidArgument, inErr: "provider_settings.client_key_id: missing"},
		{name: "missing kms_instance_id", settings: with("kms_instance_id", nil), class: errdefs.IsInvalidArgument, inErr: "provider_settings.kms_instance_id: missing"},
		{name: "instance id with host", settings: with("kms_instance_id", "evil.example.com"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.kms_instance_id"},
		{name: "instance id with slash", settings: with("kms_instance_id", "kst-a/b"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.kms_instance_id"},
		{name: "instance id upper case", settings: with("kms_instance_id", "KST-A"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.kms_instance_id"},
		{name: "client key id traversal", settings: with("client_key_id", "../x"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.client_key_id"},
		{name: "client key id dot dot", settings: with("client_key_id", ".."), class: errdefs.IsInvalidArgument, inErr: "provider_settings.client_key_id"},
		{name: "ecs_ram_role has no Decrypt", settings: map[string]any{"client_type": "ecs_ram_role"}, class: errdefs.IsNotImplemented, inErr: "ecs_ram_role"},
		{name: "sts_token has no Decrypt", settings: sts, class: errdefs.IsNotImplemented, inErr: "sts_token"},
		{name: "sts_token missing token_path", settings: stsWith("token_path", nil), class: errdefs.IsInvalidArgument, inErr: "provider_settings.token_path: missing"},
		{name: "sts_token missing region_id", settings: stsWith("region_id", nil), class: errdefs.IsInvalidArgument, inErr: "provider_settings.region_id: missing"},
		{name: "sts_token bad region", settings: stsWith("region_id", "cn.evil"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.region_id"},
		{name: "sts_token path outside root", settings: stsWith("token_path", "/etc/shadow"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.token_path"},
		{name: "sts_token path traversal", settings: stsWith("token_path", kms.DefaultCredentialRoot+"/../x"), class: errdefs.IsInvalidArgument, inErr: "provider_settings.token_path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := p.Decrypter(context.Background(), raw(t, tc.settings))
			if tc.class != nil {
				wantErr(t, err, tc.class, tc.inErr)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if h := d.(*InstanceClient).ep.Host; h != tc.host {
				t.Fatalf("endpoint %s, want %s", h, tc.host)
			}
		})
	}
	// Vault clients exist for every type.
	for _, s := range []map[string]any{instanceSettings(), {"client_type": "ecs_ram_role"}, sts} {
		if _, err := p.SecretGetter(context.Background(), raw(t, s)); err != nil {
			t.Errorf("SecretGetter(%v): %v", s, err)
		}
	}
}

func TestConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{}, true},
		{"https endpoint", Config{InstanceEndpoint: "https://kms.internal:8443"}, true},
		{"http loopback", Config{KMSEndpoint: "http://127.0.0.1:4599"}, true},
		{"http localhost metadata", Config{MetadataEndpoint: "http://localhost:4599/"}, true},
		{"http remote", Config{InstanceEndpoint: "http://kms.example.com"}, false},
		{"http remote metadata", Config{MetadataEndpoint: "http://100.100.100.201"}, false},
		{"path", Config{KMSEndpoint: "https://kms.example.com/x"}, false},
		{"userinfo", Config{InstanceEndpoint: "https://u:p@kms.example.com"}, false},
		{"scheme", Config{InstanceEndpoint: "ftp://kms.example.com"}, false},
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

// TestUnsealThroughAliyun unseals envelope and vault secrets end to end:
// sealed.Unsealer → kms.Providers → aliyun → the signing fake.
func TestUnsealThroughAliyun(t *testing.T) {
	f := newFakeInstance(t)
	p := newInstanceProvider(t, f, instanceCreds(t, f))
	f.secrets["app/db"] = map[string]string{"ACSCurrent": marker}
	u := sealed.New(nil, sealed.WithSkipVerification(true), sealed.WithProviders(kms.Providers{kms.ProviderAliyun: p}))
	for _, wrap := range []string{sealed.WrapA256GCM, sealed.WrapA256CTR} {
		t.Run(wrap, func(t *testing.T) {
			s := sealedtest.Envelope(t, "aliyun", "key-1", wrap, []byte(marker), instanceSettings(), ivAnn(),
				func(dek []byte) []byte { return f.seal("key-1", testIV, dek) })
			got, err := u.Unseal(context.Background(), s)
			if err != nil || string(got) != marker {
				t.Fatalf("got %q, %v", got, err)
			}
		})
	}
	t.Run("wrong key", func(t *testing.T) {
		s := sealedtest.Envelope(t, "Aliyun", "key-1", sealed.WrapA256GCM, []byte(marker), instanceSettings(), ivAnn(),
			func(dek []byte) []byte { return f.seal("key-2", testIV, dek) })
		_, err := u.Unseal(context.Background(), s)
		wantErr(t, err, errdefs.IsNotFound, "Forbidden.KeyNotFound", `"Aliyun"`)
	})
	t.Run("vault", func(t *testing.T) {
		v, _ := json.Marshal(map[string]any{"version": "0.1.0", "type": "vault", "name": "app/db", "provider": "aliyun",
			"provider_settings": instanceSettings(), "annotations": map[string]any{"version_stage": "", "version_id": ""}})
		got, err := u.Unseal(context.Background(), "sealed.h."+base64.RawURLEncoding.EncodeToString(v)+".s")
		if err != nil || string(got) != marker {
			t.Fatalf("got %q, %v", got, err)
		}
	})
}

// FuzzParse feeds arbitrary bytes to every parser of remote or credential
// bytes: no panic, classified errors, no echo of content.
func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"KeyId":"KAAP.x","PrivateKeyData":"MIIJ"}`))
	f.Add([]byte{0x08, 0x90, 0x03, 0x12, 0x03, 'a', 'b', 'c'})
	f.Add([]byte(`ak:sk:token`))
	f.Add([]byte(`{"ecs_ram_role_name":"r","region_id":"cn-beijing"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := ParseClientKey(b, b); err != nil && !errdefs.IsInvalidArgument(err) && !errdefs.IsPermissionDenied(err) {
			t.Fatalf("unclassified: %v", err)
		}
		if _, err := ParseSTSToken(b); err != nil && !errdefs.IsInvalidArgument(err) {
			t.Fatalf("unclassified: %v", err)
		}
		if _, err := ParseECSRAMRole(b); err != nil && !errdefs.IsInvalidArgument(err) {
			t.Fatalf("unclassified: %v", err)
		}
		var e apiError
		_ = e.unmarshal(b)
		var d decryptResponse
		_ = d.unmarshal(b)
		var g getSecretValueResponse
		_ = g.unmarshal(b)
		_ = percentEncode(string(b))
		if err := remoteError(400, e.ErrorCode, e.ErrorMessage, e.RequestID); !strings.HasPrefix(err.Error(), "HTTP 400") {
			t.Fatalf("remoteError = %v", err)
		}
	})
}
