package azvtpm

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/containerd/errdefs"
)

func TestIMDSCertificates(t *testing.T) {
	der := []byte{0x30, 0x03, 0x02, 0x01, 0x05}
	vcek := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != CertificationPath || r.Header.Get("Metadata") != "true" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"vcekCert": vcek, "certificateChain": "chain", "tcbm": "x"})
	}))
	defer srv.Close()
	c := &IMDSClient{HTTP: srv.Client(), Base: srv.URL}
	got, err := c.Certificates(context.Background())
	if err != nil || got.VCEK != vcek || got.Chain != "chain" {
		t.Fatalf("Certificates = %+v, %v", got, err)
	}
	if d, err := PEMCertificateToDER(got.VCEK); err != nil || !bytes.Equal(d, der) {
		t.Fatalf("DER %x, %v", d, err)
	}
	for _, tc := range []struct{ name, pem string }{
		{"not-pem", "garbage"},
		{"wrong-label", string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))},
		{"two-blocks", vcek + vcek},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := PEMCertificateToDER(tc.pem); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	bad := &IMDSClient{HTTP: srv.Client(), Base: srv.URL + "/nothing"}
	if _, err := bad.Certificates(context.Background()); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("404: %v", err)
	}
}

func TestIMDSTDQuote(t *testing.T) {
	report := bytes.Repeat([]byte{0xfb}, TDReportSize+16) // trailing bytes are not sent
	quote := []byte("quote bytes \xff\xfe")
	for _, tc := range []struct {
		name      string
		acceptStd bool
		encode    func([]byte) string
		wantCalls int
	}{
		{"std-accepted", true, base64.StdEncoding.EncodeToString, 1},
		{"url-fallback", false, base64.RawURLEncoding.EncodeToString, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls++
				var body struct{ Report string }
				if r.Method != http.MethodPost || r.URL.Path != TDQuotePath || r.Header.Get("Metadata") != "true" ||
					r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&body) != nil {
					http.Error(w, "bad request", http.StatusBadRequest)
					return
				}
				want := base64.StdEncoding.EncodeToString(report[:TDReportSize])
				if !tc.acceptStd {
					want = base64.RawURLEncoding.EncodeToString(report[:TDReportSize])
				}
				if body.Report != want {
					http.Error(w, "wrong encoding", http.StatusBadRequest)
					return
				}
				_ = json.NewEncoder(w).Encode(map[string]string{"quote": tc.encode(quote)})
			}))
			defer srv.Close()
			c := &IMDSClient{HTTP: srv.Client(), Base: srv.URL}
			got, err := c.TDQuote(context.Background(), report)
			if err != nil || !bytes.Equal(got, quote) || calls != tc.wantCalls {
				t.Fatalf("TDQuote = %q, %v after %d calls", got, err, calls)
			}
		})
	}
	c := &IMDSClient{}
	if _, err := c.TDQuote(context.Background(), make([]byte, 10)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("short report: %v", err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no", http.StatusInternalServerError)
	}))
	defer srv.Close()
	c = &IMDSClient{HTTP: srv.Client(), Base: srv.URL}
	if _, err := c.TDQuote(context.Background(), report); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("refused: %v", err)
	}
}
