package aa_test

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	"github.com/cova-project/cova/protocols/aa"
	"github.com/cova-project/cova/protocols/internal/wirefacts"
)

// goldenPath is the fact table dumped from guest-components'
// attestation-agent.proto; see wirefacts.Facts for the line format.
var goldenPath = filepath.Join("testdata", "aa-wire.txt")

// The ttrpc glue must exist with these names.
var (
	_ = aa.RegisterAttestationAgentServiceService
	_ = aa.NewAttestationAgentServiceClient
)

// TestWireMatchesGuestComponents checks our descriptors against the facts
// dumped from upstream: anything missing, different or extra fails.
func TestWireMatchesGuestComponents(t *testing.T) {
	golden := wirefacts.ReadGolden(t, goldenPath)
	ours := wirefacts.Facts(aa.File_aa_attestation_agent_proto)
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
// field numbers, labels and types, enum values and rpc signatures.
func TestWireFactsSeeDifferences(t *testing.T) {
	ours := wirefacts.Facts(aa.File_aa_attestation_agent_proto)
	for _, line := range []string{
		"attestation_agent.GetEvidenceRequest.RuntimeData 1 bytes",
		"attestation_agent.ExtendRuntimeMeasurementRequest.RegisterIndex 4 optional uint64",
		"attestation_agent.GetAdditionalTeesResponse.additional_tees 1 repeated string",
		"attestation_agent.GetTeeTypeResponse.tee 1 string",
		"enumvalue attestation_agent.RuntimeMeasurementResult.NOT_ENABLED 2",
		"rpc attestation_agent.AttestationAgentService/GetAdditionalEvidence attestation_agent.GetAdditionalEvidenceRequest attestation_agent.GetEvidenceResponse",
	} {
		t.Run(line, func(t *testing.T) {
			if !slices.Contains(ours, line) {
				t.Errorf("fact %q not produced; facts format or proto changed", line)
			}
		})
	}
}

// TestWireBytes pins the encoding of a few messages: field tags and the
// presence of an explicitly zero optional RegisterIndex.
func TestWireBytes(t *testing.T) {
	zero := uint64(0)
	seventeen := uint64(17)
	for _, tc := range []struct {
		name string
		msg  proto.Message
		want []byte
	}{
		{"GetEvidenceRequest", &aa.GetEvidenceRequest{RuntimeData: []byte{1, 2}}, []byte{0x0a, 2, 1, 2}},
		{"GetTokenRequest", &aa.GetTokenRequest{TokenType: "kbs"}, []byte{0x0a, 3, 'k', 'b', 's'}},
		{"Extend without index", &aa.ExtendRuntimeMeasurementRequest{Domain: "d", Operation: "o", Content: "c"},
			[]byte{0x0a, 1, 'd', 0x12, 1, 'o', 0x1a, 1, 'c'}},
		{"Extend index 0 is present", &aa.ExtendRuntimeMeasurementRequest{RegisterIndex: &zero}, []byte{0x20, 0}},
		{"Extend index 17", &aa.ExtendRuntimeMeasurementRequest{RegisterIndex: &seventeen}, []byte{0x20, 17}},
		{"Result NOT_ENABLED", &aa.ExtendRuntimeMeasurementResponse{Result: aa.RuntimeMeasurementResult_NOT_ENABLED}, []byte{0x08, 2}},
		{"GetTeeTypeResponse", &aa.GetTeeTypeResponse{Tee: "tdx"}, []byte{0x0a, 3, 't', 'd', 'x'}},
		{"GetAdditionalTeesResponse", &aa.GetAdditionalTeesResponse{AdditionalTees: []string{"a", "b"}}, []byte{0x0a, 1, 'a', 0x0a, 1, 'b'}},
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

func TestServiceRPCCount(t *testing.T) {
	s := aa.File_aa_attestation_agent_proto.Services().ByName("AttestationAgentService")
	if s == nil || s.FullName() != "attestation_agent.AttestationAgentService" {
		t.Fatal("service attestation_agent.AttestationAgentService not found")
	}
	if got := s.Methods().Len(); got != 7 {
		t.Errorf("%d rpcs, want 7", got)
	}
}

// stub answers GetTeeType; every other rpc panics through the nil embedded
// interface, which the test would notice.
type stub struct {
	aa.AttestationAgentServiceService
}

func (stub) GetTeeType(context.Context, *aa.GetTeeTypeRequest) (*aa.GetTeeTypeResponse, error) {
	return &aa.GetTeeTypeResponse{Tee: "sample"}, nil
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
	aa.RegisterAttestationAgentServiceService(srv, stub{})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "aa.sock"))
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

	var resp aa.GetTeeTypeResponse
	if err := client.Call(ctx, "attestation_agent.AttestationAgentService", "GetTeeType", &aa.GetTeeTypeRequest{}, &resp); err != nil {
		t.Fatalf("raw call: %v", err)
	}
	if resp.GetTee() != "sample" {
		t.Errorf("tee = %q, want sample", resp.GetTee())
	}
	r, err := aa.NewAttestationAgentServiceClient(client).GetTeeType(ctx, &aa.GetTeeTypeRequest{})
	if err != nil || r.GetTee() != "sample" {
		t.Errorf("generated client: %v, %v", r, err)
	}
}
