package grpc_test

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/protocols/internal/wirefacts"
	"github.com/cova-project/cova/protocols/types"
)

// goldenPath is the fact table taken from Kata's own .proto files. Each line
// is one message, field, enum value, service or rpc; see wirefacts.Facts.
var goldenPath = filepath.Join("..", "testdata", "kata-wire.txt")

// The AgentService ttrpc glue must exist with these names.
var (
	_ = grpc.RegisterAgentServiceService
	_ = grpc.NewAgentServiceClient
)

// ourFiles are the compiled descriptors of every file in protocols/.
func ourFiles() []protoreflect.FileDescriptor {
	return []protoreflect.FileDescriptor{
		grpc.File_grpc_agent_proto,
		grpc.File_grpc_health_proto,
		grpc.File_grpc_oci_proto,
		grpc.File_grpc_csi_proto,
		types.File_types_types_proto,
	}
}

// TestWireMatchesKata checks our descriptors against the facts dumped from
// Kata's protos: anything missing, different or extra fails.
func TestWireMatchesKata(t *testing.T) {
	golden := wirefacts.ReadGolden(t, goldenPath)
	ours := wirefacts.Facts(ourFiles()...)

	want := make(map[string]bool, len(golden))
	for _, l := range golden {
		want[l] = true
	}
	have := make(map[string]bool, len(ours))
	for _, l := range ours {
		have[l] = true
	}
	for _, l := range golden {
		if !have[l] {
			t.Errorf("missing or different in our protos: %s", l)
		}
	}
	for _, l := range ours {
		if !want[l] {
			t.Errorf("in our protos but not in Kata's: %s", l)
		}
	}
}

// TestWireFactsSeeDifferences guards the comparison itself: a fact table
// must change when a field's number, name, type or label changes.
func TestWireFactsSeeDifferences(t *testing.T) {
	ours := wirefacts.Facts(ourFiles()...)
	for _, line := range []string{
		"grpc.CreateContainerRequest.container_id 1 string",
		"grpc.CreateContainerRequest.OCI 6 grpc.Spec",
		"grpc.CreateContainerRequest.devices 4 repeated grpc.Device",
		"grpc.MemoryStats.stats 6 map<string,uint64>",
		"grpc.MemAgentMemcgConfig.disabled 1 optional bool",
		"grpc.LinuxSyscall.errnoret 3 uint32 oneof ErrnoRet",
		"types.Interface.IPAddresses 3 repeated types.IPAddress",
		"enumvalue grpc.HealthCheckResponse.ServingStatus.SERVING 1",
		"rpc grpc.AgentService/CreateContainer grpc.CreateContainerRequest google.protobuf.Empty",
		"rpc grpc.Health/Check grpc.CheckRequest grpc.HealthCheckResponse",
	} {
		t.Run(line, func(t *testing.T) {
			if !slices.Contains(ours, line) {
				t.Errorf("fact %q not produced; facts format or protos changed", line)
			}
		})
	}
}

func TestServiceRPCCounts(t *testing.T) {
	tests := []struct {
		service protoreflect.FullName
		file    protoreflect.FileDescriptor
		want    int
	}{
		{"grpc.AgentService", grpc.File_grpc_agent_proto, 42},
		{"grpc.Health", grpc.File_grpc_health_proto, 2},
	}
	for _, tt := range tests {
		t.Run(string(tt.service), func(t *testing.T) {
			s := tt.file.Services().ByName(tt.service.Name())
			if s == nil || s.FullName() != tt.service {
				t.Fatalf("service %s not found", tt.service)
			}
			if got := s.Methods().Len(); got != tt.want {
				t.Errorf("%s has %d rpcs, want %d", tt.service, got, tt.want)
			}
		})
	}
}

// healthStub answers Health calls with fixed values.
type healthStub struct{}

func (healthStub) Check(context.Context, *grpc.CheckRequest) (*grpc.HealthCheckResponse, error) {
	return &grpc.HealthCheckResponse{Status: grpc.HealthCheckResponse_SERVING}, nil
}

func (healthStub) Version(context.Context, *grpc.CheckRequest) (*grpc.VersionCheckResponse, error) {
	return &grpc.VersionCheckResponse{GrpcVersion: "0.0.1", AgentVersion: "test"}, nil
}

// TestTTRPCServiceNames serves the generated Health glue over a unix socket
// and calls it with raw service/method strings, as the Kata shim does.
func TestTTRPCServiceNames(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatalf("new ttrpc server: %v", err)
	}
	grpc.RegisterHealthService(srv, healthStub{})

	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s.sock"))
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	go func() { _ = srv.Serve(ctx, l) }()
	defer srv.Close()

	conn, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	client := ttrpc.NewClient(conn)
	defer client.Close()

	t.Run("raw grpc.Health/Check", func(t *testing.T) {
		var resp grpc.HealthCheckResponse
		if err := client.Call(ctx, "grpc.Health", "Check", &grpc.CheckRequest{}, &resp); err != nil {
			t.Fatalf("call: %v", err)
		}
		if resp.GetStatus() != grpc.HealthCheckResponse_SERVING {
			t.Errorf("status = %v, want SERVING", resp.GetStatus())
		}
	})
	t.Run("generated client Version", func(t *testing.T) {
		resp, err := grpc.NewHealthClient(client).Version(ctx, &grpc.CheckRequest{})
		if err != nil {
			t.Fatalf("call: %v", err)
		}
		if resp.GetGrpcVersion() != "0.0.1" || resp.GetAgentVersion() != "test" {
			t.Errorf("got %+v", resp)
		}
	})
	t.Run("unknown service is refused", func(t *testing.T) {
		var resp grpc.HealthCheckResponse
		if err := client.Call(ctx, "grpc.NoSuch", "Check", &grpc.CheckRequest{}, &resp); err == nil {
			t.Error("call to an unregistered service succeeded")
		}
	})
}
