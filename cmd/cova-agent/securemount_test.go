package main

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"testing"

	"github.com/containerd/errdefs"

	cdhapi "github.com/cova-project/cova/cdh/api"
	"github.com/cova-project/cova/cdh/securemount"
	"github.com/cova-project/cova/mount"
)

// The storage driver asks for exactly what the CDH's ephemeral volume is.
func TestEphemeralOptionsAgree(t *testing.T) {
	got := mount.EphemeralSecureOptions("254:16")
	want := securemount.EphemeralOptions("254:16", false)
	if !maps.Equal(got, want) {
		t.Fatalf("mount sends %v, securemount expects %v", got, want)
	}
}

func TestNewSecureMount(t *testing.T) {
	svc, err := newSecureMount(slog.New(slog.DiscardHandler), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	// It fits both seams.
	var _ mount.SecureMounter = svc
	var _ cdhapi.SecureMounter = svc
	// Bad input is refused before any device is touched.
	_, err = svc.SecureMount(context.Background(), "block-device", map[string]string{"deviceId": "x"}, nil, "/run/x")
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("SecureMount = %v, want invalid argument", err)
	}
	if err := svc.Unmount(context.Background(), "/run/x"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Unmount = %v, want not found", err)
	}
}
