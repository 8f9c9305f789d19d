package kms

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

func TestValidateCredentialPath(t *testing.T) {
	root := DefaultCredentialRoot
	for _, tc := range []struct {
		path, rel string
	}{
		{root + "/kms-credential/aliyun/config.toml", "kms-credential/aliyun/config.toml"},
		{root + "/kms-credential/aws/credential.json", "kms-credential/aws/credential.json"},
		{root + "/x", "x"},
		{"/etc/config.toml", ""},
		{root, ""},
		{root + "/", ""},
		{root + "/../../config.toml", ""},
		{root + "/kms-credential/../../../config.toml", ""},
		{root + "/kms-credential/./config.toml", ""},
		{root + "//x", ""},
		{root + "x/y", ""}, // sibling directory with the same prefix
		{"kms-credential/aws/credential.json", ""},
		{root + "/a\x00b", ""},
		{"", ""},
	} {
		t.Run(tc.path, func(t *testing.T) {
			rel, err := ValidateCredentialPath(root, tc.path)
			if tc.rel == "" {
				if err == nil || !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), "[[credentials]] path") {
					t.Fatalf("rel = %q, err = %v", rel, err)
				}
				return
			}
			if err != nil || rel != tc.rel {
				t.Fatalf("rel = %q, err = %v", rel, err)
			}
		})
	}
}

// TestCredentialTOML checks the cdh.toml key names.
func TestCredentialTOML(t *testing.T) {
	var cfg struct {
		Credentials []Credential `toml:"credentials"`
	}
	_, err := toml.Decode(`
[[credentials]]
resource_uri = "kbs:///default/aws/credential"
path = "/run/confidential-containers/cdh/kbs/kms-credential/aws/credential.json"
`, &cfg)
	if err != nil || len(cfg.Credentials) != 1 || cfg.Credentials[0].ResourceURI != "kbs:///default/aws/credential" ||
		cfg.Credentials[0].Path != DefaultKMSCredentialDir+"/aws/credential.json" {
		t.Fatalf("cfg = %+v, err = %v", cfg, err)
	}
}

func TestFetchCredentials(t *testing.T) {
	res := map[string][]byte{
		"kbs:///default/aws/credential": []byte(`{"access_key_id":"A","secret_access_key":"` + marker + `"}`),
		"kbs:///default/aliyun/key":     []byte(marker + "-aliyun"),
	}
	t.Run("writes files 0600 under root", func(t *testing.T) {
		root := filepath.Join(t.TempDir(), "kbs")
		g := &mapGetter{m: res}
		creds := []Credential{
			{ResourceURI: "kbs:///default/aws/credential", Path: root + "/kms-credential/aws/credential.json"},
			{ResourceURI: "kbs:///default/aliyun/key", Path: root + "/kms-credential/aliyun/clientKey_x.json"},
		}
		if err := FetchCredentials(context.Background(), g, creds, root); err != nil {
			t.Fatal(err)
		}
		for i, c := range creds {
			b, err := os.ReadFile(c.Path)
			if err != nil || string(b) != string(res[c.ResourceURI]) {
				t.Fatalf("%d: %q %v", i, b, err)
			}
			fi, _ := os.Stat(c.Path)
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("%s mode %v", c.Path, fi.Mode())
			}
			di, _ := os.Stat(filepath.Dir(c.Path))
			if di.Mode().Perm() != 0o700 {
				t.Fatalf("dir mode %v", di.Mode())
			}
		}
		// Rewriting replaces the file and leaves no temporary behind.
		if err := FetchCredentials(context.Background(), g, creds[:1], root); err != nil {
			t.Fatal(err)
		}
		ents, _ := os.ReadDir(filepath.Dir(creds[0].Path))
		if len(ents) != 1 {
			t.Fatalf("directory holds %d entries", len(ents))
		}
	})
	t.Run("no credentials is a no-op", func(t *testing.T) {
		if err := FetchCredentials(context.Background(), nil, nil, "/nonexistent/root"); err != nil {
			t.Fatal(err)
		}
	})

	for _, tc := range []struct {
		name  string
		creds func(root string) []Credential
		setup func(t *testing.T, root string)
		class func(error) bool
		// fetched is whether any resource may be fetched.
		fetched bool
	}{
		{
			name: "traversal",
			creds: func(root string) []Credential {
				return []Credential{{"kbs:///default/aws/credential", root + "/../escape.json"}}
			},
			class: errdefs.IsInvalidArgument,
		},
		{
			name: "second path outside root fails before any fetch",
			creds: func(root string) []Credential {
				return []Credential{{"kbs:///default/aws/credential", root + "/ok.json"}, {"kbs:///default/aliyun/key", "/etc/passwd"}}
			},
			class: errdefs.IsInvalidArgument,
		},
		{
			name:  "bad resource uri",
			creds: func(root string) []Credential { return []Credential{{"https://evil/x", root + "/a"}} },
			class: errdefs.IsInvalidArgument,
		},
		{
			name:    "missing resource",
			creds:   func(root string) []Credential { return []Credential{{"kbs:///default/none/x", root + "/a"}} },
			class:   errdefs.IsNotFound,
			fetched: true,
		},
		{
			name: "symlinked directory",
			creds: func(root string) []Credential {
				return []Credential{{"kbs:///default/aws/credential", root + "/link/credential.json"}}
			},
			setup: func(t *testing.T, root string) {
				if err := os.Symlink(t.TempDir(), filepath.Join(root, "link")); err != nil {
					t.Fatal(err)
				}
			},
			class:   errdefs.IsPermissionDenied,
			fetched: true,
		},
		{
			name: "symlinked directory inside root",
			creds: func(root string) []Credential {
				return []Credential{{"kbs:///default/aws/credential", root + "/link/credential.json"}}
			},
			setup: func(t *testing.T, root string) {
				os.Mkdir(filepath.Join(root, "real"), 0o700)
				if err := os.Symlink("real", filepath.Join(root, "link")); err != nil {
					t.Fatal(err)
				}
			},
			class:   errdefs.IsPermissionDenied,
			fetched: true,
		},
		{
			name: "symlinked target",
			creds: func(root string) []Credential {
				return []Credential{{"kbs:///default/aws/credential", root + "/credential.json"}}
			},
			setup: func(t *testing.T, root string) {
				if err := os.Symlink(filepath.Join(t.TempDir(), "victim"), filepath.Join(root, "credential.json")); err != nil {
					t.Fatal(err)
				}
			},
			class:   errdefs.IsPermissionDenied,
			fetched: true,
		},
		{
			name:  "target is a directory",
			creds: func(root string) []Credential { return []Credential{{"kbs:///default/aws/credential", root + "/d"}} },
			setup: func(t *testing.T, root string) {
				os.Mkdir(filepath.Join(root, "d"), 0o700)
			},
			class:   errdefs.IsFailedPrecondition,
			fetched: true,
		},
		{
			name: "parent is a file",
			creds: func(root string) []Credential {
				return []Credential{{"kbs:///default/aws/credential", root + "/f/credential.json"}}
			},
			setup: func(t *testing.T, root string) {
				os.WriteFile(filepath.Join(root, "f"), nil, 0o600)
			},
			class:   errdefs.IsFailedPrecondition,
			fetched: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := filepath.Join(t.TempDir(), "kbs")
			if err := os.MkdirAll(root, 0o700); err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				tc.setup(t, root)
			}
			g := &mapGetter{m: res}
			err := FetchCredentials(context.Background(), g, tc.creds(root), root)
			t.Logf("error: %v", err)
			if err == nil || !tc.class(err) {
				t.Fatalf("err = %v: wrong class", err)
			}
			if strings.Contains(err.Error(), marker) {
				t.Fatalf("error leaks content: %v", err)
			}
			if !tc.fetched && len(g.calls) != 0 {
				t.Fatalf("fetched %v before validating all paths", g.calls)
			}
			// Nothing was written outside root.
			if _, err := os.Lstat(filepath.Join(filepath.Dir(root), "escape.json")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("file written outside root: %v", err)
			}
		})
	}

	t.Run("no getter", func(t *testing.T) {
		root := t.TempDir()
		err := FetchCredentials(context.Background(), nil, []Credential{{"kbs:///default/aws/credential", root + "/a"}}, root)
		if !errdefs.IsFailedPrecondition(err) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestFetchCredentialsKeepsSymlinkTargetIntact(t *testing.T) {
	root := filepath.Join(t.TempDir(), "kbs")
	os.MkdirAll(root, 0o700)
	victim := filepath.Join(t.TempDir(), "victim")
	os.WriteFile(victim, []byte("original"), 0o644)
	os.Symlink(victim, filepath.Join(root, "credential.json"))
	g := &mapGetter{m: map[string][]byte{"kbs:///a/b/c": []byte(marker)}}
	if err := FetchCredentials(context.Background(), g, []Credential{{"kbs:///a/b/c", root + "/credential.json"}}, root); err == nil {
		t.Fatal("wrote through a symlink")
	}
	if b, _ := os.ReadFile(victim); string(b) != "original" {
		t.Fatalf("victim changed: %q", b)
	}
}
