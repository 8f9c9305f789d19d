package aliyun

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
)

// Wire constants of the KMS OpenAPI (RPC style).
const (
	OpenAPIVersion          = "2016-01-20"
	OpenAPISignatureMethod  = "HMAC-SHA1"
	OpenAPISignatureVersion = "1.0"
	maxMetadataResponse     = 64 << 10
)

// OpenAPIClient calls the regional KMS OpenAPI with STS credentials
// (client_type "ecs_ram_role" or "sts_token"). It offers GetSecretValue
// only.
type OpenAPIClient struct {
	p         *Provider
	mode      string
	tokenPath string // sts_token
	region    string // sts_token; ecs_ram_role reads ecsRamRole.json
}

var _ kms.SecretGetter = (*OpenAPIClient)(nil)

// credential returns the region and the STS credential for one call.
func (c *OpenAPIClient) credential(ctx context.Context) (string, STSCredential, error) {
	if c.mode == STSTokenType {
		cred, err := c.p.creds.STSToken(ctx, c.tokenPath)
		return c.region, cred, err
	}
	role, err := c.p.creds.ECSRAMRole(ctx)
	if err != nil {
		return "", STSCredential{}, err
	}
	if !regionRE.MatchString(role.RegionID) || !roleRE.MatchString(role.RoleName) {
		return "", STSCredential{}, fmt.Errorf("aliyun ecs_ram_role: region or role name invalid: %w", errdefs.ErrInvalidArgument)
	}
	cred, err := c.p.metadataCredential(ctx, role.RoleName)
	return role.RegionID, cred, err
}

// metadataCredential fetches the STS credential of role from the ECS
// metadata server.
func (p *Provider) metadataCredential(ctx context.Context, role string) (STSCredential, error) {
	u := p.metadataEP.JoinPath("latest", "meta-data", "ram", "security-credentials", role)
	name := "aliyun ecs metadata security-credentials"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return STSCredential{}, fmt.Errorf("%s: building request: %w", name, errdefs.ErrInvalidArgument)
	}
	req.Header.Set("User-Agent", userAgent)
	resp, err := p.metadata.Do(req)
	if err != nil {
		return STSCredential{}, fmt.Errorf("%s at %s: %w: %w", name, u.Host, err, errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxMetadataResponse+1))
	defer clear(raw)
	if err != nil || len(raw) > maxMetadataResponse {
		return STSCredential{}, fmt.Errorf("%s at %s: HTTP %d: unreadable or larger than %d bytes: %w", name, u.Host, resp.StatusCode, maxMetadataResponse, errdefs.ErrUnavailable)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return STSCredential{}, fmt.Errorf("%s at %s: HTTP 404: RAM role %q not attached to this instance: %w", name, u.Host, role, errdefs.ErrNotFound)
	case resp.StatusCode != http.StatusOK:
		return STSCredential{}, fmt.Errorf("%s at %s: HTTP %d: %w", name, u.Host, resp.StatusCode, errdefs.ErrUnavailable)
	}
	var m struct {
		Code            *string `json:"Code"`
		AccessKeyID     string  `json:"AccessKeyId"`
		AccessKeySecret string  `json:"AccessKeySecret"`
		SecurityToken   string  `json:"SecurityToken"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return STSCredential{}, fmt.Errorf("%s at %s: malformed response: %w", name, u.Host, errdefs.ErrUnknown)
	}
	if m.Code != nil && *m.Code != "Success" {
		return STSCredential{}, fmt.Errorf("%s at %s: Code %q: %w", name, u.Host, kms.Clip(*m.Code), errdefs.ErrUnavailable)
	}
	c := STSCredential{AccessKeyID: m.AccessKeyID, AccessKeySecret: m.AccessKeySecret, SecurityToken: m.SecurityToken}
	if err := c.validate(); err != nil {
		return STSCredential{}, fmt.Errorf("%s at %s: %w", name, u.Host, err)
	}
	return c, nil
}

// GetSecret calls the KMS OpenAPI GetSecretValue for name with the
// annotations' version_stage and version_id and returns SecretData.
func (c *OpenAPIClient) GetSecret(ctx context.Context, name string, a kms.Annotations) ([]byte, error) {
	const op = "aliyun kms GetSecretValue"
	var ann secretAnnotations
	if err := kms.DecodeMembers("annotations", a, &ann); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if name == "" || len(name) > maxName || !utf8.ValidString(name) {
		return nil, fmt.Errorf("%s: name: want 1..%d bytes of UTF-8: %w", op, maxName, errdefs.ErrInvalidArgument)
	}
	if len(ann.VersionStage) > maxName || len(ann.VersionID) > maxName {
		return nil, fmt.Errorf("%s: annotations.version_stage or version_id: want at most %d bytes: %w", op, maxName, errdefs.ErrInvalidArgument)
	}
	region, cred, err := c.credential(ctx)
	if err != nil {
		return nil, fmt.Errorf("%s (%s): %w", op, c.mode, err)
	}
	ep := c.p.kmsEP
	if ep == nil {
		ep = &url.URL{Scheme: "https", Host: "kms." + region + ".aliyuncs.com", Path: "/"}
	}
	params := map[string]string{"SecretName": name, "FetchExtendedConfig": "true"}
	if ann.VersionStage != "" {
		params["VersionStage"] = ann.VersionStage
	}
	if ann.VersionID != "" {
		params["VersionId"] = ann.VersionID
	}
	raw, err := c.p.retry(ctx, op, ep.Host, kms.Clip(name), func(ctx context.Context) ([]byte, bool, error) {
		return c.once(ctx, ep, region, cred, "GetSecretValue", params)
	})
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	var resp struct {
		SecretData *string `json:"SecretData"`
	}
	if err := json.Unmarshal(raw, &resp); err != nil {
		return nil, fmt.Errorf("%s at %s: malformed response: %w", op, ep.Host, errdefs.ErrUnknown)
	}
	if resp.SecretData == nil {
		return nil, fmt.Errorf("%s at %s: response carries no SecretData: %w", op, ep.Host, errdefs.ErrNotFound)
	}
	return []byte(*resp.SecretData), nil
}

// once performs one signed OpenAPI call.
func (c *OpenAPIClient) once(ctx context.Context, ep *url.URL, region string, cred STSCredential, action string, api map[string]string) ([]byte, bool, error) {
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	params := map[string]string{
		"Action":           action,
		"Version":          OpenAPIVersion,
		"Format":           "JSON",
		"RegionId":         region,
		"Timestamp":        c.p.now().UTC().Format("2006-01-02T15:04:05Z"),
		"SignatureMethod":  OpenAPISignatureMethod,
		"SignatureVersion": OpenAPISignatureVersion,
		"SignatureNonce":   hex.EncodeToString(nonce[:]),
		"AccessKeyId":      cred.AccessKeyID,
		"SecurityToken":    cred.SecurityToken,
	}
	for k, v := range api {
		params[k] = v
	}
	query := canonicalQuery(params)
	sig := rpcSignature(http.MethodPost, query, cred.AccessKeySecret)
	u := *ep
	u.RawQuery = query + "&Signature=" + percentEncode(sig)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), http.NoBody)
	if err != nil {
		return nil, false, fmt.Errorf("building request: %w", errdefs.ErrInvalidArgument)
	}
	req.Header.Set("User-Agent", userAgent)
	req.Header.Set("x-acs-version", OpenAPIVersion)
	req.Header.Set("x-acs-action", action)
	resp, err := c.p.openAPI.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, fmt.Errorf("%w: %w", ctx.Err(), errdefs.ErrUnavailable)
		}
		// Never report the *url.Error itself: its URL carries the signed
		// query. Its inner error names the network operation only.
		var ue *url.Error
		var certErr *tls.CertificateVerificationError
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, !errors.As(err, &certErr), fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	raw, retry, err := kms.ReadResponse(resp, maxResponse)
	if err != nil {
		return nil, retry, err
	}
	if resp.StatusCode/100 == 2 {
		return raw, false, nil
	}
	var e struct {
		Code      string `json:"Code"`
		Message   string `json:"Message"`
		RequestID string `json:"RequestId"`
	}
	_ = json.Unmarshal(raw, &e)
	return nil, resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 || retryableCode(e.Code),
		remoteError(resp.StatusCode, e.Code, e.Message, e.RequestID)
}

// canonicalQuery returns the RPC canonicalized query string: parameters
// sorted by name, names and values percent-encoded (percentEncode),
// "name=value" joined with "&".
func canonicalQuery(params map[string]string) string {
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for i, k := range keys {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(percentEncode(k) + "=" + percentEncode(params[k]))
	}
	return b.String()
}

// rpcSignature returns base64(HMAC-SHA1(secret+"&", method&%2F&percentEncode(query))).
func rpcSignature(method, query, secret string) string {
	mac := hmac.New(sha1.New, []byte(secret+"&"))
	mac.Write([]byte(rpcStringToSign(method, query)))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

func rpcStringToSign(method, query string) string {
	return method + "&" + percentEncode("/") + "&" + percentEncode(query)
}

// percentEncode encodes s as RFC 3986 requires (the RPC signature's
// rule): bytes other than A-Z a-z 0-9 - _ . ~ become %XX, upper-case hex.
func percentEncode(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if 'A' <= ch && ch <= 'Z' || 'a' <= ch && ch <= 'z' || '0' <= ch && ch <= '9' || ch == '-' || ch == '_' || ch == '.' || ch == '~' {
			b.WriteByte(ch)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[ch>>4])
		b.WriteByte(hexDigits[ch&15])
	}
	return b.String()
}
