package aliyun

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
)

func metadataBody(ak, secret, token, code string) string {
	m := map[string]string{"AccessKeyId": ak, "AccessKeySecret": secret, "SecurityToken": token,
		"Expiration": "2026-11-27T20:00:00Z", "LastUpdated": "2026-11-27T19:00:00Z"}
	if code != "" {
		m["Code"] = code
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func TestOpenAPIGetSecret(t *testing.T) {
	f := newFakeOpenAPI(t)
	f.creds["STS.ak"] = [2]string{stsSecret, stsToken}
	f.secrets["db/"] = marker
	f.secrets["db/ACSPrevious"] = "old-" + marker
	role := ECSRAMRole{RoleName: "EcsRamRoleTest", RegionID: f.region}
	newP := func(t *testing.T, meta string, creds Credentials) *Provider {
		t.Helper()
		md := fakeMetadata(t, "EcsRamRoleTest", meta)
		p, err := New(Config{Credentials: creds, KMSEndpoint: f.srv.URL, MetadataEndpoint: md.URL,
			ExtraRootCAs: f.caPEM(), Now: func() time.Time { return f.now }})
		if err != nil {
			t.Fatal(err)
		}
		p.backoff = time.Millisecond
		return p
	}
	okMeta := metadataBody("STS.ak", stsSecret, stsToken, "Success")
	ecs := map[string]any{"client_type": "ecs_ram_role"}
	sts := map[string]any{"client_type": "sts_token", "token_path": kms.DefaultCredentialRoot + "/aliyun/sts", "region_id": f.region}
	for _, tc := range []struct {
		name     string
		settings map[string]any
		creds    testCreds
		meta     string
		secret   string
		ann      map[string]any
		want     string
		class    func(error) bool
		inErr    []string
	}{
		{name: "ecs_ram_role", settings: ecs, creds: testCreds{role: role}, meta: okMeta, secret: "db", want: marker},
		{name: "metadata without Code", settings: ecs, creds: testCreds{role: role}, meta: metadataBody("STS.ak", stsSecret, stsToken, ""), secret: "db", want: marker},
		{name: "stage", settings: ecs, creds: testCreds{role: role}, meta: okMeta, secret: "db", ann: map[string]any{"version_stage": "ACSPrevious", "version_id": ""}, want: "old-" + marker},
		{name: "sts_token", settings: sts, creds: testCreds{sts: STSCredential{AccessKeyID: "STS.ak", AccessKeySecret: stsSecret, SecurityToken: stsToken}}, secret: "db", want: marker},
		{name: "not found", settings: ecs, creds: testCreds{role: role}, meta: okMeta, secret: "nope", class: errdefs.IsNotFound,
			inErr: []string{"aliyun kms GetSecretValue", "HTTP 404 Forbidden.ResourceNotFound", "request id rpc-req-1"}},
		{name: "wrong secret", settings: ecs, creds: testCreds{role: role}, meta: metadataBody("STS.ak", "wrong", stsToken, "Success"), secret: "db",
			class: errdefs.IsPermissionDenied, inErr: []string{"HTTP 400 SignatureDoesNotMatch"}},
		{name: "wrong token", settings: ecs, creds: testCreds{role: role}, meta: metadataBody("STS.ak", stsSecret, "other", "Success"), secret: "db",
			class: errdefs.IsPermissionDenied, inErr: []string{"InvalidSecurityToken.MismatchWithAccessKey"}},
		{name: "role not attached", settings: ecs, creds: testCreds{role: ECSRAMRole{RoleName: "Other", RegionID: f.region}}, meta: okMeta, secret: "db",
			class: errdefs.IsNotFound, inErr: []string{"ecs metadata", "HTTP 404", "Other"}},
		{name: "metadata Code failed", settings: ecs, creds: testCreds{role: role}, meta: metadataBody("STS.ak", stsSecret, stsToken, "Failed"), secret: "db",
			class: errdefs.IsUnavailable, inErr: []string{"Failed"}},
		{name: "metadata malformed", settings: ecs, creds: testCreds{role: role}, meta: "<html>", secret: "db", class: errdefs.IsUnknown, inErr: []string{"malformed"}},
		{name: "metadata missing token", settings: ecs, creds: testCreds{role: role}, meta: metadataBody("STS.ak", stsSecret, "", "Success"), secret: "db",
			class: errdefs.IsInvalidArgument, inErr: []string{"non-empty"}},
		{name: "no ecsRamRole.json", settings: ecs, creds: testCreds{}, meta: okMeta, secret: "db", class: func(err error) bool { return err != nil }, inErr: []string{"ecs_ram_role"}},
		{name: "empty name", settings: ecs, creds: testCreds{role: role}, meta: okMeta, secret: "", class: errdefs.IsInvalidArgument, inErr: []string{"name"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newP(t, tc.meta, tc.creds)
			g, err := p.SecretGetter(context.Background(), raw(t, tc.settings))
			if err != nil {
				t.Fatal(err)
			}
			got, err := g.GetSecret(context.Background(), tc.secret, raw(t, tc.ann))
			if tc.class != nil {
				wantErr(t, err, tc.class, tc.inErr...)
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %q, %v", got, err)
			}
			if f.last.Get("FetchExtendedConfig") != "true" || f.last.Get("SecretName") != tc.secret || f.last.Has("VersionId") {
				t.Fatalf("request %v", f.last)
			}
		})
	}
	t.Run("transport error names no signed query", func(t *testing.T) {
		p := newP(t, okMeta, testCreds{role: role})
		p.kmsEP, _ = kms.ParseEndpoint("aliyun", "KMSEndpoint", "http://127.0.0.1:1")
		g, _ := p.SecretGetter(context.Background(), raw(t, ecs))
		_, err := g.GetSecret(context.Background(), "db", nil)
		wantErr(t, err, errdefs.IsUnavailable, "connection refused")
		if strings.Contains(err.Error(), "AccessKeyId") || strings.Contains(err.Error(), "SecurityToken") {
			t.Fatalf("error carries the query: %v", err)
		}
	})
	t.Run("region from ecsRamRole.json selects the endpoint", func(t *testing.T) {
		p, err := New(Config{Credentials: testCreds{role: role}})
		if err != nil {
			t.Fatal(err)
		}
		g, err := p.SecretGetter(context.Background(), raw(t, ecs))
		if err != nil {
			t.Fatal(err)
		}
		if g.(*OpenAPIClient).mode != ECSRAMRoleType || p.metadataEP.String() != DefaultMetadataEndpoint+"/" {
			t.Fatalf("client %+v, metadata %s", g, p.metadataEP)
		}
	})
}
