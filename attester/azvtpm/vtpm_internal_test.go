package azvtpm

import (
	"context"
	"errors"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/google/go-tpm/tpm2/transport"
)

func TestNewDefaults(t *testing.T) {
	v := New(nil, -1)
	if v.delay != DefaultReportDelay || v.open == nil {
		t.Fatalf("delay %v", v.delay)
	}
	if New(nil, 0).delay != 0 {
		t.Fatal("zero delay not kept")
	}
	failing := New(func() (transport.TPMCloser, error) { return nil, errdefs.ErrNotFound }, 0)
	if _, err := failing.DetectTee(context.Background()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("open failure: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := failing.ReadHCLReport(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}
