package oci

import (
	"bytes"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"

	"github.com/containerd/errdefs"
)

// Media types the puller understands.
const (
	MediaTypeOCIManifest     = "application/vnd.oci.image.manifest.v1+json"
	MediaTypeOCIIndex        = "application/vnd.oci.image.index.v1+json"
	MediaTypeDockerManifest  = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerList      = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerSchema1   = "application/vnd.docker.distribution.manifest.v1+json"
	MediaTypeDockerSchema1JW = "application/vnd.docker.distribution.manifest.v1+prettyjws"

	MediaTypeOCIConfig    = "application/vnd.oci.image.config.v1+json"
	MediaTypeDockerConfig = "application/vnd.docker.container.image.v1+json"

	MediaTypeOCILayer           = "application/vnd.oci.image.layer.v1.tar"
	MediaTypeOCILayerGzip       = "application/vnd.oci.image.layer.v1.tar+gzip"
	MediaTypeOCILayerZstd       = "application/vnd.oci.image.layer.v1.tar+zstd"
	MediaTypeOCILayerND         = "application/vnd.oci.image.layer.nondistributable.v1.tar"
	MediaTypeOCILayerNDGzip     = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
	MediaTypeOCILayerNDZstd     = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
	MediaTypeDockerLayer        = "application/vnd.docker.image.rootfs.diff.tar.gzip"
	MediaTypeDockerForeignLayer = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
	MediaTypeEncryptedSuffix    = "+encrypted"
)

// ManifestAccept is the Accept header value for manifest requests.
var ManifestAccept = strings.Join([]string{
	MediaTypeOCIIndex, MediaTypeOCIManifest, MediaTypeDockerList, MediaTypeDockerManifest,
}, ", ")

// Limits on metadata documents, as in containers/image.
const (
	MaxManifestBytes = 4 << 20
	MaxConfigBytes   = 4 << 20
	DefaultMaxLayers = 128
)

// Compression of a layer blob.
type Compression int

// Layer compressions.
const (
	Uncompressed Compression = iota
	Gzip
	Zstd
)

func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case Zstd:
		return "zstd"
	default:
		return "none"
	}
}

// LayerInfo describes how to read a layer media type.
type LayerInfo struct {
	Compression Compression
	Encrypted   bool
}

// ParseLayerMediaType classifies a layer media type. Unknown types are
// ErrNotImplemented.
func ParseLayerMediaType(mt string) (LayerInfo, error) {
	base, enc := strings.CutSuffix(mt, MediaTypeEncryptedSuffix)
	var info LayerInfo
	info.Encrypted = enc
	switch base {
	case MediaTypeOCILayer, MediaTypeOCILayerND:
		info.Compression = Uncompressed
	case MediaTypeOCILayerGzip, MediaTypeOCILayerNDGzip, MediaTypeDockerLayer, MediaTypeDockerForeignLayer:
		info.Compression = Gzip
	case MediaTypeOCILayerZstd, MediaTypeOCILayerNDZstd:
		info.Compression = Zstd
	default:
		return LayerInfo{}, fmt.Errorf("layer media type %q: %w", clip(mt), errdefs.ErrNotImplemented)
	}
	return info, nil
}

// Descriptor points at a blob.
type Descriptor struct {
	MediaType    string            `json:"mediaType,omitempty"`
	Digest       Digest            `json:"digest"`
	Size         int64             `json:"size"`
	URLs         []string          `json:"urls,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Platform     *Platform         `json:"platform,omitempty"`
	ArtifactType string            `json:"artifactType,omitempty"`
}

func (d Descriptor) validate(field string, maxSize int64) error {
	if d.Digest.IsZero() {
		return fmt.Errorf("%s.digest: missing: %w", field, errdefs.ErrInvalidArgument)
	}
	if d.Size < 0 || (maxSize > 0 && d.Size > maxSize) {
		return fmt.Errorf("%s.size %d: out of range: %w", field, d.Size, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Platform is an image platform.
type Platform struct {
	Architecture string   `json:"architecture"`
	OS           string   `json:"os"`
	OSVersion    string   `json:"os.version,omitempty"`
	OSFeatures   []string `json:"os.features,omitempty"`
	Variant      string   `json:"variant,omitempty"`
}

// DefaultPlatform is linux on the architecture this binary was built for.
func DefaultPlatform() Platform {
	return Platform{OS: "linux", Architecture: runtime.GOARCH}
}

func (p Platform) String() string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// normVariant maps the implied default variants to "".
func normVariant(arch, v string) string {
	switch {
	case arch == "arm64" && v == "v8", arch == "amd64" && v == "v1":
		return ""
	}
	return v
}

// Matches reports whether an index entry for platform q can run on p. An
// empty Variant in p accepts any variant.
func (p Platform) Matches(q Platform) bool {
	if p.OS != q.OS || p.Architecture != q.Architecture {
		return false
	}
	want := normVariant(p.Architecture, p.Variant)
	return want == "" || want == normVariant(q.Architecture, q.Variant)
}

// Manifest is an OCI image manifest or a Docker schema2 manifest.
type Manifest struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType,omitempty"`
	Config        Descriptor        `json:"config"`
	Layers        []Descriptor      `json:"layers"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// Index is an OCI image index or a Docker manifest list.
type Index struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType,omitempty"`
	Manifests     []Descriptor      `json:"manifests"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// union is the superset used to detect ambiguous documents.
type union struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Config        json.RawMessage `json:"config"`
	Layers        json.RawMessage `json:"layers"`
	Manifests     json.RawMessage `json:"manifests"`
	FSLayers      json.RawMessage `json:"fsLayers"`
}

func isManifestType(mt string) bool {
	return mt == MediaTypeOCIManifest || mt == MediaTypeDockerManifest
}

func isIndexType(mt string) bool {
	return mt == MediaTypeOCIIndex || mt == MediaTypeDockerList
}

// knownDocType reports whether mt names a manifest or index type (so a
// Content-Type of, say, application/json is not held against the body).
func knownDocType(mt string) bool {
	return isManifestType(mt) || isIndexType(mt) || mt == MediaTypeDockerSchema1 || mt == MediaTypeDockerSchema1JW
}

// ParseDocument decodes a manifest or index. contentType is the registry's
// Content-Type and descType the mediaType of the descriptor that pointed here
// (either may be ""). It returns exactly one of *Manifest or *Index.
//
// A document is rejected when it carries both "manifests" and
// "layers"/"config" (CVE-2021-41190), when the media types named by the
// body, the Content-Type and the descriptor disagree, or when a layer
// count exceeds maxLayers (0 means DefaultMaxLayers).
func ParseDocument(body []byte, contentType, descType string, maxLayers int) (*Manifest, *Index, error) {
	if len(body) > MaxManifestBytes {
		return nil, nil, fmt.Errorf("manifest: %d bytes exceeds the %d byte limit: %w", len(body), MaxManifestBytes, errdefs.ErrInvalidArgument)
	}
	if maxLayers <= 0 {
		maxLayers = DefaultMaxLayers
	}
	contentType = strings.TrimSpace(strings.Split(contentType, ";")[0])
	var u union
	if err := json.Unmarshal(body, &u); err != nil {
		return nil, nil, fmt.Errorf("manifest: decoding JSON: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if u.FSLayers != nil || u.SchemaVersion == 1 || contentType == MediaTypeDockerSchema1 || contentType == MediaTypeDockerSchema1JW {
		return nil, nil, fmt.Errorf("manifest: Docker schema1 images: %w", errdefs.ErrNotImplemented)
	}
	if u.SchemaVersion != 2 {
		return nil, nil, fmt.Errorf("manifest.schemaVersion %d: want 2: %w", u.SchemaVersion, errdefs.ErrInvalidArgument)
	}
	hasManifests := u.Manifests != nil && !bytes.Equal(u.Manifests, []byte("null"))
	hasImage := (u.Layers != nil && !bytes.Equal(u.Layers, []byte("null"))) ||
		(u.Config != nil && !bytes.Equal(u.Config, []byte("null")))
	if hasManifests && hasImage {
		return nil, nil, fmt.Errorf("manifest: has both manifests and layers/config (ambiguous): %w", errdefs.ErrInvalidArgument)
	}
	// Work out the media type from every source and insist they agree.
	mt := u.MediaType
	for _, other := range []struct{ name, v string }{{"Content-Type", contentType}, {"descriptor mediaType", descType}} {
		if other.v == "" || !knownDocType(other.v) {
			continue
		}
		if mt == "" {
			mt = other.v
		} else if mt != other.v {
			return nil, nil, fmt.Errorf("manifest: mediaType %q disagrees with %s %q: %w", clip(mt), other.name, clip(other.v), errdefs.ErrInvalidArgument)
		}
	}
	if mt == "" {
		// OCI allows mediaType to be absent; fall back to the shape.
		if hasManifests {
			mt = MediaTypeOCIIndex
		} else {
			mt = MediaTypeOCIManifest
		}
	}
	switch {
	case isIndexType(mt):
		if hasImage {
			return nil, nil, fmt.Errorf("manifest: index %q has layers/config: %w", mt, errdefs.ErrInvalidArgument)
		}
		var idx Index
		if err := json.Unmarshal(body, &idx); err != nil {
			return nil, nil, fmt.Errorf("index: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		idx.MediaType = mt
		if len(idx.Manifests) > 1024 {
			return nil, nil, fmt.Errorf("index.manifests: %d entries exceeds 1024: %w", len(idx.Manifests), errdefs.ErrInvalidArgument)
		}
		for i, d := range idx.Manifests {
			if err := d.validate(fmt.Sprintf("index.manifests[%d]", i), MaxManifestBytes); err != nil {
				return nil, nil, err
			}
		}
		return nil, &idx, nil
	case isManifestType(mt):
		if hasManifests {
			return nil, nil, fmt.Errorf("manifest: image manifest %q has manifests: %w", mt, errdefs.ErrInvalidArgument)
		}
		var m Manifest
		if err := json.Unmarshal(body, &m); err != nil {
			return nil, nil, fmt.Errorf("manifest: %v: %w", err, errdefs.ErrInvalidArgument)
		}
		m.MediaType = mt
		if err := m.Config.validate("manifest.config", MaxConfigBytes); err != nil {
			return nil, nil, err
		}
		switch m.Config.MediaType {
		case MediaTypeOCIConfig, MediaTypeDockerConfig, "":
		default:
			return nil, nil, fmt.Errorf("manifest.config.mediaType %q: not a container image: %w", clip(m.Config.MediaType), errdefs.ErrNotImplemented)
		}
		if len(m.Layers) > maxLayers {
			return nil, nil, fmt.Errorf("manifest.layers: %d layers exceeds the limit of %d: %w", len(m.Layers), maxLayers, errdefs.ErrInvalidArgument)
		}
		for i, l := range m.Layers {
			if err := l.validate(fmt.Sprintf("manifest.layers[%d]", i), 0); err != nil {
				return nil, nil, err
			}
			if _, err := ParseLayerMediaType(l.MediaType); err != nil {
				return nil, nil, fmt.Errorf("manifest.layers[%d]: %w", i, err)
			}
		}
		return &m, nil, nil
	default:
		return nil, nil, fmt.Errorf("manifest: media type %q: %w", clip(mt), errdefs.ErrNotImplemented)
	}
}

// SelectManifest picks the first entry of idx whose platform matches p.
func (idx *Index) SelectManifest(p Platform) (Descriptor, error) {
	for _, d := range idx.Manifests {
		if d.Platform == nil {
			continue
		}
		if !isManifestType(d.MediaType) && !isIndexType(d.MediaType) && d.MediaType != "" {
			continue
		}
		if p.Matches(*d.Platform) {
			return d, nil
		}
	}
	return Descriptor{}, fmt.Errorf("index: no manifest for platform %s: %w", p, errdefs.ErrNotFound)
}

// ImageConfig is the part of an image config the puller and the agent use.
type ImageConfig struct {
	Architecture string          `json:"architecture"`
	OS           string          `json:"os"`
	Variant      string          `json:"variant,omitempty"`
	Config       ContainerConfig `json:"config"`
	RootFS       RootFS          `json:"rootfs"`
}

// ContainerConfig is the runtime defaults in an image config.
type ContainerConfig struct {
	User         string              `json:"User,omitempty"`
	ExposedPorts map[string]struct{} `json:"ExposedPorts,omitempty"`
	Env          []string            `json:"Env,omitempty"`
	Entrypoint   []string            `json:"Entrypoint,omitempty"`
	Cmd          []string            `json:"Cmd,omitempty"`
	Volumes      map[string]struct{} `json:"Volumes,omitempty"`
	WorkingDir   string              `json:"WorkingDir,omitempty"`
	Labels       map[string]string   `json:"Labels,omitempty"`
	StopSignal   string              `json:"StopSignal,omitempty"`
}

// RootFS lists the uncompressed layer digests.
type RootFS struct {
	Type    string   `json:"type"`
	DiffIDs []Digest `json:"diff_ids"`
}

// ParseConfig decodes an image config and checks it against the manifest:
// rootfs.type must be "layers" and there must be one diff_id per layer.
func ParseConfig(body []byte, layers int) (*ImageConfig, error) {
	if len(body) > MaxConfigBytes {
		return nil, fmt.Errorf("config: %d bytes exceeds the %d byte limit: %w", len(body), MaxConfigBytes, errdefs.ErrInvalidArgument)
	}
	var c ImageConfig
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, fmt.Errorf("config: decoding JSON: %v: %w", err, errdefs.ErrInvalidArgument)
	}
	if c.RootFS.Type != "layers" {
		return nil, fmt.Errorf("config.rootfs.type %q: want \"layers\": %w", clip(c.RootFS.Type), errdefs.ErrInvalidArgument)
	}
	if len(c.RootFS.DiffIDs) != layers {
		return nil, fmt.Errorf("config.rootfs.diff_ids: %d entries for %d layers: %w", len(c.RootFS.DiffIDs), layers, errdefs.ErrInvalidArgument)
	}
	for i, d := range c.RootFS.DiffIDs {
		if d.IsZero() {
			return nil, fmt.Errorf("config.rootfs.diff_ids[%d]: empty: %w", i, errdefs.ErrInvalidArgument)
		}
	}
	return &c, nil
}
