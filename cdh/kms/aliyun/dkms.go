package aliyun

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
)

// Wire constants of the KMS instance API.
const (
	InstanceAPIVersion      = "dkms-gcs-0.2"
	InstanceSignatureMethod = "RSA_PKCS1_SHA_256"
	ProtobufContentType     = "application/x-protobuf"
	// HeaderAccessKeyID is spelled with three c's on the wire.
	HeaderAccessKeyID = "x-kms-acccesskeyid"
	// DecryptAlgorithm is the algorithm the reference always sends.
	DecryptAlgorithm = "AES_GCM"
	userAgent        = "cova-cdh"

	maxCiphertext = 8 << 10
	maxIV         = 64
	maxName       = 1024
)

// InstanceClient calls one KMS instance with one client key
// (client_type "client_key").
type InstanceClient struct {
	p           *Provider
	instanceID  string
	clientKeyID string
	ep          *url.URL
}

var (
	_ kms.Decrypter    = (*InstanceClient)(nil)
	_ kms.SecretGetter = (*InstanceClient)(nil)
)

// InstanceClient returns a client for the KMS instance instanceID with the
// client key clientKeyID. Both are validated: the instance id becomes a
// DNS label, the client key id a file name.
func (p *Provider) InstanceClient(instanceID, clientKeyID string) (*InstanceClient, error) {
	if !regionRE.MatchString(instanceID) {
		return nil, fmt.Errorf("aliyun: provider_settings.kms_instance_id %q: want a KMS instance id such as kst-abc123 (a DNS label): %w", kms.Clip(instanceID), errdefs.ErrInvalidArgument)
	}
	if !idRE.MatchString(clientKeyID) {
		return nil, fmt.Errorf("aliyun: provider_settings.client_key_id %q: want letters, digits, '.', '_' or '-': %w", kms.Clip(clientKeyID), errdefs.ErrInvalidArgument)
	}
	ep := p.instanceEP
	if ep == nil {
		ep = &url.URL{Scheme: "https", Host: instanceID + ".cryptoservice.kms.aliyuncs.com", Path: "/"}
	}
	return &InstanceClient{p: p, instanceID: instanceID, clientKeyID: clientKeyID, ep: ep}, nil
}

// cryptAnnotations is the reference's AliCryptAnnotations.
type cryptAnnotations struct {
	IV *string `json:"iv"`
}

// secretAnnotations is the reference's AliSecretAnnotations.
type secretAnnotations struct {
	VersionStage string `json:"version_stage"`
	VersionID    string `json:"version_id"`
}

// Decrypt calls the instance's Decrypt for ciphertext with keyID and the
// annotations' iv.
func (c *InstanceClient) Decrypt(ctx context.Context, ciphertext []byte, keyID string, a kms.Annotations) ([]byte, error) {
	const op = "aliyun kms-instance Decrypt"
	var ann cryptAnnotations
	if err := kms.DecodeMembers("annotations", a, &ann); err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	if ann.IV == nil || *ann.IV == "" {
		return nil, fmt.Errorf("%s: annotations.iv: missing: %w", op, errdefs.ErrInvalidArgument)
	}
	iv, err := base64.StdEncoding.DecodeString(*ann.IV)
	if err != nil || len(iv) > maxIV {
		return nil, fmt.Errorf("%s: annotations.iv: want base64 of at most %d bytes: %w", op, maxIV, errdefs.ErrInvalidArgument)
	}
	if len(ciphertext) == 0 || len(ciphertext) > maxCiphertext {
		return nil, fmt.Errorf("%s: encrypted_key: want 1..%d bytes, got %d: %w", op, maxCiphertext, len(ciphertext), errdefs.ErrInvalidArgument)
	}
	if len(keyID) > maxName || !utf8.ValidString(keyID) {
		return nil, fmt.Errorf("%s: key_id: want at most %d bytes of UTF-8: %w", op, maxName, errdefs.ErrInvalidArgument)
	}
	req := decryptRequest{CiphertextBlob: ciphertext, KeyID: keyID, Algorithm: DecryptAlgorithm, Iv: iv}
	raw, err := c.call(ctx, op, "Decrypt", req.marshal(), kms.Clip(keyID))
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	var resp decryptResponse
	if err := resp.unmarshal(raw); err != nil {
		clear(resp.Plaintext)
		return nil, fmt.Errorf("%s at %s: malformed DecryptResponse (%v): %w", op, c.ep.Host, err, errdefs.ErrUnknown)
	}
	if len(resp.Plaintext) == 0 {
		return nil, fmt.Errorf("%s at %s: response carries no Plaintext: %w", op, c.ep.Host, errdefs.ErrUnknown)
	}
	return resp.Plaintext, nil
}

// GetSecret calls the instance's GetSecretValue for name with the
// annotations' version_stage and version_id and returns SecretData.
func (c *InstanceClient) GetSecret(ctx context.Context, name string, a kms.Annotations) ([]byte, error) {
	const op = "aliyun kms-instance GetSecretValue"
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
	req := getSecretValueRequest{SecretName: name, VersionStage: ann.VersionStage, VersionID: ann.VersionID, FetchExtendedConfig: true}
	raw, err := c.call(ctx, op, "GetSecretValue", req.marshal(), kms.Clip(name))
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	var resp getSecretValueResponse
	if err := resp.unmarshal(raw); err != nil {
		return nil, fmt.Errorf("%s at %s: malformed GetSecretValueResponse (%v): %w", op, c.ep.Host, err, errdefs.ErrUnknown)
	}
	if resp.SecretData == nil {
		return nil, fmt.Errorf("%s at %s: response carries no SecretData: %w", op, c.ep.Host, errdefs.ErrNotFound)
	}
	return []byte(*resp.SecretData), nil
}

// call loads the instance CA and the client key and posts body as apiName,
// retrying as Provider.retry does; it returns the 2xx response body.
func (c *InstanceClient) call(ctx context.Context, op, apiName string, body []byte, subject string) ([]byte, error) {
	ca, err := c.p.creds.InstanceCA(ctx, c.instanceID)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	hc, err := c.p.instanceClient(ca, c.instanceID)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	defer hc.CloseIdleConnections()
	key, err := c.p.creds.ClientKey(ctx, c.clientKeyID)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", op, err)
	}
	return c.p.retry(ctx, op, c.ep.Host, subject, func(ctx context.Context) ([]byte, bool, error) {
		return c.once(ctx, hc, key, apiName, body)
	})
}

// once performs one signed request.
func (c *InstanceClient) once(ctx context.Context, hc *http.Client, key *ClientKey, apiName string, body []byte) ([]byte, bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.ep.String(), bytes.NewReader(body))
	if err != nil {
		return nil, false, fmt.Errorf("building request: %w", errdefs.ErrInvalidArgument)
	}
	if err := signInstanceRequest(req, body, key, apiName, c.p.now()); err != nil {
		return nil, false, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, false, fmt.Errorf("%w: %w", ctx.Err(), errdefs.ErrUnavailable)
		}
		// The *url.Error names the URL only; no body or header is included.
		// A server the instance CA does not vouch for is not retried.
		var certErr *tls.CertificateVerificationError
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
	var e apiError
	if len(raw) == 0 || e.unmarshal(raw) != nil {
		// Not the protobuf Error (a proxy page, say): status only.
		e = apiError{}
	}
	return nil, resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 || retryableCode(e.ErrorCode),
		remoteError(resp.StatusCode, e.ErrorCode, e.ErrorMessage, e.RequestID)
}

// signInstanceRequest sets the instance API headers on req and signs
// them with key.
func signInstanceRequest(req *http.Request, body []byte, key *ClientKey, apiName string, now time.Time) error {
	sum := sha256.Sum256(body)
	h := req.Header
	h.Set("Accept", ProtobufContentType)
	h.Set("Date", now.UTC().Format(http.TimeFormat))
	h.Set("User-Agent", userAgent)
	h.Set("x-kms-apiversion", InstanceAPIVersion)
	h.Set("x-kms-apiname", apiName)
	h.Set("x-kms-signaturemethod", InstanceSignatureMethod)
	h.Set(HeaderAccessKeyID, key.KeyID)
	h.Set("Content-Type", ProtobufContentType)
	h.Set("Content-Sha256", strings.ToUpper(hex.EncodeToString(sum[:])))
	digest := sha256.Sum256([]byte(instanceStringToSign(req.Method, h)))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key.Key, crypto.SHA256, digest[:])
	if err != nil {
		return fmt.Errorf("signing request: %w", errdefs.ErrInvalidArgument)
	}
	h.Set("Authorization", "Bearer "+base64.StdEncoding.EncodeToString(sig))
	return nil
}

// instanceStringToSign builds the instance API's string to sign:
//
//	<method>\n<Content-Sha256>\n<Content-Type>\n<Date>\n<canonical headers><resource>
//
// where the canonical headers are every x-kms-* header, names lower-cased
// and sorted, as "name:value\n" with the value trimmed, and the resource is
// "/" (requests carry no query).
func instanceStringToSign(method string, h http.Header) string {
	var b strings.Builder
	b.WriteString(method + "\n")
	b.WriteString(h.Get("Content-Sha256") + "\n")
	b.WriteString(h.Get("Content-Type") + "\n")
	b.WriteString(h.Get("Date") + "\n")
	var names []string
	for k := range h {
		if lk := strings.ToLower(k); strings.HasPrefix(lk, "x-kms-") {
			names = append(names, k)
		}
	}
	sort.Slice(names, func(i, j int) bool { return strings.ToLower(names[i]) < strings.ToLower(names[j]) })
	for _, k := range names {
		b.WriteString(strings.ToLower(k) + ":" + strings.TrimSpace(h.Get(k)) + "\n")
	}
	b.WriteString("/")
	return b.String()
}
