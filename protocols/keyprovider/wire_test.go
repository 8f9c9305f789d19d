package keyprovider_test

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/protobuf/proto"

	"github.com/cova-project/cova/protocols/internal/wirefacts"
	"github.com/cova-project/cova/protocols/keyprovider"
)

// goldenPath is the fact table dumped from guest-components'
// keyprovider.proto; see wirefacts.Facts for the line format.
var goldenPath = filepath.Join("testdata", "keyprovider-wire.txt")

// The ttrpc glue must exist with these names.
var (
	_ = keyprovider.RegisterKeyProviderServiceService
	_ = keyprovider.NewKeyProviderServiceClient
)

// TestWireMatchesGuestComponents checks our descriptors against the facts
// dumped from upstream: anything missing, different or extra fails.
func TestWireMatchesGuestComponents(t *testing.T) {
	golden := wirefacts.ReadGolden(t, goldenPath)
	ours := wirefacts.Facts(keyprovider.File_keyprovider_keyprovider_proto)
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

// TestWireFactsSeeDifferences guards the comparison.
func TestWireFactsSeeDifferences(t *testing.T) {
	ours := wirefacts.Facts(keyprovider.File_keyprovider_keyprovider_proto)
	for _, line := range []string{
		"keyprovider.KeyProviderKeyWrapProtocolInput.KeyProviderKeyWrapProtocolInput 1 bytes",
		"rpc keyprovider.KeyProviderService/UnWrapKey keyprovider.KeyProviderKeyWrapProtocolInput keyprovider.KeyProviderKeyWrapProtocolOutput",
	} {
		t.Run(line, func(t *testing.T) {
			if !slices.Contains(ours, line) {
				t.Errorf("fact %q not produced; facts format or proto changed", line)
			}
		})
	}
}

func TestWireBytes(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  proto.Message
		want []byte
	}{
		{"input", &keyprovider.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: []byte("{}")}, []byte{0x0a, 2, '{', '}'}},
		{"output", &keyprovider.KeyProviderKeyWrapProtocolOutput{KeyProviderKeyWrapProtocolOutput: []byte("{}")}, []byte{0x0a, 2, '{', '}'}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := proto.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("encoded %x, want %x", got, tc.want)
			}
		})
	}
}

// stub echoes the input of UnWrapKey; WrapKey is not provided.
type stub struct {
	keyprovider.KeyProviderServiceService
}

func (stub) UnWrapKey(_ context.Context, in *keyprovider.KeyProviderKeyWrapProtocolInput) (*keyprovider.KeyProviderKeyWrapProtocolOutput, error) {
	return &keyprovider.KeyProviderKeyWrapProtocolOutput{KeyProviderKeyWrapProtocolOutput: in.GetKeyProviderKeyWrapProtocolInput()}, nil
}

// TestTTRPCServiceName calls the served glue with the raw strings ocicrypt
// clients use.
func TestTTRPCServiceName(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	keyprovider.RegisterKeyProviderServiceService(srv, stub{})
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "kp.sock"))
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
	var resp keyprovider.KeyProviderKeyWrapProtocolOutput
	in := &keyprovider.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: []byte(`{"op":"keyunwrap"}`)}
	if err := client.Call(ctx, "keyprovider.KeyProviderService", "UnWrapKey", in, &resp); err != nil {
		t.Fatalf("raw call: %v", err)
	}
	if string(resp.GetKeyProviderKeyWrapProtocolOutput()) != `{"op":"keyunwrap"}` {
		t.Errorf("output = %q", resp.GetKeyProviderKeyWrapProtocolOutput())
	}
}
