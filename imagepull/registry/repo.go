package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/reference"
)

// do sends the request mk builds, retrying transport errors and 429, 502,
// 503 and 504 answers. Waits honour Retry-After; their sum is bounded by
// MaxRetryWait and the attempts by Retries.
func (c *Client) do(ctx context.Context, mk func() (*http.Request, error)) (*http.Response, error) {
	var waited time.Duration
	for attempt := 0; ; attempt++ {
		req, err := mk()
		if err != nil {
			return nil, err
		}
		req.Header.Set("User-Agent", c.userAgent)
		c.Stats.Requests.Add(1)
		resp, err := c.http.Do(req)
		var wait time.Duration
		if err != nil {
			if !retryable(ctx, err) || attempt+1 >= c.retries {
				return nil, fmt.Errorf("%s %s: %w", req.Method, redactURL(req.URL), classify(err))
			}
			wait = backoff(attempt)
			c.log.Debug("registry request failed, retrying", "url", redactURL(req.URL), "err", err, "wait", wait)
		} else {
			switch resp.StatusCode {
			case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			default:
				return resp, nil
			}
			ra, hasRA := retryAfter(resp.Header, time.Now())
			wait = backoff(attempt)
			if hasRA {
				wait = ra
			}
			what := fmt.Sprintf("%s %s", req.Method, redactURL(req.URL))
			if attempt+1 >= c.retries || waited+wait > c.maxRetryWait {
				err := statusError(what, resp)
				resp.Body.Close()
				if hasRA {
					return nil, fmt.Errorf("%w (Retry-After %s; retry budget %s exhausted)", err, ra, c.maxRetryWait)
				}
				return nil, err
			}
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			c.log.Info("registry asked to retry", "url", redactURL(req.URL), "status", resp.StatusCode, "wait", wait)
		}
		if waited+wait > c.maxRetryWait {
			wait = c.maxRetryWait - waited
		}
		c.Stats.Retries.Add(1)
		if err := c.sleep(ctx, wait); err != nil {
			return nil, err
		}
		waited += wait
	}
}

// classify gives transport errors an errdefs class unless they have one.
func classify(err error) error {
	for _, cls := range []error{errdefs.ErrPermissionDenied, errdefs.ErrUnavailable, errdefs.ErrInvalidArgument,
		context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, cls) {
			return err
		}
	}
	return fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
}

// Repo is one repository on the endpoint that served its manifest.
type Repo struct {
	c    *Client
	ep   endpoint
	auth authState
}

// Endpoint describes where the repository is served from, for logs.
func (r *Repo) Endpoint() string { return r.ep.String() }

func (r *Repo) url(kind, object string) string {
	return r.ep.scheme() + "://" + r.ep.host + "/v2/" + r.ep.repo + "/" + kind + "/" + object
}

// get issues an authenticated GET, answering one 401 with the challenge.
func (r *Repo) get(ctx context.Context, k kind, u string, hdr http.Header) (*http.Response, error) {
	ctx = context.WithValue(ctx, kindKey{}, k)
	for try := 0; ; try++ {
		auth, gen := r.auth.current()
		resp, err := r.c.do(ctx, func() (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err != nil {
				return nil, err
			}
			for k, v := range hdr {
				req.Header[k] = v
			}
			if auth != "" {
				req.Header.Set("Authorization", auth)
			}
			return req, nil
		})
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusUnauthorized || try > 0 {
			return resp, nil
		}
		err = r.authenticate(ctx, resp, gen)
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
	}
}

// Fetched is a verified manifest or index.
type Fetched struct {
	// Digest is the digest of Body (sha256 unless pinned otherwise).
	Digest oci.Digest
	// ContentType is the registry's Content-Type.
	ContentType string
	Body        []byte
}

// Resolve fetches ref's manifest (by digest if it has one, else by tag),
// trying mirrors before the registry, and returns the repository bound to
// the endpoint that answered. A blocked registry is ErrPermissionDenied.
func (c *Client) Resolve(ctx context.Context, ref reference.Reference) (*Repo, Fetched, error) {
	eps, err := c.endpoints(ref)
	if err != nil {
		return nil, Fetched{}, err
	}
	var errs []error
	for _, ep := range eps {
		repo := &Repo{c: c, ep: ep}
		f, err := repo.fetchManifest(ctx, ref.Object(), ref.Digest)
		if err == nil {
			return repo, f, nil
		}
		if ctx.Err() != nil {
			return nil, Fetched{}, err
		}
		errs = append(errs, fmt.Errorf("%s: %w", ep, err))
		if ep.mirror {
			c.log.Info("mirror failed, trying next", "mirror", ep.host, "err", err)
		}
	}
	if len(errs) == 1 {
		return nil, Fetched{}, errs[0]
	}
	return nil, Fetched{}, errors.Join(errs...)
}

// FetchManifest fetches a manifest by digest from r (after an index).
func (r *Repo) FetchManifest(ctx context.Context, d oci.Digest) (Fetched, error) {
	return r.fetchManifest(ctx, d.String(), d)
}

// FetchTaggedManifest fetches the manifest tagged tag from r (e.g. a
// cosign signature, "sha256-<hex>.sig"). A missing tag is ErrNotFound.
func (r *Repo) FetchTaggedManifest(ctx context.Context, tag string) (Fetched, error) {
	if !reference.ValidTag(tag) {
		return Fetched{}, fmt.Errorf("tag %q: invalid: %w", clipS(tag), errdefs.ErrInvalidArgument)
	}
	return r.fetchManifest(ctx, tag, oci.Digest{})
}

func (r *Repo) fetchManifest(ctx context.Context, object string, pinned oci.Digest) (Fetched, error) {
	hdr := http.Header{"Accept": {oci.ManifestAccept}}
	resp, err := r.get(ctx, kindManifest, r.url("manifests", object), hdr)
	if err != nil {
		return Fetched{}, err
	}
	defer resp.Body.Close()
	what := "manifest " + r.ep.repo + ":" + object
	if resp.StatusCode != http.StatusOK {
		return Fetched{}, statusError(what, resp)
	}
	if resp.ContentLength > oci.MaxManifestBytes {
		return Fetched{}, fmt.Errorf("%s: %d bytes exceeds the %d byte limit: %w", what, resp.ContentLength, oci.MaxManifestBytes, errdefs.ErrInvalidArgument)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, oci.MaxManifestBytes+1))
	if err != nil {
		return Fetched{}, fmt.Errorf("%s: reading: %w", what, classify(err))
	}
	if len(body) > oci.MaxManifestBytes {
		return Fetched{}, fmt.Errorf("%s: over the %d byte limit: %w", what, oci.MaxManifestBytes, errdefs.ErrInvalidArgument)
	}
	f := Fetched{ContentType: resp.Header.Get("Content-Type"), Body: body}
	if !pinned.IsZero() {
		h, check := pinned.Verifier()
		h.Write(body)
		if err := check(); err != nil {
			return Fetched{}, fmt.Errorf("%s: %w", what, err)
		}
		f.Digest = pinned
		return f, nil
	}
	f.Digest = oci.FromBytes(body)
	// A registry that names a different digest than what it sent is lying.
	if hd := resp.Header.Get("Docker-Content-Digest"); hd != "" {
		d, err := oci.ParseDigest(hd)
		if err == nil && d.Algorithm() == oci.SHA256 && d != f.Digest {
			return Fetched{}, fmt.Errorf("%s: Docker-Content-Digest %s does not match the body (%s): %w", what, d, f.Digest, errdefs.ErrFailedPrecondition)
		}
	}
	return f, nil
}

// FetchBlob reads a small blob (an image config) completely, enforcing
// maxSize and the descriptor's size and digest.
func (r *Repo) FetchBlob(ctx context.Context, desc oci.Descriptor, maxSize int64) ([]byte, error) {
	if desc.Size > maxSize {
		return nil, fmt.Errorf("blob %s: size %d exceeds the %d byte limit: %w", desc.Digest, desc.Size, maxSize, errdefs.ErrInvalidArgument)
	}
	rc, err := r.OpenBlob(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b := make([]byte, 0, desc.Size)
	buf := make([]byte, 32<<10)
	for {
		n, err := rc.Read(buf)
		b = append(b, buf[:n]...)
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// OpenBlob streams a blob. The reader yields exactly desc.Size bytes; on a
// broken connection it resumes with a Range request (the answer must start
// exactly where it left off and report the descriptor's total size). It
// returns io.EOF only after the digest matched; a mismatch, a short or long
// body is an error instead, so a caller that reads to EOF has verified
// content. Close releases the connection.
func (r *Repo) OpenBlob(ctx context.Context, desc oci.Descriptor) (io.ReadCloser, error) {
	if desc.Digest.IsZero() || desc.Size < 0 {
		return nil, fmt.Errorf("blob descriptor: invalid digest or size: %w", errdefs.ErrInvalidArgument)
	}
	h, check := desc.Digest.Verifier()
	br := &blobReader{r: r, ctx: ctx, desc: desc, hash: h, check: check}
	if err := br.open(); err != nil {
		return nil, err
	}
	return br, nil
}

type blobReader struct {
	r     *Repo
	ctx   context.Context
	desc  oci.Descriptor
	hash  interface{ Write([]byte) (int, error) }
	check func() error

	body       io.ReadCloser
	cancel     context.CancelFunc
	stall      *time.Timer
	off        int64 // bytes delivered (and hashed)
	lastResume int64 // off at the last (re)open
	retries    int
	noProgress int
	done       error // sticky final state (io.EOF or an error)
}

// open issues the GET for the remaining bytes.
func (b *blobReader) open() error {
	ctx, cancel := context.WithCancel(b.ctx)
	hdr := http.Header{}
	if b.off > 0 {
		hdr.Set("Range", "bytes="+strconv.FormatInt(b.off, 10)+"-")
	}
	what := "blob " + b.desc.Digest.String()
	resp, err := b.r.get(ctx, kindBlob, b.r.url("blobs", b.desc.Digest.String()), hdr)
	if err != nil {
		cancel()
		return fmt.Errorf("%s: %w", what, err)
	}
	fail := func(err error) error {
		resp.Body.Close()
		cancel()
		return err
	}
	remaining := b.desc.Size - b.off
	switch {
	case resp.StatusCode == http.StatusOK:
		if resp.ContentLength >= 0 && resp.ContentLength != b.desc.Size {
			return fail(fmt.Errorf("%s: Content-Length %d, descriptor size %d: %w", what, resp.ContentLength, b.desc.Size, errdefs.ErrFailedPrecondition))
		}
		if b.off > 0 {
			// The server ignored Range: skip what we already have. The
			// digest over the delivered bytes still decides.
			if _, err := io.CopyN(io.Discard, resp.Body, b.off); err != nil {
				return fail(fmt.Errorf("%s: skipping to offset %d: %w", what, b.off, classify(err)))
			}
		}
	case resp.StatusCode == http.StatusPartialContent && b.off > 0:
		start, end, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		if err != nil {
			return fail(fmt.Errorf("%s: %w", what, err))
		}
		if start != b.off || total != b.desc.Size || end != b.desc.Size-1 {
			return fail(fmt.Errorf("%s: Content-Range %d-%d/%d does not continue at %d of %d: %w",
				what, start, end, total, b.off, b.desc.Size, errdefs.ErrFailedPrecondition))
		}
		if resp.ContentLength >= 0 && resp.ContentLength != remaining {
			return fail(fmt.Errorf("%s: partial Content-Length %d, want %d: %w", what, resp.ContentLength, remaining, errdefs.ErrFailedPrecondition))
		}
	default:
		err := statusError(what, resp)
		cancel()
		resp.Body.Close()
		return err
	}
	b.body, b.cancel = resp.Body, cancel
	b.lastResume = b.off
	b.stall = time.AfterFunc(b.r.c.stall, cancel)
	return nil
}

func parseContentRange(v string) (start, end, total int64, err error) {
	bad := fmt.Errorf("bad Content-Range %q: %w", clipS(v), errdefs.ErrFailedPrecondition)
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return 0, 0, 0, bad
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return 0, 0, 0, bad
	}
	s, e, ok := strings.Cut(rng, "-")
	if !ok {
		return 0, 0, 0, bad
	}
	var errs [3]error
	start, errs[0] = strconv.ParseInt(s, 10, 64)
	end, errs[1] = strconv.ParseInt(e, 10, 64)
	total, errs[2] = strconv.ParseInt(tot, 10, 64)
	if errs[0] != nil || errs[1] != nil || errs[2] != nil || start < 0 || end < start || total <= end {
		return 0, 0, 0, bad
	}
	return start, end, total, nil
}

func (b *blobReader) closeBody() {
	if b.stall != nil {
		b.stall.Stop()
	}
	if b.body != nil {
		b.body.Close()
		b.body = nil
	}
	if b.cancel != nil {
		b.cancel()
		b.cancel = nil
	}
}

const resumeProgress = 1 << 20

func (b *blobReader) Read(p []byte) (int, error) {
	if b.done != nil {
		return 0, b.done
	}
	for {
		remaining := b.desc.Size - b.off
		if remaining == 0 {
			return 0, b.finish()
		}
		if b.body == nil {
			if err := b.open(); err != nil {
				b.closeBody()
				b.done = err
				return 0, err
			}
		}
		q := p
		if int64(len(q)) > remaining {
			q = q[:remaining]
		}
		n, err := b.body.Read(q)
		if n > 0 {
			b.stall.Reset(b.r.c.stall)
			b.hash.Write(q[:n])
			b.off += int64(n)
			b.r.c.Stats.BlobBytes.Add(int64(n))
			return n, nil
		}
		if err == nil {
			continue
		}
		// The body ended or broke before the descriptor's size.
		b.closeBody()
		if b.ctx.Err() != nil {
			b.done = b.ctx.Err()
			return 0, b.done
		}
		progress := b.off - b.lastResume
		if progress >= resumeProgress {
			b.noProgress = 0
		} else {
			b.noProgress++
		}
		b.retries++
		if b.noProgress >= b.r.c.retries || b.retries > 4*b.r.c.retries {
			b.done = fmt.Errorf("blob %s: body ended at %d of %d bytes after %d attempts: %v: %w",
				b.desc.Digest, b.off, b.desc.Size, b.retries, err, errdefs.ErrUnavailable)
			return 0, b.done
		}
		wait := backoff(b.noProgress)
		b.r.c.log.Info("blob download interrupted, resuming", "digest", b.desc.Digest.String(), "offset", b.off, "size", b.desc.Size, "err", err, "wait", wait)
		b.r.c.Stats.Resumes.Add(1)
		if err := b.r.c.sleep(b.ctx, wait); err != nil {
			b.done = err
			return 0, err
		}
	}
}

// finish checks that the body has nothing more and that the digest matches.
func (b *blobReader) finish() error {
	if b.body != nil {
		var one [1]byte
		n, _ := io.ReadFull(b.body, one[:])
		if n > 0 {
			b.closeBody()
			b.done = fmt.Errorf("blob %s: body longer than the descriptor size %d: %w", b.desc.Digest, b.desc.Size, errdefs.ErrFailedPrecondition)
			return b.done
		}
		b.closeBody()
	}
	if err := b.check(); err != nil {
		b.done = fmt.Errorf("blob %s: %w", b.desc.Digest, err)
		return b.done
	}
	b.done = io.EOF
	return io.EOF
}

func (b *blobReader) Close() error {
	b.closeBody()
	if b.done == nil {
		b.done = errors.New("blob reader closed")
	}
	return nil
}
