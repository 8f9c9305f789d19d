package azvtpm

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// IMDS endpoints (the link-local Azure Instance Metadata Service).
const (
	DefaultIMDSBase = "http://169.254.169.254"
	// CertificationPath serves the VCEK and AMD chain (THIM), PEM in JSON.
	CertificationPath = "/metadata/THIM/amd/certification"
	// TDQuotePath turns a TDREPORT into a TD quote.
	TDQuotePath = "/acc/tdquote"
)

// maxIMDSResponse bounds an IMDS response body.
const maxIMDSResponse = 1 << 20

// Certificates is the THIM certification document.
type Certificates struct {
	// VCEK is the PEM VCEK certificate ("vcekCert").
	VCEK string `json:"vcekCert"`
	// Chain is the PEM ASK and ARK ("certificateChain").
	Chain string `json:"certificateChain"`
}

// IMDSClient talks to Azure IMDS over HTTP.
type IMDSClient struct {
	// HTTP is the client; a client with a 30 s timeout when nil.
	HTTP *http.Client
	// Base is the service root; DefaultIMDSBase when empty.
	Base string
}

func (c *IMDSClient) do(ctx context.Context, method, path string, body []byte) ([]byte, int, error) {
	base := c.Base
	if base == "" {
		base = DefaultIMDSBase
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, base+path, rd)
	if err != nil {
		return nil, 0, fmt.Errorf("imds %s: %w", path, err)
	}
	req.Header.Set("Metadata", "true")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json")
	}
	rsp, err := hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("imds %s: %w: %w", path, err, errdefs.ErrUnavailable)
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(rsp.Body, maxIMDSResponse+1))
	if err != nil {
		return nil, rsp.StatusCode, fmt.Errorf("imds %s: read response: %w", path, err)
	}
	if len(b) > maxIMDSResponse {
		return nil, rsp.StatusCode, fmt.Errorf("imds %s: response larger than %d bytes: %w", path, maxIMDSResponse, errdefs.ErrInvalidArgument)
	}
	return b, rsp.StatusCode, nil
}

// Certificates fetches the VCEK and AMD chain (GET with "Metadata: true").
func (c *IMDSClient) Certificates(ctx context.Context) (*Certificates, error) {
	b, status, err := c.do(ctx, http.MethodGet, CertificationPath, nil)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("imds %s: status %d: %w", CertificationPath, status, errdefs.ErrUnavailable)
	}
	var certs Certificates
	if err := json.Unmarshal(b, &certs); err != nil {
		return nil, fmt.Errorf("imds %s: %v: %w", CertificationPath, err, errdefs.ErrInvalidArgument)
	}
	return &certs, nil
}

// TDQuote asks the TD quote service for a quote over a TDREPORT: it posts
// {"report": <base64>} — standard base64 first, then unpadded base64url
// when that is refused, as Azure's guest attestation SDK does — and decodes
// the "quote" field (standard base64, else unpadded base64url).
func (c *IMDSClient) TDQuote(ctx context.Context, tdReport []byte) ([]byte, error) {
	if len(tdReport) < TDReportSize {
		return nil, fmt.Errorf("td report: %d bytes, need %d: %w", len(tdReport), TDReportSize, errdefs.ErrInvalidArgument)
	}
	rep := tdReport[:TDReportSize]
	var statuses []int
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawURLEncoding} {
		body, _ := json.Marshal(map[string]string{"report": enc.EncodeToString(rep)})
		b, status, err := c.do(ctx, http.MethodPost, TDQuotePath, body)
		if err != nil {
			return nil, err
		}
		if status < 200 || status > 299 {
			statuses = append(statuses, status)
			continue
		}
		var rsp struct {
			Quote *string `json:"quote"`
		}
		if err := json.Unmarshal(b, &rsp); err != nil || rsp.Quote == nil {
			return nil, fmt.Errorf("imds %s: response without a quote: %w", TDQuotePath, errdefs.ErrInvalidArgument)
		}
		if q, err := base64.StdEncoding.DecodeString(*rsp.Quote); err == nil {
			return q, nil
		}
		if q, err := base64.RawURLEncoding.DecodeString(*rsp.Quote); err == nil {
			return q, nil
		}
		return nil, fmt.Errorf("imds %s: quote: not base64: %w", TDQuotePath, errdefs.ErrInvalidArgument)
	}
	return nil, fmt.Errorf("imds %s: refused (status %v): %w", TDQuotePath, statuses, errdefs.ErrUnavailable)
}

// PEMCertificateToDER decodes a single PEM CERTIFICATE (surrounding
// whitespace allowed) to DER.
func PEMCertificateToDER(s string) ([]byte, error) {
	blk, rest := pem.Decode([]byte(s))
	if blk == nil {
		return nil, fmt.Errorf("vcekCert: not PEM: %w", errdefs.ErrInvalidArgument)
	}
	if blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("vcekCert: PEM label %q, want CERTIFICATE: %w", blk.Type, errdefs.ErrInvalidArgument)
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, fmt.Errorf("vcekCert: data after the certificate: %w", errdefs.ErrInvalidArgument)
	}
	return blk.Bytes, nil
}
