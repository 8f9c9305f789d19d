package kms

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kbs"
)

// DefaultCredentialRoot is the only directory [[credentials]] may write
// under (guest-components: CDH_BASE_DIR + "/kbs").
const DefaultCredentialRoot = "/run/confidential-containers/cdh/kbs"

// DefaultKMSCredentialDir holds per-provider credential directories
// (kms-credential/aws, kms-credential/aliyun, kms-credential/ehsm).
const DefaultKMSCredentialDir = DefaultCredentialRoot + "/kms-credential"

// maxCredentialPath bounds a [[credentials]] path.
const maxCredentialPath = 4096

// Credential is one cdh.toml [[credentials]] entry: the KBS resource
// resource_uri is fetched at start and written to path, which must lie
// under DefaultCredentialRoot.
type Credential struct {
	ResourceURI string `toml:"resource_uri" json:"resource_uri"`
	Path        string `toml:"path" json:"path"`
}

// ValidateCredentialPath checks that path is an absolute, clean path
// strictly below root (no "." or ".." components, no empty components, no
// NUL) and returns it relative to root.
func ValidateCredentialPath(root, path string) (string, error) {
	bad := func(why string) (string, error) {
		return "", fmt.Errorf("[[credentials]] path %q: %s: %w", Clip(path), why, errdefs.ErrInvalidArgument)
	}
	if path == "" {
		return bad("empty")
	}
	if len(path) > maxCredentialPath || strings.ContainsRune(path, 0) {
		return bad("too long or contains NUL")
	}
	if !filepath.IsAbs(path) {
		return bad("not absolute")
	}
	for _, c := range strings.Split(path[1:], "/") {
		if c == "" || c == "." || c == ".." {
			return bad(`empty, "." or ".." component`)
		}
	}
	root = filepath.Clean(root)
	rel, ok := strings.CutPrefix(path, root+"/")
	if root == "/" {
		rel, ok = path[1:], true
	}
	if !ok || rel == "" {
		return bad(fmt.Sprintf("must be a file under %s", root))
	}
	return rel, nil
}

// FetchCredentials fetches each credential's resource from the KBS and
// writes it, mode 0600, to its path below root (DefaultCredentialRoot in
// the guest; directories are created 0700). All paths are validated before
// anything is fetched. No component below root may be a symlink (the file
// system walk is confined to root with os.Root, so a racing symlink cannot
// escape it either); each file is written to a temporary file in the same
// directory and renamed into place, so readers never see a partial
// credential. Errors name the resource URI and the path, never the content.
func FetchCredentials(ctx context.Context, getter ResourceGetter, creds []Credential, root string) error {
	if len(creds) == 0 {
		return nil
	}
	rels := make([]string, len(creds))
	for i, c := range creds {
		if _, err := kbs.ParseResourceURI(c.ResourceURI); err != nil {
			return fmt.Errorf("[[credentials]] resource_uri: %w", err)
		}
		rel, err := ValidateCredentialPath(root, c.Path)
		if err != nil {
			return err
		}
		rels[i] = rel
	}
	if getter == nil {
		return fmt.Errorf("[[credentials]]: no KBS configured to fetch %q: %w", Clip(creds[0].ResourceURI), errdefs.ErrFailedPrecondition)
	}
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fmt.Errorf("[[credentials]]: creating %s: %w", root, err)
	}
	r, err := os.OpenRoot(root)
	if err != nil {
		return fmt.Errorf("[[credentials]]: opening %s: %w", root, err)
	}
	defer r.Close()
	for i, c := range creds {
		content, err := getter.GetResource(ctx, c.ResourceURI)
		if err != nil {
			return fmt.Errorf("[[credentials]] fetching %q for %s: %w", Clip(c.ResourceURI), Clip(c.Path), err)
		}
		err = writeConfined(r, rels[i], content)
		clear(content)
		if err != nil {
			return fmt.Errorf("[[credentials]] writing %s: %w", Clip(c.Path), err)
		}
	}
	return nil
}

// writeConfined atomically writes content to rel inside r, creating
// missing parent directories and refusing symlinks and non-directories on
// the way.
func writeConfined(r *os.Root, rel string, content []byte) error {
	comps := strings.Split(rel, "/")
	dir := "."
	for _, c := range comps[:len(comps)-1] {
		dir = filepath.Join(dir, c)
		fi, err := r.Lstat(dir)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := r.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			continue
		case err != nil:
			return err
		case fi.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("%s is a symlink: %w", dir, errdefs.ErrPermissionDenied)
		case !fi.IsDir():
			return fmt.Errorf("%s is not a directory: %w", dir, errdefs.ErrFailedPrecondition)
		}
	}
	fi, err := r.Lstat(rel)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("target is a symlink: %w", errdefs.ErrPermissionDenied)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("target exists and is not a regular file: %w", errdefs.ErrFailedPrecondition)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	tmp := filepath.Join(dir, "."+comps[len(comps)-1]+".tmp-"+hex.EncodeToString(rnd[:]))
	f, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = r.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.Write(content); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := r.Rename(tmp, rel); err != nil {
		_ = r.Remove(tmp)
		ok = true
		return err
	}
	ok = true
	return nil
}
