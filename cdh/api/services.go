package api

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/cova-project/cova/internal/rpcutil"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	cdhpb "github.com/cova-project/cova/protocols/cdh"
	"github.com/cova-project/cova/protocols/keyprovider"
)

// Service names, as upstream clients spell them.
const (
	SealedSecretService = "api.SealedSecretService"
	GetResourceService  = "api.GetResourceService"
	SecureMountService  = "api.SecureMountService"
	ImagePullService    = "api.ImagePullService"
	KeyProviderService  = "keyprovider.KeyProviderService"
)

// run calls f for rpc: it recovers a panic (INTERNAL, the server keeps
// serving), maps a failure to a gRPC status naming the rpc and logs it
// without request or response values.
func run[T any](ctx context.Context, s *Server, rpc string, f func(context.Context) (*T, error)) (resp *T, err error) {
	start := time.Now()
	defer func() {
		if r := recover(); r != nil {
			// The panic value is logged, not returned: it is ours, not the
			// caller's, and could in principle carry request data.
			s.log.Error("panic in CDH rpc", "rpc", rpc, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			resp, err = nil, status.Errorf(codes.Internal, "%s: internal error", rpc)
			return
		}
		if err != nil {
			resp, err = nil, toStatus(rpc, err)
			s.log.Info("CDH rpc failed", "rpc", rpc, "err", err, "ms", time.Since(start).Milliseconds())
			return
		}
		s.log.Debug("CDH rpc", "rpc", rpc, "ms", time.Since(start).Milliseconds())
	}()
	return f(ctx)
}

// toStatus maps err to a gRPC status whose message names the rpc.
func toStatus(rpc string, err error) error { return rpcutil.Status(rpc, err) }

// unimplemented answers an rpc whose dependency is not wired.
func unimplemented(rpc, what string) error {
	return fmt.Errorf("%s is not available in this agent (no %s configured): %w", rpc, what, errdefs.ErrNotImplemented)
}

// UnsealSecret unseals req.secret.
func (s *Server) UnsealSecret(ctx context.Context, req *cdhpb.UnsealSecretInput) (*cdhpb.UnsealSecretOutput, error) {
	return run(ctx, s, "UnsealSecret", func(ctx context.Context) (*cdhpb.UnsealSecretOutput, error) {
		if err := checkSecret(req.GetSecret()); err != nil {
			return nil, err
		}
		if s.unsealer == nil {
			return nil, unimplemented("UnsealSecret", "sealed secret unsealer")
		}
		plain, err := s.unsealer.Unseal(ctx, string(req.GetSecret()))
		if err != nil {
			return nil, fmt.Errorf("unseal secret: %w", err)
		}
		if len(plain) > s.maxResource {
			return nil, fmt.Errorf("unsealed secret: %d bytes, more than %d fit a reply: %w", len(plain), s.maxResource, errdefs.ErrResourceExhausted)
		}
		return &cdhpb.UnsealSecretOutput{Plaintext: plain}, nil
	})
}

// GetResource fetches the resource req.ResourcePath names.
func (s *Server) GetResource(ctx context.Context, req *cdhpb.GetResourceRequest) (*cdhpb.GetResourceResponse, error) {
	return run(ctx, s, "GetResource", func(ctx context.Context) (*cdhpb.GetResourceResponse, error) {
		uri, err := checkResourcePath(req.GetResourcePath())
		if err != nil {
			return nil, err
		}
		if s.resources == nil {
			return nil, unimplemented("GetResource", "KBS resource getter")
		}
		res, err := s.resources.GetResource(ctx, uri)
		if err != nil {
			return nil, fmt.Errorf("get resource %s: %w", uri, err)
		}
		if len(res) > s.maxResource {
			return nil, fmt.Errorf("resource %s: %d bytes, more than %d fit a reply: %w", uri, len(res), s.maxResource, errdefs.ErrResourceExhausted)
		}
		return &cdhpb.GetResourceResponse{Resource: res}, nil
	})
}

// SecureMount sets up the volume req describes.
func (s *Server) SecureMount(ctx context.Context, req *cdhpb.SecureMountRequest) (*cdhpb.SecureMountResponse, error) {
	return run(ctx, s, "SecureMount", func(ctx context.Context) (*cdhpb.SecureMountResponse, error) {
		if err := s.checkSecureMount(req); err != nil {
			return nil, err
		}
		if s.mounter == nil {
			return nil, unimplemented("SecureMount", "secure mounter")
		}
		// Copies: the mounter must not alias the decoded request.
		opts := make(map[string]string, len(req.GetOptions()))
		for k, v := range req.GetOptions() {
			opts[k] = v
		}
		flags := append([]string(nil), req.GetFlags()...)
		at, err := s.mounter.SecureMount(ctx, req.GetVolumeType(), opts, flags, req.GetMountPoint())
		if err != nil {
			return nil, fmt.Errorf("secure mount %s volume at %s: %w", req.GetVolumeType(), req.GetMountPoint(), err)
		}
		// Upstream's reply is empty; where it ended up is only logged.
		s.log.Debug("secure mount done", "volume_type", req.GetVolumeType(), "mount_point", at)
		return &cdhpb.SecureMountResponse{}, nil
	})
}

// PullImage pulls req.image_url into req.bundle_path.
func (s *Server) PullImage(ctx context.Context, req *cdhpb.ImagePullRequest) (*cdhpb.ImagePullResponse, error) {
	return run(ctx, s, "PullImage", func(ctx context.Context) (*cdhpb.ImagePullResponse, error) {
		if err := checkImageURL(req.GetImageUrl()); err != nil {
			return nil, err
		}
		if err := checkUnder("bundle_path", req.GetBundlePath(), s.bundleRoots); err != nil {
			return nil, err
		}
		if s.puller == nil {
			return nil, unimplemented("PullImage", "image puller")
		}
		digest, err := s.puller.PullImage(ctx, req.GetImageUrl(), req.GetBundlePath())
		if err != nil {
			return nil, fmt.Errorf("pull image %s: %w", clip(req.GetImageUrl()), err)
		}
		if digest == "" {
			return nil, fmt.Errorf("pull image %s: the puller returned no manifest digest: %w", clip(req.GetImageUrl()), errdefs.ErrInternal)
		}
		return &cdhpb.ImagePullResponse{ManifestDigest: digest}, nil
	})
}

// WrapKey is not served, as upstream's CDH: the answer is the NOT_FOUND
// status a ttrpc server gives for a method it does not implement.
func (s *Server) WrapKey(ctx context.Context, _ *keyprovider.KeyProviderKeyWrapProtocolInput) (*keyprovider.KeyProviderKeyWrapProtocolOutput, error) {
	return run(ctx, s, "WrapKey", func(context.Context) (*keyprovider.KeyProviderKeyWrapProtocolOutput, error) {
		return nil, status.Error(codes.NotFound, "/"+KeyProviderService+"/WrapKey is not supported")
	})
}

// UnWrapKey answers an ocicrypt key provider keyunwrap request: the input
// JSON carries a base64 AnnotationPacket, the output JSON the private
// options as serde's Vec<u8> (a JSON array of numbers), as ocicrypt-rs
// requires.
func (s *Server) UnWrapKey(ctx context.Context, req *keyprovider.KeyProviderKeyWrapProtocolInput) (*keyprovider.KeyProviderKeyWrapProtocolOutput, error) {
	return run(ctx, s, "UnWrapKey", func(ctx context.Context) (*keyprovider.KeyProviderKeyWrapProtocolOutput, error) {
		packet, err := parseUnwrapInput(req.GetKeyProviderKeyWrapProtocolInput())
		if err != nil {
			return nil, err
		}
		if s.unwrapper == nil {
			return nil, unimplemented("UnWrapKey", "key unwrapper")
		}
		opts, err := s.unwrapper.UnwrapKey(ctx, packet)
		if err != nil {
			return nil, fmt.Errorf("unwrap key: %w", err)
		}
		if len(opts) == 0 {
			return nil, errors.New("unwrap key: the key unwrapper returned no private options")
		}
		if len(opts) > s.maxOptsLength {
			return nil, fmt.Errorf("unwrap key: %d bytes of private options, more than %d: %w", len(opts), s.maxOptsLength, errdefs.ErrResourceExhausted)
		}
		return &keyprovider.KeyProviderKeyWrapProtocolOutput{KeyProviderKeyWrapProtocolOutput: unwrapOutput(opts)}, nil
	})
}
