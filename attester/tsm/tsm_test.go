package tsm_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester/tsm"
	"github.com/cova-project/cova/attester/tsm/tsmtest"
)

func echo(in []byte, priv string) ([]byte, []byte, error) {
	return append([]byte("out:"+priv+":"), in...), []byte("aux"), nil
}

func TestGet(t *testing.T) {
	lvl := uint(0)
	for _, tc := range []struct {
		name       string
		provider   string
		generation string
		req        tsm.Request
		wantOut    []byte
		wantAux    []byte
		wantErr    error
	}{
		{"tdx", "tdx_guest\n", "", tsm.Request{Provider: tsm.ProviderTDX, InBlob: []byte("rd")}, []byte("out:0:rd"), nil, nil},
		{"snp-aux-privlevel", "sev_guest\n", "", tsm.Request{Provider: tsm.ProviderSNP, InBlob: []byte("rd"), PrivLevel: &lvl, AuxBlob: true}, []byte("out:0:rd"), []byte("aux"), nil},
		{"wrong-provider", "sev_guest\n", "", tsm.Request{Provider: tsm.ProviderTDX, InBlob: []byte("rd")}, nil, nil, errdefs.ErrFailedPrecondition},
		{"empty-inblob", "tdx_guest\n", "", tsm.Request{Provider: tsm.ProviderTDX}, nil, nil, errdefs.ErrInvalidArgument},
		{"racing-writer", "tdx_guest\n", "7\n", tsm.Request{Provider: tsm.ProviderTDX, InBlob: []byte("rd")}, nil, nil, errdefs.ErrAborted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tsmtest.New(tc.provider, echo)
			c.Generation = tc.generation
			resp, err := tsm.Get(context.Background(), c, tc.req)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if !bytes.Equal(resp.OutBlob, tc.wantOut) || !bytes.Equal(resp.AuxBlob, tc.wantAux) {
				t.Fatalf("got out %q aux %q", resp.OutBlob, resp.AuxBlob)
			}
		})
	}
}

func TestProviderIs(t *testing.T) {
	c := tsmtest.New("tdx_guest\n", echo)
	if !tsm.ProviderIs(c, tsm.ProviderTDX) {
		t.Fatal("tdx provider not recognized")
	}
	if tsm.ProviderIs(c, tsm.ProviderSNP) {
		t.Fatal("tdx provider taken for sev_guest")
	}
	if tsm.ProviderIs(nil, tsm.ProviderTDX) {
		t.Fatal("nil client detected a provider")
	}
}
