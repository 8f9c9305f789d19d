package rpcutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestStatus(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("field x: %w", errdefs.ErrInvalidArgument), codes.InvalidArgument},
		{fmt.Errorf("outer: %w", fmt.Errorf("no such: %w", errdefs.ErrNotFound)), codes.NotFound},
		{fmt.Errorf("deny: %w", errdefs.ErrPermissionDenied), codes.PermissionDenied},
		{fmt.Errorf("wait: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{errors.New("plain"), codes.Internal},
		{status.Error(codes.Aborted, "already a status"), codes.Aborted},
	} {
		got := Status("Rpc", tc.err)
		st, _ := status.FromError(got)
		if st.Code() != tc.want {
			t.Errorf("%v: code %v, want %v", tc.err, st.Code(), tc.want)
		}
		if tc.want != codes.Aborted && st.Message() != "Rpc: "+tc.err.Error() {
			t.Errorf("%v: message %q does not name the rpc", tc.err, st.Message())
		}
	}
}

func TestListenUnixAndServe(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "s.sock")
	if _, err := ListenUnix(context.Background(), "rel.sock", 0o700); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("relative path: %v", err)
	}
	l, err := ListenUnix(context.Background(), p, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi, err)
	}
	if fi, err := os.Stat(filepath.Dir(p)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode: %v %v", fi, err)
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, l) }()
	// A live socket is not stolen.
	if _, err := ListenUnix(context.Background(), p, 0o700); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("second listener on a live socket: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	// A stale socket file (nobody listening) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	l2, err := ListenUnix(context.Background(), stale, 0o700)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	l2.Close()
	// A regular file is never replaced.
	reg := filepath.Join(dir, "file")
	os.WriteFile(reg, []byte("x"), 0o600)
	if _, err := ListenUnix(context.Background(), reg, 0o700); !errdefs.IsAlreadyExists(err) {
		t.Fatalf("regular file: %v", err)
	}
}
