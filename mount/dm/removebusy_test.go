package dm

import (
	"context"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type flakyRemover struct {
	busy  int
	calls int
	final error
}

func (f *flakyRemover) RemoveDevice(context.Context, string) error {
	f.calls++
	if f.calls <= f.busy {
		return classify("remove", "x", unix.EBUSY)
	}
	return f.final
}

func TestRemoveBusy(t *testing.T) {
	f := &flakyRemover{busy: 2}
	if n, err := RemoveBusy(context.Background(), f, "x", time.Millisecond); err != nil || f.calls != 3 || n != 2 {
		t.Fatalf("busy twice then gone: %v after %d calls", err, f.calls)
	}
	other := classify("remove", "x", unix.ENXIO)
	f = &flakyRemover{final: other}
	if _, err := RemoveBusy(context.Background(), f, "x", time.Millisecond); !errors.Is(err, other) || f.calls != 1 {
		t.Fatalf("a non-busy error is not retried: %v after %d calls", err, f.calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f = &flakyRemover{busy: 100}
	if _, err := RemoveBusy(ctx, f, "x", time.Millisecond); !errors.Is(err, unix.EBUSY) || !errors.Is(err, context.Canceled) || f.calls != 1 {
		t.Fatalf("a cancelled context stops the retries: %v after %d calls", err, f.calls)
	}
}
