package imagepull

import (
	"context"
	"fmt"

	"github.com/cova-project/cova/imagepull/registry"
)

// maxAuthFileBytes bounds an auth.json read from a resource.
const maxAuthFileBytes = 1 << 20

// AuthFromResource reads registry credentials, a containers auth.json
// (`{"auths":{"host[/repo]":{"auth":"<base64 user:password>"}}}` or
// `{"username","password"}` entries), from uri as cdh.toml's [image]
// authenticated_registry_credentials_uri names it: "kbs:///…" through g,
// "file:///…" or an absolute path. An empty uri means anonymous access
// (nil, nil). Neither errors nor logs ever contain the file's content.
func AuthFromResource(ctx context.Context, g ResourceGetter, uri string) (*registry.AuthFile, error) {
	if uri == "" {
		return nil, nil
	}
	b, err := ReadResource(ctx, g, uri, maxAuthFileBytes)
	if err != nil {
		return nil, fmt.Errorf("registry credentials: %w", err)
	}
	af, err := registry.ParseAuthFile(b)
	if err != nil {
		return nil, fmt.Errorf("registry credentials %s: %w", clipStr(uri), err)
	}
	return af, nil
}

// AuthLoader returns a registry.Config.AuthLoader reading uri with
// AuthFromResource, so that credentials behind the KBS are fetched when a
// registry first asks for them rather than at boot.
func AuthLoader(g ResourceGetter, uri string) func(ctx context.Context) (*registry.AuthFile, error) {
	return func(ctx context.Context) (*registry.AuthFile, error) {
		return AuthFromResource(ctx, g, uri)
	}
}
