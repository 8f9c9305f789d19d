package registry

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
)

// secretMarker is a password that must never show up in errors or logs.
const secretMarker = "pw-Zq7xMARKER"

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// assertNoSecret fails if s contains the marker or a recognisable part of it.
func assertNoSecret(t *testing.T, what, s string) {
	t.Helper()
	for _, part := range []string{secretMarker, "Zq7x", "MARKER", b64("alice:" + secretMarker)} {
		if strings.Contains(s, part) {
			t.Fatalf("%s leaks the secret (%q): %s", what, part, s)
		}
	}
}

// TestAuthFileErrorsHideSecrets: malformed auth files are refused with
// errors that name the entry but never quote its content.
func TestAuthFileErrorsHideSecrets(t *testing.T) {
	tests := []struct{ name, doc string }{
		{"bare word", `{"auths":{"r.io":{"auth":` + secretMarker + `}}}`},
		{"trailing garbage", `{"auths":{"r.io":{"auth":"` + b64("alice:"+secretMarker) + `"}}}` + secretMarker},
		{"number for auth", `{"auths":{"r.io":{"password":"` + secretMarker + `","auth":12}}}`},
		{"not base64", `{"auths":{"r.io":{"auth":"` + secretMarker + `!!"}}}`},
		{"no colon", `{"auths":{"r.io":{"auth":"` + b64(secretMarker) + `"}}}`},
		{"empty user", `{"auths":{"r.io":{"auth":"` + b64(":"+secretMarker) + `"}}}`},
		{"password without user", `{"auths":{"r.io":{"password":"` + secretMarker + `"}}}`},
		{"truncated", `{"auths":{"r.io":{"password":"` + secretMarker},
		{"array", `["` + secretMarker + `"]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAuthFile([]byte(tc.doc))
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("got %v, want ErrInvalidArgument", err)
			}
			assertNoSecret(t, "error", err.Error())
		})
	}
}

// TestCredentialFormatting: printing or logging a Credential shows no
// password.
func TestCredentialFormatting(t *testing.T) {
	c := Credential{Username: "alice", Password: secretMarker}
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%q"} {
		s := fmt.Sprintf(f, c)
		assertNoSecret(t, f, s)
		if !strings.Contains(s, "alice") {
			t.Fatalf("%s: %q lost the user name", f, s)
		}
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "cred", c)
	assertNoSecret(t, "slog", buf.String())
}

// TestAuthSecretsNotLogged runs the auth flows that fail and succeed with a
// debug logger and checks neither the log nor the errors carry the
// password.
func TestAuthSecretsNotLogged(t *testing.T) {
	body := manifestFor(oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: oci.FromBytes(nil), Size: 0})
	for _, tc := range []struct {
		name, user string
		bearer     bool
		wantErr    error
	}{
		{"basic accepted", "alice", false, nil},
		{"basic refused", "mallory", false, errdefs.ErrUnauthenticated},
		{"token accepted", "alice", true, nil},
		{"token refused", "mallory", true, errdefs.ErrUnauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, false)
			f.addManifest("v1", oci.MediaTypeOCIManifest, body)
			f.hook = func(w http.ResponseWriter, r *http.Request, n int) bool {
				u, p, ok := r.BasicAuth()
				good := ok && u == "alice" && p == secretMarker
				if tc.bearer {
					if r.URL.Path == "/token" {
						if !good {
							w.WriteHeader(http.StatusUnauthorized)
							fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"bad user"}]}`)
							return true
						}
						fmt.Fprint(w, `{"token":"tok"}`)
						return true
					}
					if r.Header.Get("Authorization") != "Bearer tok" {
						w.Header().Set("Www-Authenticate", fmt.Sprintf(`Bearer realm="http://%s/token",service="fake"`, f.host()))
						w.WriteHeader(http.StatusUnauthorized)
						return true
					}
					return false
				}
				if !good {
					w.Header().Set("Www-Authenticate", `Basic realm="reg"`)
					w.WriteHeader(http.StatusUnauthorized)
					return true
				}
				return false
			}
			af, err := ParseAuthFile([]byte(fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, f.host(), b64(tc.user+":"+secretMarker))))
			if err != nil {
				t.Fatal(err)
			}
			var logs bytes.Buffer
			c, _ := testClient(t, Config{Registries: insecure(f.host()), Auth: af,
				Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
			_, _, err = c.Resolve(context.Background(), mustRef(t, f.host()+"/test/x:v1"))
			if tc.wantErr == nil && err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				assertNoSecret(t, "error", err.Error())
			}
			assertNoSecret(t, "log", logs.String())
		})
	}
}

// TestAuthLoader: credentials are loaded only when a registry asks for
// them, once, and a failed load fails that pull with its class and is
// retried on the next.
func TestAuthLoader(t *testing.T) {
	body := manifestFor(oci.Descriptor{MediaType: oci.MediaTypeOCIConfig, Digest: oci.FromBytes(nil), Size: 0})
	open := newFake(t, false)
	open.addManifest("v1", oci.MediaTypeOCIManifest, body)
	locked := newFake(t, false)
	locked.addManifest("v1", oci.MediaTypeOCIManifest, body)
	locked.hook = func(w http.ResponseWriter, r *http.Request, n int) bool {
		if u, p, ok := r.BasicAuth(); !ok || u != "alice" || p != secretMarker {
			w.Header().Set("Www-Authenticate", `Basic realm="reg"`)
			w.WriteHeader(http.StatusUnauthorized)
			return true
		}
		return false
	}
	var calls atomic.Int32
	var fail atomic.Bool
	fail.Store(true)
	loader := func(ctx context.Context) (*AuthFile, error) {
		calls.Add(1)
		if fail.Load() {
			return nil, fmt.Errorf("kbs down: %w", errdefs.ErrUnavailable)
		}
		return ParseAuthFile([]byte(fmt.Sprintf(`{"auths":{%q:{"username":"alice","password":%q}}}`, locked.host(), secretMarker)))
	}
	c, _ := testClient(t, Config{Registries: insecure(open.host(), locked.host()), AuthLoader: loader})
	ctx := context.Background()

	if _, _, err := c.Resolve(ctx, mustRef(t, open.host()+"/test/x:v1")); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("anonymous pull loaded credentials %d times", n)
	}
	_, _, err := c.Resolve(ctx, mustRef(t, locked.host()+"/test/x:v1"))
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("failed load: got %v, want ErrUnavailable", err)
	}
	fail.Store(false)
	for i := 0; i < 2; i++ {
		if _, _, err := c.Resolve(ctx, mustRef(t, locked.host()+"/test/x:v1")); err != nil {
			t.Fatalf("resolve %d: %v", i, err)
		}
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("loader called %d times, want 2 (one failure, then kept)", n)
	}
}
