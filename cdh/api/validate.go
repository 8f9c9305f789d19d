package api

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/cova-project/cova/internal/textclip"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/imagepull/reference"
	cdhpb "github.com/cova-project/cova/protocols/cdh"
)

// Limits on requests and replies. Requests are bounded by ttrpc's 4 MiB
// message size anyway; these name the field that is too big.
const (
	// MaxSecretSize bounds UnsealSecret's secret (a Kubernetes secret is at
	// most 1 MiB).
	MaxSecretSize = 1 << 20
	// MaxURILen bounds GetResource's ResourcePath.
	MaxURILen = 4096
	// MaxResourceSize bounds a resource or plaintext in a reply: what fits a
	// ttrpc message with room for framing.
	MaxResourceSize = 4<<20 - 4<<10
	// MaxVolumeTypeLen bounds SecureMount's volume_type.
	MaxVolumeTypeLen = 64
	// MaxOptions, MaxOptionKeyLen and MaxOptionValueLen bound SecureMount's
	// options; a value may be a sealed secret.
	MaxOptions        = 64
	MaxOptionKeyLen   = 128
	MaxOptionValueLen = 64 << 10
	// MaxFlags and MaxFlagLen bound SecureMount's flags.
	MaxFlags   = 64
	MaxFlagLen = 256
	// MaxPathLen bounds mount_point and bundle_path (PATH_MAX).
	MaxPathLen = 4096
	// MaxImageURLLen bounds PullImage's image_url.
	MaxImageURLLen = 4096
	// MaxKeyProviderInputSize bounds UnWrapKey's JSON input.
	MaxKeyProviderInputSize = 1 << 20
	// MaxAnnotationSize bounds the decoded AnnotationPacket.
	MaxAnnotationSize = 64 << 10
	// MaxPrivateOptionsSize bounds the private options UnWrapKey returns
	// (they are about 200 bytes; each byte becomes up to 4 in the JSON).
	MaxPrivateOptionsSize = 64 << 10
)

// sealedPrefix starts every sealed secret.
const sealedPrefix = "sealed."

var (
	volumeTypeRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]*$`)
	optionKeyRE  = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
)

// invalid returns an INVALID_ARGUMENT error naming field.
func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// clip shortens s for a message and makes it printable ASCII.
func clip(s string) string { return textclip.Printable(s, 128) }

// checkSecret validates a sealed secret's outer form. Its content is never
// echoed: a message could end up in a log.
func checkSecret(b []byte) error {
	const field = "secret"
	switch {
	case len(b) == 0:
		return invalid(field, "empty")
	case len(b) > MaxSecretSize:
		return invalid(field, "%d bytes, more than %d", len(b), MaxSecretSize)
	case !strings.HasPrefix(string(b), sealedPrefix):
		return invalid(field, "not a sealed secret (want %s<header>.<payload>.<signature>)", sealedPrefix)
	}
	for _, c := range b {
		if c <= ' ' || c > '~' {
			return invalid(field, "contains a byte outside printable ASCII (0x%02x)", c)
		}
	}
	return nil
}

// checkResourcePath validates a resource URI and returns its host-less
// form (the host is ignored, as upstream).
func checkResourcePath(p string) (string, error) {
	const field = "ResourcePath"
	switch {
	case p == "":
		return "", invalid(field, "empty (want kbs:///repo/type/tag)")
	case len(p) > MaxURILen:
		return "", invalid(field, "%d bytes, more than %d", len(p), MaxURILen)
	}
	u, err := kbs.ParseResourceURI(p)
	if err != nil {
		return "", fmt.Errorf("%s: %w", field, err)
	}
	return u.String(), nil
}

// checkText rejects empty, too long, non-UTF-8 and NUL-carrying strings.
func checkText(field, s string, max int) error {
	switch {
	case s == "":
		return invalid(field, "empty")
	case len(s) > max:
		return invalid(field, "%d bytes, more than %d", len(s), max)
	case !utf8.ValidString(s):
		return invalid(field, "not UTF-8")
	case strings.IndexByte(s, 0) >= 0:
		return invalid(field, "contains NUL")
	}
	return nil
}

// checkUnder requires p to be an absolute, clean path strictly below one
// of roots.
func checkUnder(field, p string, roots []string) error {
	if err := checkText(field, p, MaxPathLen); err != nil {
		return err
	}
	if !filepath.IsAbs(p) {
		return invalid(field, "%q is not absolute", clip(p))
	}
	if filepath.Clean(p) != p {
		return invalid(field, "%q is not clean (want %q)", clip(p), clip(filepath.Clean(p)))
	}
	for _, r := range roots {
		if strings.HasPrefix(p, r+"/") {
			return nil
		}
	}
	return invalid(field, "%q is not below %s", clip(p), strings.Join(roots, " or "))
}

// checkSecureMount validates a SecureMount request.
func (s *Server) checkSecureMount(req *cdhpb.SecureMountRequest) error {
	vt := req.GetVolumeType()
	if err := checkText("volume_type", vt, MaxVolumeTypeLen); err != nil {
		return err
	}
	if !volumeTypeRE.MatchString(vt) {
		return invalid("volume_type", "%q: want lower-case letters, digits, '.', '_' and '-'", clip(vt))
	}
	opts := req.GetOptions()
	if len(opts) > MaxOptions {
		return invalid("options", "%d entries, more than %d", len(opts), MaxOptions)
	}
	for k, v := range opts {
		if len(k) == 0 || len(k) > MaxOptionKeyLen || !optionKeyRE.MatchString(k) {
			return invalid("options", "key %q: want 1 to %d letters, digits, '.', '_' and '-'", clip(k), MaxOptionKeyLen)
		}
		// Values may name key material: never echoed.
		field := fmt.Sprintf("options[%q]", k)
		switch {
		case len(v) > MaxOptionValueLen:
			return invalid(field, "%d bytes, more than %d", len(v), MaxOptionValueLen)
		case !utf8.ValidString(v):
			return invalid(field, "not UTF-8")
		case strings.IndexByte(v, 0) >= 0:
			return invalid(field, "contains NUL")
		}
	}
	flags := req.GetFlags()
	if len(flags) > MaxFlags {
		return invalid("flags", "%d entries, more than %d", len(flags), MaxFlags)
	}
	for i, f := range flags {
		if err := checkText(fmt.Sprintf("flags[%d]", i), f, MaxFlagLen); err != nil {
			return err
		}
	}
	return checkUnder("mount_point", req.GetMountPoint(), s.mountRoots)
}

// checkImageURL validates an image reference.
func checkImageURL(ref string) error {
	if err := checkText("image_url", ref, MaxImageURLLen); err != nil {
		return err
	}
	if _, err := reference.Parse(ref); err != nil {
		return fmt.Errorf("image_url: %w", err)
	}
	return nil
}
