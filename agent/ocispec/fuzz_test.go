package ocispec

import (
	"testing"

	"github.com/opencontainers/runc/libcontainer/specconv"
	"google.golang.org/protobuf/proto"

	"github.com/cova-project/cova/protocols/grpc"
)

// FuzzToSpec feeds arbitrary wire bytes through ToSpec. It must never panic,
// and whatever ToSpec accepts must survive FromSpec and convert back to the
// same runtime-spec value (ToSpec's output is a fixed point).
func FuzzToSpec(f *testing.F) {
	seeds := []proto.Message{&grpc.Spec{}, fullProtoSpec(), secretSpec()}
	if w, err := FromSpec(populatedSpec()); err == nil {
		seeds = append(seeds, w)
	}
	if w, err := FromSpec(specconv.Example()); err == nil {
		seeds = append(seeds, w)
	}
	for _, m := range seeds {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		in := &grpc.Spec{}
		if err := proto.Unmarshal(b, in); err != nil {
			return
		}
		_ = Redacted(in)
		_ = LogSpec(in).LogValue()
		s, err := ToSpec(in)
		if err != nil {
			return
		}
		w, err := FromSpec(s)
		if err != nil {
			t.Fatalf("FromSpec rejects what ToSpec produced: %v", err)
		}
		again, err := ToSpec(w)
		if err != nil {
			t.Fatalf("ToSpec rejects what FromSpec produced: %v", err)
		}
		assertEqual(t, again, s)
	})
}
