package aa_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cova-project/cova/protocols/aa"
)

// goldenPath is the fact table dumped from guest-components'
// attestation-agent.proto; see wireFacts for the line format.
var goldenPath = filepath.Join("testdata", "aa-wire.txt")

// The ttrpc glue must exist with these names.
var (
	_ = aa.RegisterAttestationAgentServiceService
	_ = aa.NewAttestationAgentServiceClient
)

// wireFacts lists, sorted, everything in files that decides what goes on the
// wire: message and field names, field numbers, labels, types, oneofs, enum
// values, and each rpc's request and response. File names and Go options are
// left out: they differ from upstream. Same format as
// protocols/grpc/wire_test.go.
func wireFacts(files ...protoreflect.FileDescriptor) []string {
	var out []string
	var msgs func(protoreflect.MessageDescriptors)
	var enums func(protoreflect.EnumDescriptors)
	typeName := func(f protoreflect.FieldDescriptor) string {
		switch f.Kind() {
		case protoreflect.MessageKind, protoreflect.GroupKind:
			return string(f.Message().FullName())
		case protoreflect.EnumKind:
			return string(f.Enum().FullName())
		default:
			return f.Kind().String()
		}
	}
	enums = func(es protoreflect.EnumDescriptors) {
		for i := 0; i < es.Len(); i++ {
			e := es.Get(i)
			out = append(out, "enum "+string(e.FullName()))
			for j := 0; j < e.Values().Len(); j++ {
				v := e.Values().Get(j)
				out = append(out, fmt.Sprintf("enumvalue %s.%s %d", e.FullName(), v.Name(), v.Number()))
			}
		}
	}
	msgs = func(ms protoreflect.MessageDescriptors) {
		for i := 0; i < ms.Len(); i++ {
			m := ms.Get(i)
			if m.IsMapEntry() {
				continue
			}
			out = append(out, "message "+string(m.FullName()))
			for j := 0; j < m.Fields().Len(); j++ {
				f := m.Fields().Get(j)
				var t string
				switch {
				case f.IsMap():
					t = fmt.Sprintf("map<%s,%s>", typeName(f.MapKey()), typeName(f.MapValue()))
				case f.Cardinality() == protoreflect.Repeated:
					t = "repeated " + typeName(f)
				case f.HasOptionalKeyword():
					t = "optional " + typeName(f)
				default:
					t = typeName(f)
				}
				if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() {
					t += " oneof " + string(o.Name())
				}
				out = append(out, fmt.Sprintf("%s %d %s", f.FullName(), f.Number(), t))
			}
			enums(m.Enums())
			msgs(m.Messages())
		}
	}
	for _, fd := range files {
		enums(fd.Enums())
		msgs(fd.Messages())
		for i := 0; i < fd.Services().Len(); i++ {
			s := fd.Services().Get(i)
			out = append(out, "service "+string(s.FullName()))
			for j := 0; j < s.Methods().Len(); j++ {
				m := s.Methods().Get(j)
				in, res := string(m.Input().FullName()), string(m.Output().FullName())
				if m.IsStreamingClient() {
					in = "stream " + in
				}
				if m.IsStreamingServer() {
					res = "stream " + res
				}
				out = append(out, fmt.Sprintf("rpc %s/%s %s %s", s.FullName(), m.Name(), in, res))
			}
		}
	}
	slices.Sort(out)
	return out
}

func readGolden(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(goldenPath)
	if err != nil {
		t.Fatalf("opening golden fact table: %v", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lines = append(lines, line)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading golden fact table: %v", err)
	}
	if len(lines) == 0 {
		t.Fatal("golden fact table is empty")
	}
	return lines
}

// TestWireMatchesGuestComponents checks our descriptors against the facts
// dumped from upstream: anything missing, different or extra fails.
func TestWireMatchesGuestComponents(t *testing.T) {
	golden := readGolden(t)
	ours := wireFacts(aa.File_aa_attestation_agent_proto)
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
	ours := wireFacts(aa.File_aa_attestation_agent_proto)
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
