// Package imagepull pulls container images inside the guest: it resolves a
// reference, fetches and checks the manifest and config, lets a Verifier
// (signature policy) judge the manifest before any layer moves, then streams
// every layer in one pass (fetch, blob digest, decompress, diffID, safe
// unpack) into a shared layer store, several layers at a time. A layer is
// committed only after its blob digest and diffID (and, for encrypted
// layers, the HMAC) verify; layers already in the store are not fetched
// again.
//
// Subpackages: reference (names), oci (formats), registry (the distribution
// API client), unpack (hostile-tar extraction in overlay form), store (layers
// on disk and overlay root filesystems), ocicrypt (encrypted layers and
// their keys), sigpolicy (containers-policy.json signature checks).
package imagepull

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/ocicrypt"
	"github.com/cova-project/cova/imagepull/reference"
	"github.com/cova-project/cova/imagepull/registry"
	"github.com/cova-project/cova/imagepull/store"
	"github.com/cova-project/cova/imagepull/unpack"
)

// Verifier decides whether an image may be used. Pull calls it once per
// pull with the manifest it resolved, before any layer or config is fetched;
// an error stops the pull. The signature-policy slice implements it.
type Verifier interface {
	VerifyManifest(ctx context.Context, m ManifestInfo) error
}

// ManifestInfo is what a Verifier judges.
type ManifestInfo struct {
	// Reference is the normalised reference that was pulled.
	Reference reference.Reference
	// Digest and Body are the platform manifest actually used; MediaType is
	// its media type.
	Digest    oci.Digest
	MediaType string
	Body      []byte
	// IndexDigest and IndexBody are set when the reference named an index.
	IndexDigest oci.Digest
	IndexBody   []byte
	// Artifacts reads other objects of the same repository, on the
	// endpoint that served the manifest (cosign's "sha256-<hex>.sig" tag).
	// Nil when the manifest did not come from a registry.
	Artifacts ArtifactSource
}

// ArtifactSource reads manifests by tag and small blobs from the
// repository being pulled; *registry.Repo implements it. Everything it
// returns is size-bounded and digest-checked but otherwise untrusted.
type ArtifactSource interface {
	FetchTaggedManifest(ctx context.Context, tag string) (registry.Fetched, error)
	FetchBlob(ctx context.Context, desc oci.Descriptor, maxSize int64) ([]byte, error)
}

// KeyProvider unwraps the key of an encrypted layer (ocicrypt): it returns
// the layer's private options JSON. ocicrypt.JWE (local private keys),
// ocicrypt.AttestationAgent (CoCo key provider packets, KEK from a
// ResourceGetter) and ocicrypt.Multi implement it.
type KeyProvider interface {
	UnwrapKey(ctx context.Context, layer oci.Descriptor) ([]byte, error)
}

// ResourceGetter fetches a confidential resource (a KBS "kbs:///…" URI or
// a local file). Key providers and verifiers take one; the CDH supplies it.
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// Config configures a Puller.
type Config struct {
	// WorkDir holds the layer store (tmpfs by default in the guest, e.g.
	// /run/kata-containers/image).
	WorkDir string
	// Registry configures registry access (mirrors, auth, CAs, proxy).
	Registry registry.Config
	// MaxConcurrentLayers is how many layers are pulled at once (default 3).
	MaxConcurrentLayers int
	// MaxLayers bounds the layers of one image (default 128).
	MaxLayers int
	// Platform is the default platform for indexes (default linux/GOARCH).
	Platform oci.Platform
	// Unpack sets unpack limits and policy (setuid, opaque xattr).
	Unpack unpack.Options
	// MaxZstdWindow bounds the zstd window, i.e. the decoder memory per
	// layer (default 64 MiB).
	MaxZstdWindow uint64
	// Logger receives progress; nil discards.
	Logger *slog.Logger
	// ProgressInterval is how often a layer download in progress is
	// logged (bytes, seconds, MB/s); default 10 s, negative: never. Every
	// layer is also logged when done.
	ProgressInterval time.Duration
	// PullOptions, if set, gives PullImage its per-pull options (signature
	// verifier, layer key provider); an error fails that pull.
	PullOptions func(ctx context.Context) (PullOptions, error)
}

// Puller pulls images into one layer store. It is safe for concurrent use.
type Puller struct {
	cfg   Config
	reg   *registry.Client
	store *store.Store
	log   *slog.Logger

	metrics pullMetrics
	bundles bundles
}

// New builds a Puller and opens its store.
func New(cfg Config) (*Puller, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.MaxConcurrentLayers <= 0 {
		cfg.MaxConcurrentLayers = 3
	}
	if cfg.MaxLayers <= 0 {
		cfg.MaxLayers = oci.DefaultMaxLayers
	}
	if cfg.Platform.OS == "" {
		cfg.Platform = oci.DefaultPlatform()
	}
	if cfg.ProgressInterval == 0 {
		cfg.ProgressInterval = 10 * time.Second
	}
	if cfg.MaxZstdWindow == 0 {
		cfg.MaxZstdWindow = 64 << 20
	}
	if cfg.Unpack.Logger == nil {
		cfg.Unpack.Logger = cfg.Logger
	}
	if cfg.Registry.Logger == nil {
		cfg.Registry.Logger = cfg.Logger
	}
	reg, err := registry.New(cfg.Registry)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(cfg.WorkDir, cfg.Logger)
	if err != nil {
		return nil, err
	}
	return &Puller{cfg: cfg, reg: reg, store: st, log: cfg.Logger}, nil
}

// Store returns the layer store (for rootfs preparation and GC).
func (p *Puller) Store() *store.Store { return p.store }

// Registry returns the registry client (for its Stats).
func (p *Puller) Registry() *registry.Client { return p.reg }

// PullOptions are per-pull settings.
type PullOptions struct {
	// Platform overrides Config.Platform.
	Platform *oci.Platform
	// Verifier, if set, must accept the manifest before layers are fetched.
	Verifier Verifier
	// KeyProvider unwraps encrypted layer keys. An image with encrypted
	// layers and no KeyProvider is refused (ErrFailedPrecondition). Keys
	// are unwrapped for every encrypted layer, also for layers already in
	// the store, so that holding the key is always required.
	KeyProvider KeyProvider
}

// Image is a pulled image.
type Image struct {
	// Reference is the normalised reference pulled.
	Reference string
	// ManifestDigest is the digest of the platform manifest used.
	ManifestDigest oci.Digest
	// IndexDigest is the digest of the index, if the reference named one.
	IndexDigest oci.Digest
	// ConfigDigest identifies the image config (the image ID).
	ConfigDigest oci.Digest
	Config       *oci.ImageConfig
	RawConfig    []byte
	// Layers are the layer directories, bottom first; DiffIDs match them.
	Layers  []string
	DiffIDs []oci.Digest
	// Stats describes the pull.
	Stats PullStats
}

// PullStats describes one pull.
type PullStats struct {
	Duration                    time.Duration
	LayersFetched, LayersReused int
	// LayersDecrypted counts the fetched layers that were encrypted.
	LayersDecrypted          int
	BlobBytes, UnpackedBytes int64
}

// Pull pulls ref and takes a reference on each of its layers; call Release
// when no container uses the image any more.
func (p *Puller) Pull(ctx context.Context, refStr string, opts PullOptions) (_ *Image, retErr error) {
	start := time.Now()
	p.metrics.started.Add(1)
	p.metrics.inProgress.Add(1)
	defer func() {
		d := time.Since(start)
		p.metrics.inProgress.Add(-1)
		p.metrics.nanos.Add(uint64(d))
		if retErr != nil {
			p.metrics.failed.Add(1)
			return
		}
		p.metrics.succeeded.Add(1)
		p.metrics.lastNanos.Store(uint64(d))
	}()
	ref, err := reference.Parse(refStr)
	if err != nil {
		return nil, err
	}
	platform := p.cfg.Platform
	if opts.Platform != nil {
		platform = *opts.Platform
	}
	log := p.log.With("image", ref.String())

	repo, top, err := p.reg.Resolve(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, err)
	}
	info := ManifestInfo{Reference: ref, Artifacts: repo}
	doc := top
	var m *oci.Manifest
	descType := ""
	for depth := 0; ; depth++ {
		man, idx, err := oci.ParseDocument(doc.Body, doc.ContentType, descType, p.cfg.MaxLayers)
		if err != nil {
			return nil, fmt.Errorf("pulling %s: %w", ref, err)
		}
		if man != nil {
			m = man
			info.Digest, info.MediaType, info.Body = doc.Digest, man.MediaType, doc.Body
			break
		}
		if depth >= 2 {
			return nil, fmt.Errorf("pulling %s: indexes nested deeper than 2: %w", ref, errdefs.ErrInvalidArgument)
		}
		if info.IndexDigest.IsZero() {
			info.IndexDigest, info.IndexBody = doc.Digest, doc.Body
		}
		desc, err := idx.SelectManifest(platform)
		if err != nil {
			return nil, fmt.Errorf("pulling %s: %w", ref, err)
		}
		descType = desc.MediaType
		if doc, err = repo.FetchManifest(ctx, desc.Digest); err != nil {
			return nil, fmt.Errorf("pulling %s: %w", ref, err)
		}
	}
	if opts.Verifier != nil {
		if err := opts.Verifier.VerifyManifest(ctx, info); err != nil {
			return nil, fmt.Errorf("pulling %s: image refused by policy: %w", ref, err)
		}
	}
	ciphers, err := p.unwrapKeys(ctx, m.Layers, opts.KeyProvider)
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, err)
	}
	rawCfg, err := repo.FetchBlob(ctx, m.Config, oci.MaxConfigBytes)
	if err != nil {
		return nil, fmt.Errorf("pulling %s: config: %w", ref, err)
	}
	cfg, err := oci.ParseConfig(rawCfg, len(m.Layers))
	if err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, err)
	}
	img := &Image{
		Reference: ref.String(), ManifestDigest: info.Digest, IndexDigest: info.IndexDigest,
		ConfigDigest: m.Config.Digest, Config: cfg, RawConfig: rawCfg,
		Layers: make([]string, len(m.Layers)), DiffIDs: cfg.RootFS.DiffIDs,
	}
	if err := p.pullLayers(ctx, repo, m.Layers, ciphers, img, log); err != nil {
		return nil, fmt.Errorf("pulling %s: %w", ref, err)
	}
	img.Stats.Duration = time.Since(start)
	log.Info("image pulled", "manifest", info.Digest.String(), "layers", len(m.Layers),
		"fetched", img.Stats.LayersFetched, "reused", img.Stats.LayersReused,
		"blob_bytes", img.Stats.BlobBytes, "unpacked_bytes", img.Stats.UnpackedBytes,
		"seconds", roundSecs(img.Stats.Duration.Seconds()), "mb_per_s", mbPerSec(img.Stats.BlobBytes, img.Stats.Duration.Seconds()))
	return img, nil
}

// pullLayers acquires every layer, MaxConcurrentLayers at a time. On error
// the references already taken are dropped.
func (p *Puller) pullLayers(ctx context.Context, repo *registry.Repo, layers []oci.Descriptor, ciphers []*ocicrypt.Layer, img *Image, log *slog.Logger) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, p.cfg.MaxConcurrentLayers)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		errs     []error
		acquired []oci.Digest
	)
	for i, desc := range layers {
		diffID := img.DiffIDs[i]
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			var ls layerStats
			dir, cached, err := p.store.Acquire(ctx, diffID, func(ctx context.Context, staging string) error {
				var err error
				ls, err = p.fetchLayer(ctx, repo, desc, diffID, ciphers[i], staging, log)
				return err
			})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("layer %d (%s): %w", i, desc.Digest, err))
				cancel()
				return
			}
			acquired = append(acquired, diffID)
			img.Layers[i] = dir
			if cached {
				img.Stats.LayersReused++
				p.metrics.layersCache.Add(1)
				return
			}
			img.Stats.LayersFetched++
			p.metrics.layersFetched.Add(1)
			p.metrics.bytesUnpack.Add(uint64(max(ls.unpacked.Bytes, 0)))
			if ciphers[i] != nil {
				img.Stats.LayersDecrypted++
				p.metrics.layersDecrypted.Add(1)
			}
			img.Stats.BlobBytes += ls.blobBytes
			img.Stats.UnpackedBytes += ls.unpacked.Bytes
		}()
	}
	wg.Wait()
	if len(errs) == 0 && ctx.Err() != nil {
		errs = append(errs, ctx.Err())
	}
	if len(errs) > 0 {
		p.store.Release(acquired...)
		// Report the root cause, not the cancellations it caused.
		for _, e := range errs {
			if !errors.Is(e, context.Canceled) {
				return e
			}
		}
		return errs[0]
	}
	return nil
}

// unwrapKeys gets the key of every encrypted layer before any layer is
// fetched (a missing key should not cost a download), a few at a time.
// The result has one entry per layer, nil for plain ones.
func (p *Puller) unwrapKeys(ctx context.Context, layers []oci.Descriptor, kp KeyProvider) ([]*ocicrypt.Layer, error) {
	ciphers := make([]*ocicrypt.Layer, len(layers))
	var idx []int
	for i, l := range layers {
		if li, _ := oci.ParseLayerMediaType(l.MediaType); li.Encrypted {
			idx = append(idx, i)
		}
	}
	if len(idx) == 0 {
		return ciphers, nil
	}
	if kp == nil {
		return nil, fmt.Errorf("layer %d is encrypted (%s) and no key provider is configured: %w", idx[0], layers[idx[0]].MediaType, errdefs.ErrFailedPrecondition)
	}
	errs := make([]error, len(layers))
	sem := make(chan struct{}, p.cfg.MaxConcurrentLayers)
	var wg sync.WaitGroup
	for _, i := range idx {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			opts, err := kp.UnwrapKey(ctx, layers[i])
			if err != nil {
				errs[i] = fmt.Errorf("layer %d (%s): unwrapping its key: %w", i, layers[i].Digest, err)
				return
			}
			if ciphers[i], err = ocicrypt.Prepare(layers[i], opts); err != nil {
				errs[i] = fmt.Errorf("layer %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	return ciphers, nil
}

// Release drops the image's references on its layers; unreferenced layers
// are removed by Store().GC().
func (p *Puller) Release(img *Image) {
	if img != nil {
		p.store.Release(img.DiffIDs...)
	}
}
