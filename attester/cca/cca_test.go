package cca

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/tsm/tsmtest"
)

// token answers with a fake "token" carrying the challenge it was given.
func token(in []byte, _ string) ([]byte, []byte, error) {
	return append([]byte{0xd2, 0x84, 0x00, 0xff}, in...), nil, nil
}

func TestEvidence(t *testing.T) {
	a := New(tsmtest.New("arm_cca_guest\n", token))
	if a.Tee() != attester.TeeCCA {
		t.Fatal("tee")
	}
	for _, tc := range []struct {
		name string
		rd   []byte
	}{
		{"sha384-padded", bytes.Repeat([]byte{0xab}, 48)},
		{"exact-64", bytes.Repeat([]byte{1}, 64)},
		{"empty", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := a.Evidence(context.Background(), tc.rd)
			if err != nil {
				t.Fatal(err)
			}
			var raw map[string]json.RawMessage
			if err := json.Unmarshal(doc, &raw); err != nil || len(raw) != 1 || raw["token"] == nil {
				t.Fatalf("evidence %s: %v", doc, err)
			}
			var ints []int
			if err := json.Unmarshal(raw["token"], &ints); err != nil {
				t.Fatalf("token is not an integer array: %v", err)
			}
			challenge := make([]byte, 64)
			copy(challenge, tc.rd)
			want := append([]byte{0xd2, 0x84, 0x00, 0xff}, challenge...)
			got := make([]byte, len(ints))
			for i, v := range ints {
				if v < 0 || v > 255 {
					t.Fatalf("token byte %d = %d", i, v)
				}
				got[i] = byte(v)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("token %x, want %x", got, want)
			}
		})
	}
}

func TestMarshalEvidence(t *testing.T) {
	if got := string(MarshalEvidence([]byte{0, 9, 255})); got != `{"token":[0,9,255]}` {
		t.Fatalf("got %s", got)
	}
	if got := string(MarshalEvidence(nil)); got != `{"token":[]}` {
		t.Fatalf("empty token: %s", got)
	}
}

func TestEvidenceErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		a    *Attester
		rd   []byte
		want error
	}{
		{"challenge-too-long", New(tsmtest.New("arm_cca_guest\n", token)), make([]byte, 65), errdefs.ErrInvalidArgument},
		{"wrong-provider", New(tsmtest.New("tdx_guest\n", token)), nil, errdefs.ErrFailedPrecondition},
		{"no-configfs-tsm", New(nil), nil, errdefs.ErrNotImplemented},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.a.Evidence(ctx, tc.rd); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	c := tsmtest.New("arm_cca_guest\n", token)
	c.Generation = "5\n"
	if _, err := New(c).Evidence(ctx, nil); !errors.Is(err, errdefs.ErrAborted) {
		t.Fatalf("racing writer: %v", err)
	}
	if _, err := attester.AsRuntimeMeasurer(New(nil)); !errors.Is(err, attester.ErrNotSupported) {
		t.Fatal("cca must not claim runtime measurement")
	}
}
