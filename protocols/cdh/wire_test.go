package cdh_test

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cova-project/cova/protocols/cdh"
	"github.com/cova-project/cova/protocols/internal/wirefacts"
)

// goldenPath is the fact table dumped from guest-components'
// confidential-data-hub api.proto; see wirefacts.Facts for the line format.
var goldenPath = filepath.Join("testdata", "cdh-wire.txt")

// The ttrpc glue must exist with these names.
var (
	_ = cdh.RegisterSealedSecretServiceService
	_ = cdh.RegisterGetResourceServiceService
	_ = cdh.RegisterSecureMountServiceService
	_ = cdh.RegisterImagePullServiceService
	_ = cdh.NewSealedSecretServiceClient
	_ = cdh.NewGetResourceServiceClient
	_ = cdh.NewSecureMountServiceClient
	_ = cdh.NewImagePullServiceClient
)

// TestWireMatchesGuestComponents checks our descriptors against the facts
// dumped from upstream: anything missing, different or extra fails.
func TestWireMatchesGuestComponents(t *testing.T) {
	golden := wirefacts.ReadGolden(t, goldenPath)
	ours := wirefacts.Facts(cdh.File_cdh_api_proto)
	for _, l := range golden {
		if !slices.Contains(ours, l) {
			t.Errorf("missing or different in our proto: %s", l)
		}
	}
	for _, l := range ours {
		if !slices.Contains(golden, l) {
			t.Errorf("in our proto but not upstream: %s", l)
		}
	}
}

// TestWireFactsSeeDifferences guards the comparison: the facts must name
// field numbers, labels, map and scalar types and rpc signatures.
func TestWireFactsSeeDifferences(t *testing.T) {
	ours := wirefacts.Facts(cdh.File_cdh_api_proto)
	for _, line := range []string{
		"api.GetResourceRequest.ResourcePath 1 string",
		"api.SecureMountRequest.options 2 map<string,string>",
		"api.SecureMountRequest.flags 3 repeated string",
		"api.UnsealSecretInput.secret 1 bytes",
		"api.ImagePullRequest.bundle_path 2 string",
		"rpc api.SealedSecretService/UnsealSecret api.UnsealSecretInput api.UnsealSecretOutput",
	} {
		t.Run(line, func(t *testing.T) {
			if !slices.Contains(ours, line) {
				t.Errorf("fact %q not produced; facts format or proto changed", line)
			}
		})
	}
}

// TestWireBytes pins the encoding of a few messages.
func TestWireBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  proto.Message
		want []byte
	}{
		{"UnsealSecretInput", &cdh.UnsealSecretInput{Secret: []byte("s")}, []byte{0x0a, 1, 's'}},
		{"GetResourceRequest", &cdh.GetResourceRequest{ResourcePath: "k"}, []byte{0x0a, 1, 'k'}},
		{"GetResourceResponse", &cdh.GetResourceResponse{Resource: []byte{7}}, []byte{0x0a, 1, 7}},
		{"SecureMountRequest", &cdh.SecureMountRequest{VolumeType: "v", Options: map[string]string{"a": "b"}, Flags: []string{"f"}, MountPoint: "/m"},
			[]byte{0x0a, 1, 'v', 0x12, 6, 0x0a, 1, 'a', 0x12, 1, 'b', 0x1a, 1, 'f', 0x22, 2, '/', 'm'}},
		{"ImagePullRequest", &cdh.ImagePullRequest{ImageUrl: "i", BundlePath: "/b"}, []byte{0x0a, 1, 'i', 0x12, 2, '/', 'b'}},
		{"ImagePullResponse", &cdh.ImagePullResponse{ManifestDigest: "d"}, []byte{0x0a, 1, 'd'}},
		{"SecureMountResponse is empty", &cdh.SecureMountResponse{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := proto.MarshalOptions{Deterministic: true}.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("encoded %x, want %x", got, tc.want)
			}
		})
	}
}

func TestServices(t *testing.T) {
	for _, name := range []string{"SealedSecretService", "GetResourceService", "SecureMountService", "ImagePullService"} {
		t.Run(name, func(t *testing.T) {
			s := cdh.File_cdh_api_proto.Services().ByName(protoName(name))
			if s == nil || string(s.FullName()) != "api."+name {
				t.Fatalf("service api.%s not found", name)
			}
			if got := s.Methods().Len(); got != 1 {
				t.Errorf("%d rpcs, want 1", got)
			}
		})
	}
}

// stub answers GetResource with the path it was asked for.
type stub struct{}

func (stub) GetResource(_ context.Context, r *cdh.GetResourceRequest) (*cdh.GetResourceResponse, error) {
	return &cdh.GetResourceResponse{Resource: []byte(r.GetResourcePath())}, nil
}

// TestTTRPCServiceName serves the generated glue over a unix socket and
// calls it with the raw service and method strings upstream clients use.
func TestTTRPCServiceName(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	cdh.RegisterGetResourceServiceService(srv, stub{})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "cdh.sock"))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ctx, l) }()
	defer srv.Close()
	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()

	var resp cdh.GetResourceResponse
	if err := client.Call(ctx, "api.GetResourceService", "GetResource", &cdh.GetResourceRequest{ResourcePath: "kbs:///a/b/c"}, &resp); err != nil {
		t.Fatalf("raw call: %v", err)
	}
	if string(resp.GetResource()) != "kbs:///a/b/c" {
		t.Errorf("resource = %q, want the path echoed", resp.GetResource())
	}
	r, err := cdh.NewGetResourceServiceClient(client).GetResource(ctx, &cdh.GetResourceRequest{ResourcePath: "x"})
	if err != nil || string(r.GetResource()) != "x" {
		t.Errorf("generated client: %v, %v", r, err)
	}
}

func protoName(s string) protoreflect.Name { return protoreflect.Name(s) }
