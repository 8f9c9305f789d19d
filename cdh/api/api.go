// Package api serves the Confidential Data Hub's ttrpc API in process: the
// services guest-components' CDH offers on
// unix:///run/confidential-containers/cdh.sock, wire-identical to upstream
// (protocols/cdh, protocols/keyprovider):
//
//   - api.SealedSecretService/UnsealSecret: a "sealed.…" secret → plaintext;
//   - api.GetResourceService/GetResource: a kbs:///repo/type/tag (or
//     kbs+<plugin>:///…) resource from the KBS;
//   - api.SecureMountService/SecureMount: an encrypted or ephemeral volume;
//   - api.ImagePullService/PullImage: an image into <bundle_path>/rootfs;
//   - keyprovider.KeyProviderService/UnWrapKey: an ocicrypt layer key from
//     CoCo's annotation packet, with the JSON contract ocicrypt-rs speaks
//     (WrapKey is not served, as upstream).
//
// The work is done by small dependencies (ResourceGetter, Unsealer,
// SecureMounter, ImagePuller, KeyUnwrapper); a nil one makes its rpc answer
// UNIMPLEMENTED. Every request field is validated before a dependency sees
// it (INVALID_ARGUMENT naming the field); errdefs classes become gRPC codes
// at this edge; a panic fails only its own request (INTERNAL). Nothing secret
// is logged: not sealed strings, plaintexts, resources, option values or
// keys.
package api

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"

	cdhpb "github.com/cova-project/cova/protocols/cdh"
	"github.com/cova-project/cova/protocols/keyprovider"
)

// ResourceGetter fetches a confidential resource. uri is a validated,
// host-less kbs:///repo/type/tag or kbs+<plugin>:///path[?query] URI. The
// KBS client satisfies it through ResourceGetterFunc((*kbs.Client).Resource);
// it is the same shape as imagepull.ResourceGetter and sealed.Resources.
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// Unsealer unseals a sealed secret ("sealed.<header>.<payload>.<sig>");
// *sealed.Unsealer implements it.
type Unsealer interface {
	Unseal(ctx context.Context, secret string) ([]byte, error)
}

// SecureMounter sets up a secure volume (e.g. volumeType "block-device"
// with LUKS2) at mountPoint and returns where it is mounted. options may
// hold key material references (sealed secrets, kbs:// URIs): never log
// their values.
type SecureMounter interface {
	SecureMount(ctx context.Context, volumeType string, options map[string]string, flags []string, mountPoint string) (string, error)
}

// ImagePuller pulls imageURL and prepares its root file system under
// bundlePath/rootfs (and bundlePath/config.json, as image-rs does),
// returning the manifest digest (sha256:…). Recording the PullImage
// runtime measurement is its job, as in guest-components' CDH. bundlePath
// is checked lexically only (absolute, clean, below a bundle root): the
// puller must not follow symlinks out of it.
type ImagePuller interface {
	PullImage(ctx context.Context, imageURL, bundlePath string) (manifestDigest string, err error)
}

// KeyUnwrapper returns the ocicrypt private options (the layer key JSON)
// wrapped in a CoCo AnnotationPacket (the JSON the
// org.opencontainers.image.enc.keys.provider.attestation-agent annotation
// carries, base64-decoded). ocicrypt.UnwrapPacket with the KBS as resource
// getter does this.
type KeyUnwrapper interface {
	UnwrapKey(ctx context.Context, annotationPacket []byte) ([]byte, error)
}

// ResourceGetterFunc adapts a function to ResourceGetter.
type ResourceGetterFunc func(ctx context.Context, uri string) ([]byte, error)

// GetResource calls f.
func (f ResourceGetterFunc) GetResource(ctx context.Context, uri string) ([]byte, error) {
	return f(ctx, uri)
}

// UnsealerFunc adapts a function to Unsealer.
type UnsealerFunc func(ctx context.Context, secret string) ([]byte, error)

// Unseal calls f.
func (f UnsealerFunc) Unseal(ctx context.Context, secret string) ([]byte, error) {
	return f(ctx, secret)
}

// SecureMounterFunc adapts a function to SecureMounter.
type SecureMounterFunc func(ctx context.Context, volumeType string, options map[string]string, flags []string, mountPoint string) (string, error)

// SecureMount calls f.
func (f SecureMounterFunc) SecureMount(ctx context.Context, volumeType string, options map[string]string, flags []string, mountPoint string) (string, error) {
	return f(ctx, volumeType, options, flags, mountPoint)
}

// ImagePullerFunc adapts a function to ImagePuller.
type ImagePullerFunc func(ctx context.Context, imageURL, bundlePath string) (string, error)

// PullImage calls f.
func (f ImagePullerFunc) PullImage(ctx context.Context, imageURL, bundlePath string) (string, error) {
	return f(ctx, imageURL, bundlePath)
}

// KeyUnwrapperFunc adapts a function to KeyUnwrapper.
type KeyUnwrapperFunc func(ctx context.Context, annotationPacket []byte) ([]byte, error)

// UnwrapKey calls f.
func (f KeyUnwrapperFunc) UnwrapKey(ctx context.Context, annotationPacket []byte) ([]byte, error) {
	return f(ctx, annotationPacket)
}

// DefaultRoot is the default (and Kata's) parent of container bundles and
// secure mount points.
const DefaultRoot = "/run/kata-containers"

// Config configures a Server. Every dependency is optional: a nil one
// makes its rpc answer UNIMPLEMENTED. (Leave it nil rather than set a
// typed nil pointer, which is a non-nil interface.)
type Config struct {
	// Resources serves GetResource.
	Resources ResourceGetter
	// Unsealer serves UnsealSecret.
	Unsealer Unsealer
	// SecureMounter serves SecureMount.
	SecureMounter SecureMounter
	// ImagePuller serves PullImage.
	ImagePuller ImagePuller
	// KeyUnwrapper serves keyprovider UnWrapKey.
	KeyUnwrapper KeyUnwrapper

	// BundleRoots are the directories PullImage's bundle_path must lie
	// strictly below; [DefaultRoot] when empty. Absolute and clean.
	BundleRoots []string
	// MountRoots are the directories SecureMount's mount_point must lie
	// strictly below; [DefaultRoot] when empty. Absolute and clean.
	MountRoots []string

	// Logger gets one debug line per call and one line per failure (rpc,
	// error, duration; never values); discarded when nil.
	Logger *slog.Logger
}

// Server implements the CDH services (cdhpb.SealedSecretServiceService,
// GetResourceServiceService, SecureMountServiceService,
// ImagePullServiceService and keyprovider.KeyProviderServiceService). Its
// methods may also be called in process; they return gRPC status errors.
type Server struct {
	resources     ResourceGetter
	unsealer      Unsealer
	mounter       SecureMounter
	puller        ImagePuller
	unwrapper     KeyUnwrapper
	bundleRoots   []string
	mountRoots    []string
	log           *slog.Logger
	maxResource   int // a test seam; MaxResourceSize
	maxOptsLength int // a test seam; MaxPrivateOptionsSize
}

var (
	_ cdhpb.SealedSecretServiceService      = (*Server)(nil)
	_ cdhpb.GetResourceServiceService       = (*Server)(nil)
	_ cdhpb.SecureMountServiceService       = (*Server)(nil)
	_ cdhpb.ImagePullServiceService         = (*Server)(nil)
	_ keyprovider.KeyProviderServiceService = (*Server)(nil)
)

// New returns a Server. It fails only on a malformed root.
func New(cfg Config) (*Server, error) {
	s := &Server{
		resources: cfg.Resources,
		unsealer:  cfg.Unsealer,
		mounter:   cfg.SecureMounter,
		puller:    cfg.ImagePuller,
		unwrapper: cfg.KeyUnwrapper,
		log:       cfg.Logger,

		maxResource:   MaxResourceSize,
		maxOptsLength: MaxPrivateOptionsSize,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	var err error
	if s.bundleRoots, err = roots("BundleRoots", cfg.BundleRoots); err != nil {
		return nil, err
	}
	if s.mountRoots, err = roots("MountRoots", cfg.MountRoots); err != nil {
		return nil, err
	}
	return s, nil
}

func roots(field string, in []string) ([]string, error) {
	if len(in) == 0 {
		return []string{DefaultRoot}, nil
	}
	out := make([]string, 0, len(in))
	for i, r := range in {
		if !filepath.IsAbs(r) || filepath.Clean(r) != r || r == "/" {
			return nil, fmt.Errorf("cdh api: %s[%d] %q: want an absolute, clean directory other than /: %w", field, i, r, errdefs.ErrInvalidArgument)
		}
		out = append(out, r)
	}
	return out, nil
}

// Register registers all five services on srv. The handlers recover their
// own panics and map errors to status codes, so srv needs no interceptor;
// NewTTRPCServer adds one that also classifies undecodable requests as
// INVALID_ARGUMENT.
func (s *Server) Register(srv *ttrpc.Server) {
	cdhpb.RegisterSealedSecretServiceService(srv, s)
	cdhpb.RegisterGetResourceServiceService(srv, s)
	cdhpb.RegisterSecureMountServiceService(srv, s)
	cdhpb.RegisterImagePullServiceService(srv, s)
	keyprovider.RegisterKeyProviderServiceService(srv, s)
}
