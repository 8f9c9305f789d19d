package imagepull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/internal/textclip"
)

// DefaultMaxResourceBytes bounds what ReadResource returns when the caller
// gives no limit.
const DefaultMaxResourceBytes = 4 << 20

// ReadResource reads a policy, key, signature-store config or auth file
// named by uri: "kbs:///repo/type/tag" (or "kbs+plugin://…") through g,
// "file:///abs/path" or an absolute path from the guest's own (measured)
// file system. At most max bytes are accepted (0: DefaultMaxResourceBytes).
// A missing file or resource is ErrNotFound, a bad URI ErrInvalidArgument.
func ReadResource(ctx context.Context, g ResourceGetter, uri string, max int64) ([]byte, error) {
	if max <= 0 {
		max = DefaultMaxResourceBytes
	}
	var path string
	switch {
	case strings.HasPrefix(uri, "kbs:") || strings.HasPrefix(uri, "kbs+"):
		if g == nil {
			return nil, fmt.Errorf("resource %s: no resource getter (KBS) configured: %w", uri, errdefs.ErrFailedPrecondition)
		}
		b, err := g.GetResource(ctx, uri)
		if err != nil {
			return nil, fmt.Errorf("resource %s: %w", uri, err)
		}
		if int64(len(b)) > max {
			return nil, fmt.Errorf("resource %s: %d bytes is over the %d byte limit: %w", uri, len(b), max, errdefs.ErrInvalidArgument)
		}
		return b, nil
	case strings.HasPrefix(uri, "file:"):
		u, err := url.Parse(uri)
		if err != nil || (u.Host != "" && u.Host != "localhost") || u.RawQuery != "" || u.Fragment != "" {
			return nil, fmt.Errorf("resource %q: want file:///absolute/path: %w", clipStr(uri), errdefs.ErrInvalidArgument)
		}
		path = u.Path
	default:
		path = uri
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("resource %q: want kbs:///…, file:///… or an absolute path: %w", clipStr(uri), errdefs.ErrInvalidArgument)
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("resource %s: %w", path, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("resource %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("resource %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("resource %s: over the %d byte limit: %w", path, max, errdefs.ErrInvalidArgument)
	}
	return b, nil
}

func clipStr(s string) string { return textclip.Clip(s, 80) }
