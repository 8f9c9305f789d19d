package container

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestReadKeepsDataForACancelledReader: a reader whose request was
// cancelled (its client disconnected) never consumes output; the next
// reader gets all of it.
func TestReadKeepsDataForACancelledReader(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	s := newOutStream(r)
	if _, err := w.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	// Let the pump queue the chunk, then read with a dead context many
	// times (select picks the data or the context at random).
	deadline := time.Now().Add(5 * time.Second)
	for len(s.ch) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < 50; i++ {
		if b, err := s.Read(cancelled, 3); err == nil || len(b) != 0 {
			t.Fatalf("cancelled read %d = %q, %v; want nothing and the context error", i, b, err)
		}
	}
	w.Close()
	var got []byte
	for {
		b, err := s.Read(context.Background(), 2)
		got = append(got, b...)
		if err != nil {
			break
		}
	}
	if string(got) != "hello" {
		t.Fatalf("the next reader got %q, want all of %q", got, "hello")
	}
}
