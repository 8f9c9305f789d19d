package imagepull

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestAuthFromResource(t *testing.T) {
	const secret = "pw-Zq7xMARKER"
	good := []byte(`{"auths":{"quay.io/org":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("alice:"+secret)) + `"},` +
		`"https://index.docker.io/v1/":{"username":"bob","password":"` + secret + `"}}}`)
	bad := []byte(`{"auths":{"quay.io":{"auth":"` + secret + `"}}}`)
	dir := t.TempDir()
	goodPath := filepath.Join(dir, "auth.json")
	badPath := filepath.Join(dir, "bad.json")
	os.WriteFile(goodPath, good, 0o600)
	os.WriteFile(badPath, bad, 0o600)
	res := resourceMap{"kbs:///default/credential/test": good, "kbs:///default/credential/bad": bad}
	tests := []struct {
		name    string
		g       ResourceGetter
		uri     string
		wantErr error
		user    string // expected for quay.io/org/app
		hub     string // expected for docker.io/library/busybox
	}{
		{name: "kbs", g: res, uri: "kbs:///default/credential/test", user: "alice", hub: "bob"},
		{name: "file URI", uri: "file://" + goodPath, user: "alice", hub: "bob"},
		{name: "absolute path", uri: goodPath, user: "alice", hub: "bob"},
		{name: "empty URI is anonymous"},
		{name: "missing kbs resource", g: res, uri: "kbs:///default/credential/none", wantErr: errdefs.ErrNotFound},
		{name: "kbs without getter", uri: "kbs:///default/credential/test", wantErr: errdefs.ErrFailedPrecondition},
		{name: "missing file", uri: "file://" + filepath.Join(dir, "none"), wantErr: errdefs.ErrNotFound},
		{name: "relative path", uri: "auth.json", wantErr: errdefs.ErrInvalidArgument},
		{name: "malformed kbs content", g: res, uri: "kbs:///default/credential/bad", wantErr: errdefs.ErrInvalidArgument},
		{name: "malformed file", uri: badPath, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			af, err := AuthLoader(tc.g, tc.uri)(context.Background())
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "MARKER") {
					t.Fatalf("error leaks the secret: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			c, ok := af.Lookup("quay.io", "org/app")
			if c.Username != tc.user || ok != (tc.user != "") {
				t.Fatalf("quay.io/org/app: got %q %v, want %q", c.Username, ok, tc.user)
			}
			c, ok = af.Lookup("registry-1.docker.io", "library/busybox")
			if c.Username != tc.hub || ok != (tc.hub != "") {
				t.Fatalf("docker hub: got %q %v, want %q", c.Username, ok, tc.hub)
			}
			if tc.user != "" && c.Password != secret {
				t.Fatal("password not kept")
			}
		})
	}
}
