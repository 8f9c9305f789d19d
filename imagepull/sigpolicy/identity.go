package sigpolicy

import (
	"fmt"
	"strings"

	"github.com/cova-project/cova/imagepull/reference"
	"github.com/cova-project/cova/internal/textclip"
)

// matchIdentity reports whether a signature claiming the docker reference
// signed is acceptable for the image pulled as image, under id (nil means
// matchRepoDigestOrExact). The error explains a refusal.
func matchIdentity(id *Identity, image reference.Reference, signed string) error {
	typ := MatchRepoDigestOrExact
	if id != nil {
		typ = id.Type
	}
	sig, err := parseRef(signed)
	if err != nil {
		return fmt.Errorf("signed identity %q: not a docker reference", clip(signed))
	}
	intended := imageRef(image)
	ok := false
	switch typ {
	case MatchExact:
		ok = !sig.nameOnly && sig.canonical() == intended.canonical()
	case MatchRepoDigestOrExact:
		ok = repoDigestOrExact(intended, sig)
	case MatchRepository:
		ok = sig.name == intended.name
	case ExactReference:
		want, _ := parseRef(id.DockerReference) // validated by Parse
		ok = !sig.nameOnly && sig.canonical() == want.canonical()
	case ExactRepository:
		want, _ := parseRef(id.DockerRepository)
		ok = sig.name == want.name
	case RemapIdentity:
		remapped := intended
		if intended.name == id.Prefix || strings.HasPrefix(intended.name, id.Prefix+"/") {
			r, err := parseRef(id.SignedPrefix + strings.TrimPrefix(intended.canonical(), id.Prefix))
			if err != nil {
				return fmt.Errorf("remapping %s from %s to %s: %v", intended.canonical(), id.Prefix, id.SignedPrefix, err)
			}
			remapped = r
		}
		ok = repoDigestOrExact(remapped, sig)
	}
	if !ok {
		hint := ""
		if sig.nameOnly && typ != MatchRepository && typ != ExactRepository {
			hint = " (the signature names only a repository, as cosign's do: use signedIdentity matchRepository or exactRepository)"
		}
		return fmt.Errorf("signed identity %q does not match %s under %s%s", clip(signed), intended.canonical(), typ, hint)
	}
	return nil
}

// repoDigestOrExact: a tagged image needs the exact reference signed; an
// image pulled by digest needs a signature in the same repository.
func repoDigestOrExact(intended, sig sigRef) bool {
	if sig.nameOnly {
		return false
	}
	if intended.digest.IsZero() {
		return sig.canonical() == intended.canonical()
	}
	return sig.name == intended.name
}

func clip(s string) string { return textclip.Clip(s, 120) }
