// Package aliyun is the "aliyun" KMS provider for sealed secrets, speaking
// Alibaba Cloud KMS as guest-components' aliyun plugin does, but with the
// standard library instead of a vendor SDK.
//
// # Modes
//
// provider_settings.client_type (required) selects one of the reference's
// three clients:
//
//   - "client_key": a KMS instance (dedicated KMS) reached through an
//     application access point's client key. provider_settings:
//     {"client_type": "client_key", "client_key_id": "KAAP.…",
//     "kms_instance_id": "kst-…"} (both required). Requests go to
//     https://<kms_instance_id>.cryptoservice.kms.aliyuncs.com/ over the
//     instance API described below, authenticated with the instance's CA
//     (PrivateKmsCA_<id>.pem) alone. Both roles are offered: Decrypt
//     (envelope data keys) and GetSecretValue (vault secrets).
//   - "ecs_ram_role": the RAM role attached to the ECS instance. Its name
//     and region come from ecsRamRole.json, as in the reference
//     (provider_settings carry only client_type); STS credentials come from the ECS metadata server
//     (http://100.100.100.200/latest/meta-data/ram/security-credentials/<role>)
//     and sign KMS OpenAPI calls (RPC style, HMAC-SHA1 signature version 1.0,
//     API version 2016-01-20) to https://kms.<region>.aliyuncs.com/. Vault
//     secrets only: Decrypt returns errdefs.ErrNotImplemented, as the
//     reference errors.
//   - "sts_token": like ecs_ram_role, with the STS credential read from the
//     "<ak>:<sk>:<token>" file that provider_settings.token_path names and
//     the region from provider_settings.region_id (both required). Vault
//     only.
//
// The instance API (x-kms-apiversion dkms-gcs-0.2) is a POST to "/" of a
// protobuf body (Content-Type and Accept application/x-protobuf) with the
// headers x-kms-apiname (Decrypt, GetSecretValue), x-kms-acccesskeyid
// (sic: the client key's KeyId), x-kms-signaturemethod RSA_PKCS1_SHA_256,
// Date (RFC 1123, GMT) and Content-Sha256 (upper-case hex SHA-256 of the
// body). The client key's RSA key signs (PKCS#1 v1.5, SHA-256)
//
//	POST\n<Content-Sha256>\n<Content-Type>\n<Date>\n<x-kms-* headers>/
//
// where the x-kms-* headers are "name:value\n" lines, names lower-cased and
// sorted, values trimmed; the request carries "Authorization: Bearer
// <base64 signature>". Errors come back as a protobuf Error message.
//
// # Annotations
//
// Envelope (Decrypt): {"iv": "<base64>"} (required; the reference's
// AliCryptAnnotations), sent as the request's Iv with Algorithm "AES_GCM"
// and no AAD, as the reference does. Vault (GetSecretValue):
// {"version_stage": "…", "version_id": "…"} (optional, empty means the
// current version); FetchExtendedConfig is set as in the reference. The
// secret returned is SecretData's text (binary secrets are returned as
// their base64 text, as the reference does).
//
// # Credentials
//
// Private parameters never travel in a sealed secret. A Credentials
// implementation, by default FileCredentials over DefaultCredentialDir,
// supplies them from the reference's files, which cdh.toml [[credentials]]
// fetches from the KBS at start: clientKey_<client_key_id>.json,
// password_<client_key_id>.json, PrivateKmsCA_<kms_instance_id>.pem and
// ecsRamRole.json.
//
// # Safety
//
// Nothing the host controls selects an endpoint: instance ids and regions
// come from the (signed) sealed secret or the credential files and are
// validated as DNS labels. Config may override endpoints (https, or plain
// http only for loopback hosts) and add root CAs. Responses are bounded,
// every remote byte is validated (protobuf wire types, UTF-8, JSON
// shapes), requests are bounded by the context and Config.Timeout, and
// transport errors, 429, 5xx and KMS throttling codes are retried a few
// times. Errors name the service, operation, host, HTTP status and KMS's
// error code and message (clipped); they never carry keys, plaintext,
// passwords, credentials or signatures, and nothing of that is logged.
//
// # Deviations from the reference
//
//   - Only golang.org/x/crypto/pkcs12's PBEs are decoded (the legacy
//     SHA-1/3DES and SHA-1/RC2 PBEs with a SHA-1 MAC, which KMS issues and
//     Alibaba's own Go SDK also decodes this way); a PKCS#12 re-exported
//     with PBES2/AES or a SHA-256 MAC (OpenSSL 3's default) is refused with
//     an error naming the algorithm, where the reference (OpenSSL) accepts
//     it. Client keys must be RSA of at least 2048 bits.
//   - A password file holding {"ClientKeyPassword": "…"} (the reference's
//     example files) is understood; the reference uses any file content
//     verbatim (trailing white space trimmed), which Cova does otherwise.
//   - The instance's TLS certificate must chain to PrivateKmsCA_<id>.pem
//     (or Config.ExtraRootCAs); the reference also trusts public roots.
//   - An empty or missing iv is refused before any request.
//   - ecs_ram_role: the metadata server's Code, when present, must be
//     "Success". The metadata server is plain HTTP on the host-controlled
//     network, as in the reference: a hostile host can substitute STS
//     credentials of its own account (it cannot read the guest's secrets
//     with that, but it can feed the guest secrets of its choosing). Use
//     client_key where that matters.
//   - OpenAPI calls omit empty VersionStage/VersionId and the empty
//     SignatureType the reference sends; token_path (sts_token) must lie
//     under kms.DefaultCredentialRoot.
//   - ALIYUN_IN_GUEST_KEY_PATH is not honoured; Encrypt is not offered.
package aliyun

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"regexp"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
)

// Client types (provider_settings.client_type).
const (
	ClientKeyType  = "client_key"
	ECSRAMRoleType = "ecs_ram_role"
	STSTokenType   = "sts_token"
)

// Defaults.
const (
	DefaultTimeout          = 30 * time.Second
	DefaultMetadataEndpoint = "http://100.100.100.200"
	maxResponse             = 1 << 20
	maxAttempts             = 3
)

// regionRE matches instance ids and regions (one DNS label).
var regionRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// Config configures the provider. Every field is optional.
type Config struct {
	// Credentials supplies client keys, instance CAs and RAM
	// configuration; FileCredentials{} (DefaultCredentialDir) when nil.
	Credentials Credentials
	// InstanceEndpoint overrides https://<kms_instance_id>.cryptoservice.kms.aliyuncs.com
	// for every instance ("https://host[:port]"; "http://" only for
	// loopback).
	InstanceEndpoint string
	// KMSEndpoint overrides https://kms.<region>.aliyuncs.com (OpenAPI).
	KMSEndpoint string
	// MetadataEndpoint overrides DefaultMetadataEndpoint (loopback or
	// https only).
	MetadataEndpoint string
	// ExtraRootCAs are PEM certificates trusted besides the system roots
	// (OpenAPI) and besides the instance CA (client_key).
	ExtraRootCAs string
	// Timeout bounds each request; DefaultTimeout when 0.
	Timeout time.Duration
	// Logger receives one debug line per call (operation, host, subject,
	// outcome; never values); discarded when nil.
	Logger *slog.Logger
	// Now is the signing clock; time.Now when nil.
	Now func() time.Time
}

// Provider is the "aliyun" kms.Provider.
type Provider struct {
	creds      Credentials
	instanceEP *url.URL
	kmsEP      *url.URL
	metadataEP *url.URL
	extraCAs   []byte
	timeout    time.Duration
	openAPI    *http.Client
	metadata   *http.Client
	log        *slog.Logger
	now        func() time.Time
	backoff    time.Duration
}

var _ kms.Provider = (*Provider)(nil)

// New validates cfg and returns the provider.
func New(cfg Config) (*Provider, error) {
	p := &Provider{creds: cfg.Credentials, log: cfg.Logger, now: cfg.Now, timeout: cfg.Timeout, backoff: 100 * time.Millisecond}
	if p.creds == nil {
		p.creds = FileCredentials{}
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.now == nil {
		p.now = time.Now
	}
	if p.timeout <= 0 {
		p.timeout = DefaultTimeout
	}
	var err error
	if p.instanceEP, err = kms.ParseEndpoint("aliyun", "InstanceEndpoint", cfg.InstanceEndpoint); err != nil {
		return nil, err
	}
	if p.kmsEP, err = kms.ParseEndpoint("aliyun", "KMSEndpoint", cfg.KMSEndpoint); err != nil {
		return nil, err
	}
	if cfg.MetadataEndpoint == "" {
		p.metadataEP, _ = url.Parse(DefaultMetadataEndpoint + "/")
	} else if p.metadataEP, err = kms.ParseEndpoint("aliyun", "MetadataEndpoint", cfg.MetadataEndpoint); err != nil {
		return nil, err
	}
	if cfg.ExtraRootCAs != "" {
		if !x509.NewCertPool().AppendCertsFromPEM([]byte(cfg.ExtraRootCAs)) {
			return nil, fmt.Errorf("aliyun: ExtraRootCAs: no PEM certificate found: %w", errdefs.ErrInvalidArgument)
		}
		p.extraCAs = []byte(cfg.ExtraRootCAs)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	pool.AppendCertsFromPEM(p.extraCAs)
	p.openAPI = p.httpClient(pool, false)
	p.metadata = p.httpClient(pool, false)
	return p, nil
}

// httpClient returns a client trusting pool. No proxy comes from the
// environment: the agent's environment is host-controlled.
func (p *Provider) httpClient(pool *x509.CertPool, oneShot bool) *http.Client {
	return &http.Client{
		Timeout: p.timeout,
		// KMS answers directly; a redirect is not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool},
			ForceAttemptHTTP2: true, MaxIdleConns: 4, DisableKeepAlives: oneShot,
			IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 10 * time.Second,
			ResponseHeaderTimeout: p.timeout,
		},
	}
}

// instanceClient returns a one-shot client that trusts only the instance
// CA (and Config.ExtraRootCAs).
func (p *Provider) instanceClient(caPEM []byte, instanceID string) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("aliyun credential PrivateKmsCA_%s.pem: no PEM certificate found: %w", instanceID, errdefs.ErrInvalidArgument)
	}
	pool.AppendCertsFromPEM(p.extraCAs)
	return p.httpClient(pool, true), nil
}

// settings are the members of the reference's provider settings for all
// client types.
type settings struct {
	ClientType    *string `json:"client_type"`
	ClientKeyID   *string `json:"client_key_id"`
	KMSInstanceID *string `json:"kms_instance_id"`
	TokenPath     *string `json:"token_path"`
	RegionID      *string `json:"region_id"`
}

func required(name string, v *string) (string, error) {
	if v == nil || *v == "" {
		return "", fmt.Errorf("aliyun: provider_settings.%s: missing: %w", name, errdefs.ErrInvalidArgument)
	}
	return *v, nil
}

// client builds the client provider_settings select.
func (p *Provider) client(s kms.Settings) (any, error) {
	var st settings
	if err := kms.DecodeMembers("provider_settings", s, &st); err != nil {
		return nil, fmt.Errorf("aliyun: %w", err)
	}
	typ, err := required("client_type", st.ClientType)
	if err != nil {
		return nil, err
	}
	switch typ {
	case ClientKeyType:
		keyID, err := required("client_key_id", st.ClientKeyID)
		if err != nil {
			return nil, err
		}
		inst, err := required("kms_instance_id", st.KMSInstanceID)
		if err != nil {
			return nil, err
		}
		return p.InstanceClient(inst, keyID)
	case ECSRAMRoleType:
		return &OpenAPIClient{p: p, mode: ECSRAMRoleType}, nil
	case STSTokenType:
		path, err := required("token_path", st.TokenPath)
		if err != nil {
			return nil, err
		}
		region, err := required("region_id", st.RegionID)
		if err != nil {
			return nil, err
		}
		if !regionRE.MatchString(region) {
			return nil, fmt.Errorf("aliyun: provider_settings.region_id %q: want a region such as cn-hangzhou: %w", kms.Clip(region), errdefs.ErrInvalidArgument)
		}
		if _, err := kms.ValidateCredentialPath(kms.DefaultCredentialRoot, path); err != nil {
			return nil, fmt.Errorf("aliyun: provider_settings.token_path: %w", err)
		}
		return &OpenAPIClient{p: p, mode: STSTokenType, tokenPath: path, region: region}, nil
	}
	return nil, fmt.Errorf("aliyun: provider_settings.client_type %q: want client_key, ecs_ram_role or sts_token: %w", kms.Clip(typ), errdefs.ErrInvalidArgument)
}

// Decrypter returns the client provider_settings select; only client_key
// clients decrypt.
func (p *Provider) Decrypter(_ context.Context, s kms.Settings) (kms.Decrypter, error) {
	c, err := p.client(s)
	if err != nil {
		return nil, err
	}
	d, ok := c.(kms.Decrypter)
	if !ok {
		return nil, fmt.Errorf("aliyun: client_type %s offers no Decrypt (envelope secrets need client_key): %w", c.(*OpenAPIClient).mode, errdefs.ErrNotImplemented)
	}
	return d, nil
}

// SecretGetter returns the client provider_settings select.
func (p *Provider) SecretGetter(_ context.Context, s kms.Settings) (kms.SecretGetter, error) {
	c, err := p.client(s)
	if err != nil {
		return nil, err
	}
	return c.(kms.SecretGetter), nil
}

// attempt is one try of a call: the body of a 2xx response, whether a
// failure may be retried, and the failure.
type attempt func(ctx context.Context) (out []byte, retry bool, err error)

// retry runs try up to maxAttempts times with jittered exponential
// backoff while it reports a retryable failure.
func (p *Provider) retry(ctx context.Context, name, host, subject string, try attempt) ([]byte, error) {
	var last error
	for n := 1; n <= maxAttempts; n++ {
		if n > 1 {
			d := p.backoff << (n - 2)
			d += rand.N(d/2 + 1)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("%s: %w (last error: %w)", name, ctx.Err(), last)
			case <-t.C:
			}
		}
		out, again, err := try(ctx)
		p.log.DebugContext(ctx, "aliyun call", "op", name, "host", host, "subject", subject, "attempt", n, "ok", err == nil)
		if err == nil {
			return out, nil
		}
		last = fmt.Errorf("%s at %s: %w", name, host, err)
		if !again || ctx.Err() != nil {
			break
		}
	}
	return nil, last
}

// retryableCode reports KMS error codes worth another attempt (those the
// KMS instance SDKs retry).
func retryableCode(code string) bool {
	switch code {
	case "Rejected.Throttling", "ServiceUnavailableTemporary", "InternalFailure", "Throttling", "ServiceUnavailable":
		return true
	}
	return false
}

// errorClass maps a KMS error to an errdefs class.
func errorClass(status int, code string) error {
	switch code {
	case "SignatureNotMatch", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidAccessKeyId.NotFound",
		"InvalidAccessKeyId.Inactive", "InvalidSecurityToken.Expired", "InvalidSecurityToken.Malformed",
		"InvalidSecurityToken.MismatchWithAccessKey", "Forbidden.NoPermission", "Forbidden.RAM",
		"Forbidden.AccessDenied", "UnauthorizedAccess", "IncompleteSignature":
		return errdefs.ErrPermissionDenied
	case "Forbidden.KeyNotFound", "Forbidden.ResourceNotFound", "Forbidden.AliasNotFound",
		"Forbidden.SecretNotFound", "ResourceNotFound":
		return errdefs.ErrNotFound
	case "Rejected.Disabled", "Rejected.PendingDeletion", "Forbidden.KeyStateNotEnabled":
		return errdefs.ErrFailedPrecondition
	case "RequestTimeTooSkewed", "IllegalTimestamp":
		return errdefs.ErrFailedPrecondition
	}
	switch {
	case retryableCode(code), status == http.StatusTooManyRequests || status >= 500:
		return errdefs.ErrUnavailable
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return errdefs.ErrPermissionDenied
	case status == http.StatusNotFound:
		return errdefs.ErrNotFound
	case status >= 400:
		return errdefs.ErrInvalidArgument
	}
	return errdefs.ErrUnknown
}

// remoteError formats a KMS error: status, code, message and request id,
// clipped and sanitized (KMS error bodies carry no secret material).
func remoteError(status int, code, msg, requestID string) error {
	text := fmt.Sprintf("HTTP %d", status)
	if code != "" {
		text += " " + kms.Clip(code)
	}
	if msg != "" {
		text += ": " + kms.Clip(msg)
	}
	if requestID != "" {
		text += " (request id " + kms.Clip(requestID) + ")"
	}
	return fmt.Errorf("%s: %w", text, errorClass(status, code))
}
