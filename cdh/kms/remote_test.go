package kms

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestReadCredentialFile(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "secret.json")
	for name, data := range map[string][]byte{"ok.json": []byte(`{"k":"v"}`), "big.json": bytes.Repeat([]byte("x"), MaxCredentialFile+1)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(outside, []byte("outside"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "link.json")); err != nil {
		t.Fatal(err)
	}
	if b, err := ReadCredentialFile("test", dir, "ok.json"); err != nil || string(b) != `{"k":"v"}` {
		t.Fatalf("ok.json: %q, %v", b, err)
	}
	for _, tc := range []struct {
		dir, name string
		is        func(error) bool
		text      string
	}{
		{dir, "none.json", errdefs.IsFailedPrecondition, "[[credentials]]"},
		{filepath.Join(dir, "nodir"), "ok.json", errdefs.IsFailedPrecondition, "is missing"},
		{dir, "big.json", errdefs.IsInvalidArgument, "larger than"},
		{dir, "link.json", func(err error) bool { return err != nil }, "link.json"},
		{dir, "../" + filepath.Base(dir) + "/ok.json", func(err error) bool { return err != nil }, "ok.json"},
	} {
		b, err := ReadCredentialFile("test", tc.dir, tc.name)
		if !tc.is(err) || !strings.Contains(err.Error(), tc.text) || b != nil {
			t.Errorf("%s: %q, %v; want an error with %q", tc.name, b, err, tc.text)
		}
		if err != nil && strings.Contains(err.Error(), "outside") {
			t.Errorf("%s: the error quotes the content: %v", tc.name, err)
		}
	}
}

func TestParseEndpoint(t *testing.T) {
	for in, want := range map[string]string{"": "", "https://kms.example": "https://kms.example/", "http://127.0.0.1:8080/": "http://127.0.0.1:8080/", "http://localhost:1": "http://localhost:1/"} {
		u, err := ParseEndpoint("p", "F", in)
		got := ""
		if u != nil {
			got = u.String()
		}
		if err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"http://kms.example", "ftp://h", "https://u:p@h", "https://h/path", "https://h?x=1", "https://h#f", "https://"} {
		if _, err := ParseEndpoint("p", "F", bad); !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "p: F") {
			t.Errorf("%q: %v, want invalid argument naming the field", bad, err)
		}
	}
	if !Token("AKIA-x_y.z/+=") || Token("a b") || Token("a\x7f") || Token("é") {
		t.Error("Token")
	}
}

type failingBody struct{ n int }

func (f *failingBody) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errors.New("connection reset")
	}
	k := copy(p, bytes.Repeat([]byte("x"), min(len(p), f.n)))
	f.n -= k
	return k, nil
}

func (f *failingBody) Close() error { return nil }

func TestReadResponse(t *testing.T) {
	resp := func(body io.ReadCloser) *http.Response { return &http.Response{StatusCode: 502, Body: body} }
	if raw, retry, err := ReadResponse(resp(io.NopCloser(strings.NewReader("12345678"))), 8); err != nil || retry || string(raw) != "12345678" {
		t.Fatalf("at the limit: %q %v %v", raw, retry, err)
	}
	raw, retry, err := ReadResponse(resp(io.NopCloser(strings.NewReader("123456789"))), 8)
	if raw != nil || retry || !errdefs.IsUnknown(err) || !strings.Contains(err.Error(), "HTTP 502: response larger than 8 bytes") {
		t.Fatalf("over the limit: %q %v %v", raw, retry, err)
	}
	raw, retry, err = ReadResponse(resp(&failingBody{n: 3}), 8)
	if raw != nil || !retry || !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "HTTP 502: reading response") {
		t.Fatalf("failed read: %q %v %v", raw, retry, err)
	}
}
