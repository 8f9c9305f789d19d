package sigpolicy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containerd/errdefs"
	"go.yaml.in/yaml/v3"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/reference"
)

// Lookaside says where simple-signing (signedBy) signatures are stored,
// after containers-registries.d(5): a default and per-scope base URLs.
// Only file:// URLs are read.
type Lookaside struct {
	// Default is default-docker's lookaside (or legacy sigstore) URL.
	Default string
	// Docker maps scopes (as in the policy, without "" and wildcards
	// allowed too) to URLs.
	Docker map[string]string
}

type registriesDEntry struct {
	Lookaside string `yaml:"lookaside"`
	Sigstore  string `yaml:"sigstore"`
	// Write-side and sigstore attachment settings are accepted and ignored.
	LookasideStaging       string `yaml:"lookaside-staging"`
	SigstoreStaging        string `yaml:"sigstore-staging"`
	UseSigstoreAttachments *bool  `yaml:"use-sigstore-attachments"`
}

func (e registriesDEntry) url() string {
	if e.Lookaside != "" {
		return e.Lookaside
	}
	return e.Sigstore
}

type registriesDFile struct {
	DefaultDocker *registriesDEntry           `yaml:"default-docker"`
	Docker        map[string]registriesDEntry `yaml:"docker"`
}

// ParseLookaside reads registries.d YAML documents (one per file of a
// registries.d directory, or CDH's sigstore config). default-docker may
// be set by one document only, and a scope only once.
func ParseLookaside(docs ...[]byte) (*Lookaside, error) {
	l := &Lookaside{Docker: map[string]string{}}
	defaultSeen := false
	for i, d := range docs {
		if len(d) > maxPolicyBytes {
			return nil, fmt.Errorf("sigstore config %d: too long: %w", i, errdefs.ErrInvalidArgument)
		}
		var f registriesDFile
		dec := yaml.NewDecoder(bytes.NewReader(d))
		dec.KnownFields(true)
		if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("sigstore config %d: %v: %w", i, err, errdefs.ErrInvalidArgument)
		}
		if f.DefaultDocker != nil {
			if defaultSeen {
				return nil, fmt.Errorf("sigstore config %d: default-docker set twice: %w", i, errdefs.ErrInvalidArgument)
			}
			defaultSeen = true
			l.Default = f.DefaultDocker.url()
		}
		for scope, e := range f.Docker {
			if err := validateScope(scope); err != nil || scope == "" {
				return nil, fmt.Errorf("sigstore config %d: docker scope %q: invalid: %w", i, scope, errdefs.ErrInvalidArgument)
			}
			if _, dup := l.Docker[scope]; dup {
				return nil, fmt.Errorf("sigstore config %d: docker scope %q set twice: %w", i, scope, errdefs.ErrInvalidArgument)
			}
			l.Docker[scope] = e.url()
		}
	}
	return l, nil
}

// baseFor returns the lookaside URL for ref ("" if none).
func (l *Lookaside) baseFor(ref reference.Reference) string {
	if l == nil {
		return ""
	}
	for _, s := range scopes(ref) {
		if s == "" {
			break
		}
		if u, ok := l.Docker[s]; ok {
			return u
		}
	}
	return l.Default
}

const (
	maxSignatures       = 64
	maxSignatureBytes   = 4 << 20
	maxAllSignatureData = 16 << 20
)

// readLookaside reads signature-1, signature-2, … for manifest digest d of
// ref's repository under the file:// base, until one is missing.
func readLookaside(ctx context.Context, base string, ref reference.Reference, d oci.Digest) ([][]byte, error) {
	u, err := url.Parse(base)
	if err != nil {
		return nil, fmt.Errorf("lookaside %q: %v: %w", clip(base), err, errdefs.ErrInvalidArgument)
	}
	if u.Scheme != "file" {
		return nil, fmt.Errorf("lookaside %q: only file:// signature stores are supported: %w", clip(base), errdefs.ErrNotImplemented)
	}
	// ref.Path and the digest are validated, so the path stays inside base.
	dir := filepath.Join(u.Path, filepath.FromSlash(ref.Path)+"@"+d.Algorithm()+"="+d.Hex())
	var sigs [][]byte
	total := 0
	for i := 1; ; i++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if i > maxSignatures {
			return nil, fmt.Errorf("lookaside %s: more than %d signatures: %w", dir, maxSignatures, errdefs.ErrInvalidArgument)
		}
		b, err := readCapped(filepath.Join(dir, "signature-"+strconv.Itoa(i)), maxSignatureBytes)
		if errors.Is(err, fs.ErrNotExist) {
			return sigs, nil
		}
		if err != nil {
			return nil, fmt.Errorf("lookaside: %w", err)
		}
		total += len(b)
		if total > maxAllSignatureData {
			return nil, fmt.Errorf("lookaside %s: signatures exceed %d bytes: %w", dir, maxAllSignatureData, errdefs.ErrInvalidArgument)
		}
		sigs = append(sigs, b)
	}
}

func readCapped(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: over %d bytes: %w", path, max, errdefs.ErrInvalidArgument)
	}
	return b, nil
}
