// Package aws is the "aws" KMS provider for sealed secrets: envelope data
// keys are unwrapped with AWS KMS Decrypt and vault secrets are read with
// AWS Secrets Manager GetSecretValue, as guest-components' aws plugin does,
// but over plain HTTPS JSON (the awsJson1.1 protocol: POST /,
// X-Amz-Target, Content-Type application/x-amz-json-1.1) signed with a small
// built-in Signature Version 4 signer instead of the AWS SDK.
//
// Settings and annotations match the reference plugin:
//   - provider_settings: {"region": "<region>"} (required);
//   - envelope annotations: {"encryption_context": {"k": "v", …}}
//     (optional; sent as the KMS EncryptionContext);
//   - vault annotations: {"version_id": "…", "version_stage": "…"}
//     (optional; empty means AWSCURRENT).
//
// Credentials (access key id, secret access key, optional session token)
// come from a CredentialsProvider, by default the reference's
// credential.json at DefaultCredentialPath, which cdh.toml [[credentials]]
// fetches from the KBS at start (kms.FetchCredentials).
//
// The endpoint defaults to https://kms.<region>.amazonaws.com (and
// secretsmanager.<region>…; .amazonaws.com.cn for cn- regions); Config can
// override it (plain http only for loopback hosts) and add root CAs.
// Nothing the host controls selects the endpoint: the region comes from the
// (signed) sealed secret and is validated as a DNS label.
//
// Errors name the service, the operation and the HTTP status with AWS's
// error type and message; they never carry plaintext, data keys,
// credentials or signatures.
package aws

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
)

// Wire constants of the awsJson1.1 protocol.
const (
	ContentType          = "application/x-amz-json-1.1"
	ServiceKMS           = "kms"
	ServiceSecrets       = "secretsmanager"
	TargetDecrypt        = "TrentService.Decrypt"
	TargetGetSecretValue = "secretsmanager.GetSecretValue"
)

// Defaults.
const (
	DefaultTimeout = 30 * time.Second
	maxResponse    = 1 << 20
	maxAttempts    = 3
)

var regionRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$`)

// Config configures the provider. Every field is optional.
type Config struct {
	// Credentials supplies the IAM credentials; FileCredentials at
	// DefaultCredentialPath when nil.
	Credentials CredentialsProvider
	// KMSEndpoint and SecretsManagerEndpoint override the regional
	// endpoints ("https://host[:port]"; "http://" only for loopback).
	KMSEndpoint            string
	SecretsManagerEndpoint string
	// ExtraRootCAs are PEM certificates trusted besides the system roots.
	ExtraRootCAs string
	// HTTPClient replaces the client built from ExtraRootCAs (tests).
	HTTPClient *http.Client
	// Timeout bounds each request; DefaultTimeout when 0.
	Timeout time.Duration
	// Logger receives one debug line per call (operation, region, key or
	// secret name, status; never values); discarded when nil.
	Logger *slog.Logger
	// Now is the signing clock; time.Now when nil.
	Now func() time.Time
}

// Provider is the "aws" kms.Provider.
type Provider struct {
	creds   CredentialsProvider
	kmsEP   *url.URL
	smEP    *url.URL
	hc      *http.Client
	log     *slog.Logger
	now     func() time.Time
	backoff time.Duration
}

var _ kms.Provider = (*Provider)(nil)

// New validates cfg and returns the provider.
func New(cfg Config) (*Provider, error) {
	p := &Provider{creds: cfg.Credentials, hc: cfg.HTTPClient, log: cfg.Logger, now: cfg.Now, backoff: 100 * time.Millisecond}
	if p.creds == nil {
		p.creds = FileCredentials(DefaultCredentialPath)
	}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.now == nil {
		p.now = time.Now
	}
	var err error
	if p.kmsEP, err = kms.ParseEndpoint("aws", "KMSEndpoint", cfg.KMSEndpoint); err != nil {
		return nil, err
	}
	if p.smEP, err = kms.ParseEndpoint("aws", "SecretsManagerEndpoint", cfg.SecretsManagerEndpoint); err != nil {
		return nil, err
	}
	if p.hc == nil {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if cfg.ExtraRootCAs != "" {
			pool, err := x509.SystemCertPool()
			if err != nil || pool == nil {
				pool = x509.NewCertPool()
			}
			if !pool.AppendCertsFromPEM([]byte(cfg.ExtraRootCAs)) {
				return nil, fmt.Errorf("aws: ExtraRootCAs: no PEM certificate found: %w", errdefs.ErrInvalidArgument)
			}
			tc.RootCAs = pool
		}
		timeout := cfg.Timeout
		if timeout <= 0 {
			timeout = DefaultTimeout
		}
		// No proxy from the environment: the agent's environment is
		// host-controlled.
		p.hc = &http.Client{Timeout: timeout, Transport: &http.Transport{
			TLSClientConfig: tc, ForceAttemptHTTP2: true, MaxIdleConns: 4,
			IdleConnTimeout: 90 * time.Second, TLSHandshakeTimeout: 10 * time.Second,
		}}
	}
	return p, nil
}

// settings is the reference's AwsProviderSettings.
type settings struct {
	Region *string `json:"region"`
}

// Client returns a client for region.
func (p *Provider) Client(region string) (*Client, error) {
	if !regionRE.MatchString(region) {
		return nil, fmt.Errorf("aws: provider_settings.region %q: want an AWS region such as us-east-1: %w", kms.Clip(region), errdefs.ErrInvalidArgument)
	}
	return &Client{p: p, region: region}, nil
}

func (p *Provider) fromSettings(s kms.Settings) (*Client, error) {
	var st settings
	if err := kms.DecodeMembers("provider_settings", s, &st); err != nil {
		return nil, err
	}
	if st.Region == nil {
		return nil, fmt.Errorf("aws: provider_settings.region: missing: %w", errdefs.ErrInvalidArgument)
	}
	return p.Client(*st.Region)
}

// Decrypter returns the KMS client for the settings' region.
func (p *Provider) Decrypter(_ context.Context, s kms.Settings) (kms.Decrypter, error) {
	return p.fromSettings(s)
}

// SecretGetter returns the Secrets Manager client for the settings' region.
func (p *Provider) SecretGetter(_ context.Context, s kms.Settings) (kms.SecretGetter, error) {
	return p.fromSettings(s)
}

// Client calls AWS KMS and Secrets Manager in one region.
type Client struct {
	p      *Provider
	region string
}

var (
	_ kms.Decrypter    = (*Client)(nil)
	_ kms.SecretGetter = (*Client)(nil)
)

// cryptAnnotations is the reference's AwsCryptAnnotations.
type cryptAnnotations struct {
	EncryptionContext map[string]string `json:"encryption_context"`
}

// secretAnnotations is the reference's AwsSecretAnnotations.
type secretAnnotations struct {
	VersionID    string `json:"version_id"`
	VersionStage string `json:"version_stage"`
}

type decryptRequest struct {
	CiphertextBlob    []byte            `json:"CiphertextBlob"`
	KeyID             string            `json:"KeyId,omitempty"`
	EncryptionContext map[string]string `json:"EncryptionContext,omitempty"`
}

type decryptResponse struct {
	Plaintext []byte `json:"Plaintext"`
}

// Decrypt calls KMS Decrypt for ciphertext with keyID (a key id, ARN or
// alias; may be empty for symmetric keys) and the annotations'
// encryption_context.
func (c *Client) Decrypt(ctx context.Context, ciphertext []byte, keyID string, a kms.Annotations) ([]byte, error) {
	var ann cryptAnnotations
	if err := kms.DecodeMembers("annotations", a, &ann); err != nil {
		return nil, fmt.Errorf("aws kms Decrypt: %w", err)
	}
	if len(ciphertext) == 0 || len(ciphertext) > 6144 {
		return nil, fmt.Errorf("aws kms Decrypt: encrypted_key: want 1..6144 bytes, got %d: %w", len(ciphertext), errdefs.ErrInvalidArgument)
	}
	body, err := json.Marshal(decryptRequest{CiphertextBlob: ciphertext, KeyID: keyID, EncryptionContext: ann.EncryptionContext})
	if err != nil {
		return nil, fmt.Errorf("aws kms Decrypt: encoding request: %w", errdefs.ErrInvalidArgument)
	}
	raw, err := c.call(ctx, ServiceKMS, "Decrypt", TargetDecrypt, body, kms.Clip(keyID))
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	var resp decryptResponse
	if err := json.Unmarshal(raw, &resp); err != nil || len(resp.Plaintext) == 0 {
		clear(resp.Plaintext)
		return nil, fmt.Errorf("aws kms Decrypt: response carries no Plaintext: %w", errdefs.ErrUnknown)
	}
	return resp.Plaintext, nil
}

type getSecretRequest struct {
	SecretID     string `json:"SecretId"`
	VersionID    string `json:"VersionId,omitempty"`
	VersionStage string `json:"VersionStage,omitempty"`
}

type getSecretResponse struct {
	SecretString *string `json:"SecretString"`
	SecretBinary []byte  `json:"SecretBinary"`
}

// GetSecret calls Secrets Manager GetSecretValue for name (a secret name or
// ARN) with the annotations' version_id and version_stage, returning
// SecretString, else SecretBinary.
func (c *Client) GetSecret(ctx context.Context, name string, a kms.Annotations) ([]byte, error) {
	var ann secretAnnotations
	if err := kms.DecodeMembers("annotations", a, &ann); err != nil {
		return nil, fmt.Errorf("aws secretsmanager GetSecretValue: %w", err)
	}
	if name == "" || len(name) > 2048 {
		return nil, fmt.Errorf("aws secretsmanager GetSecretValue: name: want 1..2048 characters: %w", errdefs.ErrInvalidArgument)
	}
	body, err := json.Marshal(getSecretRequest{SecretID: name, VersionID: ann.VersionID, VersionStage: ann.VersionStage})
	if err != nil {
		return nil, fmt.Errorf("aws secretsmanager GetSecretValue: encoding request: %w", errdefs.ErrInvalidArgument)
	}
	raw, err := c.call(ctx, ServiceSecrets, "GetSecretValue", TargetGetSecretValue, body, kms.Clip(name))
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	var resp getSecretResponse
	if err := json.Unmarshal(raw, &resp); err != nil {
		return nil, fmt.Errorf("aws secretsmanager GetSecretValue: malformed response: %w", errdefs.ErrUnknown)
	}
	if resp.SecretString != nil {
		return []byte(*resp.SecretString), nil
	}
	if resp.SecretBinary != nil {
		return resp.SecretBinary, nil
	}
	return nil, fmt.Errorf("aws secretsmanager GetSecretValue: secret has neither SecretString nor SecretBinary: %w", errdefs.ErrNotFound)
}

// endpoint returns the URL for service in the client's region.
func (c *Client) endpoint(service string) *url.URL {
	if service == ServiceKMS && c.p.kmsEP != nil {
		return c.p.kmsEP
	}
	if service == ServiceSecrets && c.p.smEP != nil {
		return c.p.smEP
	}
	suffix := ".amazonaws.com"
	if strings.HasPrefix(c.region, "cn-") {
		suffix = ".amazonaws.com.cn"
	}
	return &url.URL{Scheme: "https", Host: service + "." + c.region + suffix, Path: "/"}
}

// call signs and posts body, retrying transport errors, throttling and 5xx
// a bounded number of times, and returns the 200 response body.
func (c *Client) call(ctx context.Context, service, op, target string, body []byte, subject string) ([]byte, error) {
	name := "aws " + service + " " + op
	ep := c.endpoint(service)
	var last error
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		if attempt > 1 {
			d := c.p.backoff << (attempt - 2)
			d += rand.N(d/2 + 1)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("%s: %w (last error: %w)", name, ctx.Err(), last)
			case <-t.C:
			}
		}
		out, retry, err := c.once(ctx, ep, service, target, body)
		c.p.log.DebugContext(ctx, "aws call", "op", service+"."+op, "region", c.region, "subject", subject, "attempt", attempt, "ok", err == nil)
		if err == nil {
			return out, nil
		}
		last = fmt.Errorf("%s at %s: %w", name, ep.Host, err)
		if !retry || ctx.Err() != nil {
			break
		}
	}
	return nil, last
}

// once performs one signed request.
func (c *Client) once(ctx context.Context, ep *url.URL, service, target string, body []byte) ([]byte, bool, error) {
	creds, err := c.p.creds.Credentials(ctx)
	if err != nil {
		return nil, false, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.String(), bytes.NewReader(body))
	if err != nil {
		return nil, false, fmt.Errorf("building request: %w", errdefs.ErrInvalidArgument)
	}
	req.Header.Set("Content-Type", ContentType)
	req.Header.Set("X-Amz-Target", target)
	signRequest(req, body, creds, c.region, service, c.p.now())
	resp, err := c.p.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, fmt.Errorf("%w: %w", ctx.Err(), errdefs.ErrUnavailable)
		}
		// The *url.Error names the URL only; no body or header is included.
		return nil, true, fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	}
	defer resp.Body.Close()
	raw, retry, err := kms.ReadResponse(resp, maxResponse)
	if err != nil {
		return nil, retry, err
	}
	if resp.StatusCode == http.StatusOK {
		return raw, false, nil
	}
	return nil, retryable(resp.StatusCode), awsError(resp, raw)
}

func retryable(status int) bool {
	return status == http.StatusTooManyRequests || status >= 500
}

// apiError is AWS's JSON error body.
type apiError struct {
	Type     string `json:"__type"`
	Message  string `json:"message"`
	MessageU string `json:"Message"`
}

// awsError turns a non-200 response into an error naming the status and
// AWS's error type and message (error bodies carry no secret material;
// they are still clipped and sanitized).
func awsError(resp *http.Response, raw []byte) error {
	var e apiError
	_ = json.Unmarshal(raw, &e)
	typ := e.Type
	if typ == "" {
		typ = resp.Header.Get("X-Amzn-Errortype")
	}
	if i := strings.LastIndexByte(typ, '#'); i >= 0 {
		typ = typ[i+1:]
	}
	typ, _, _ = strings.Cut(typ, ":")
	msg := e.Message
	if msg == "" {
		msg = e.MessageU
	}
	text := fmt.Sprintf("HTTP %d", resp.StatusCode)
	if typ != "" {
		text += " " + kms.Clip(typ)
	}
	if msg != "" {
		text += ": " + kms.Clip(msg)
	}
	return fmt.Errorf("%s: %w", text, errorClass(resp.StatusCode, typ))
}

// errorClass maps an AWS error to an errdefs class.
func errorClass(status int, typ string) error {
	switch typ {
	case "NotFoundException", "ResourceNotFoundException":
		return errdefs.ErrNotFound
	case "AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException",
		"IncompleteSignatureException", "MissingAuthenticationTokenException", "ExpiredTokenException",
		"InvalidClientTokenId", "SignatureDoesNotMatch":
		return errdefs.ErrPermissionDenied
	case "InvalidCiphertextException", "IncorrectKeyException", "InvalidKeyUsageException",
		"InvalidParameterException", "InvalidRequestException", "ValidationException",
		"InvalidGrantTokenException", "DecryptionFailure":
		return errdefs.ErrInvalidArgument
	case "DisabledException", "KMSInvalidStateException", "KeyUnavailableException":
		return errdefs.ErrFailedPrecondition
	case "ThrottlingException", "LimitExceededException", "DependencyTimeoutException",
		"KMSInternalException", "InternalServiceError", "InternalFailure", "ServiceUnavailable":
		return errdefs.ErrUnavailable
	}
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return errdefs.ErrPermissionDenied
	case status == http.StatusNotFound:
		return errdefs.ErrNotFound
	case status == http.StatusTooManyRequests || status >= 500:
		return errdefs.ErrUnavailable
	case status >= 400:
		return errdefs.ErrInvalidArgument
	}
	return errdefs.ErrUnknown
}
