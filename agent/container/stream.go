package container

import (
	"context"
	"io"
	"os"
	"sync"
)

const (
	chunkSize   = 32 << 10 // bytes read from a pipe at a time
	chunkBuffer = 16       // chunks held before the pump blocks: 512 KiB per stream at most
	// MaxReadLen caps one ReadStdout/ReadStderr answer (ttrpc messages are ≤ 4 MiB).
	MaxReadLen = 1 << 20
)

// outStream pumps one output fd (a pipe or a pty master) into a bounded queue
// of chunks. Readers take from the queue with a context, so a cancelled read
// loses no data, and a reader that is gone (or denied by policy) can drain the
// queue so the process never blocks on a full pipe.
type outStream struct {
	ch   chan []byte
	done chan struct{} // closed when the pump has stopped (EOF or error)

	mu   sync.Mutex
	rest []byte // remainder of a chunk larger than the last read asked for

	drainOnce sync.Once
}

func newOutStream(f *os.File) *outStream {
	s := &outStream{ch: make(chan []byte, chunkBuffer), done: make(chan struct{})}
	go s.pump(f)
	return s
}

// closedStream is an already-finished stream (stderr of a tty process).
func closedStream() *outStream {
	s := &outStream{ch: make(chan []byte), done: make(chan struct{})}
	close(s.ch)
	close(s.done)
	return s
}

func (s *outStream) pump(f *os.File) {
	defer close(s.done)
	defer close(s.ch)
	defer f.Close()
	for {
		buf := make([]byte, chunkSize)
		n, err := f.Read(buf)
		if n > 0 {
			s.ch <- buf[:n]
		}
		if err != nil {
			// EOF on a pipe, EIO on a pty master whose slave side is gone,
			// or a closed fd: all mean the stream has ended.
			return
		}
	}
}

// Read returns up to n bytes. It returns io.EOF once the stream has ended and
// every byte has been read.
func (s *outStream) Read(ctx context.Context, n int) ([]byte, error) {
	if n <= 0 || n > MaxReadLen {
		n = MaxReadLen
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []byte
	if len(s.rest) > 0 {
		out = s.take(&s.rest, n)
	} else {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case c, ok := <-s.ch:
			if !ok {
				return nil, io.EOF
			}
			out = s.take(&c, n)
			s.rest = c
		}
	}
	// Opportunistically fill the answer with chunks already queued.
	for len(out) < n && len(s.rest) == 0 {
		select {
		case c, ok := <-s.ch:
			if !ok {
				return s.keepIfCancelled(ctx, out)
			}
			out = append(out, s.take(&c, n-len(out))...)
			s.rest = c
		default:
			return s.keepIfCancelled(ctx, out)
		}
	}
	return s.keepIfCancelled(ctx, out)
}

// keepIfCancelled returns out, unless the reader went away while it was
// being gathered (ttrpc cancels a request when its client disconnects):
// then out goes back to the front of the stream for the next reader, as an
// answer nobody can receive would lose it. (A client that vanishes after
// the answer left this function can still lose it: the protocol has no
// acknowledgement.) The caller holds s.mu.
func (s *outStream) keepIfCancelled(ctx context.Context, out []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil && len(out) > 0 {
		s.rest = append(append([]byte(nil), out...), s.rest...)
		return nil, err
	}
	return out, nil
}

func (s *outStream) take(c *[]byte, n int) []byte {
	b := *c
	if len(b) <= n {
		*c = nil
		return b
	}
	*c = b[n:]
	return b[:n:n]
}

// Drain discards everything until EOF, in the background (once).
func (s *outStream) Drain() {
	s.drainOnce.Do(func() {
		go func() {
			for range s.ch {
			}
		}()
	})
}

// Ended reports whether the stream has reached EOF and been fully consumed.
func (s *outStream) Ended() bool {
	select {
	case <-s.done:
	default:
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.rest) == 0 && len(s.ch) == 0
}
