package imagepull

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/ocicrypt"
	"github.com/cova-project/cova/imagepull/registry"
	"github.com/cova-project/cova/imagepull/unpack"
)

type layerStats struct {
	blobBytes int64
	unpacked  unpack.Stats
}

var (
	gzipMagic = []byte{0x1f, 0x8b}
	zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// fetchLayer is the one-pass pipeline for one layer:
// registry body → blob digest → (decrypt + HMAC) → decompress → diffID
// digest → unpack into staging. It returns nil only when the blob digest
// (checked by the blob reader at EOF), the HMAC of an encrypted layer
// (checked by the decrypting reader at EOF) and the diffID all match.
// Until then what was unpacked is unauthenticated and stays in staging,
// which the store removes on error.
func (p *Puller) fetchLayer(ctx context.Context, repo *registry.Repo, desc oci.Descriptor, diffID oci.Digest, crypt *ocicrypt.Layer, staging string, log *slog.Logger) (st layerStats, retErr error) {
	start := time.Now()
	counted := &countReader{}
	defer func() {
		p.metrics.bytesFetched.Add(uint64(counted.n.Load()))
		if retErr != nil {
			p.metrics.layersFailed.Add(1)
		}
	}()
	// Cancelled first on return, so that closing the pipe never waits on
	// a stalled registry read.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	blob, err := repo.OpenBlob(ctx, desc)
	if err != nil {
		return st, err
	}
	defer blob.Close()
	counted.r = blob
	if iv := p.cfg.ProgressInterval; iv > 0 {
		stop := make(chan struct{})
		defer close(stop)
		go layerProgress(ctx, stop, iv, log, desc, counted, start)
	}
	var src io.Reader = counted
	if crypt != nil {
		src = crypt.NewReader(counted)
	}
	// The network read, the blob digest and decryption run in a goroutine
	// of their own, ahead of decompression: on two cores the hashing and
	// the cipher then overlap with inflating.
	fetch := newChunkPipe(ctx, src, 4, 256<<10, nil)
	defer func() {
		cancel()
		fetch.Close()
	}()
	br := bufio.NewReaderSize(fetch, 256<<10)

	// The bytes decide the format; the diffID check backs whichever it is.
	magic, _ := br.Peek(4)
	var dec io.Reader
	var comp oci.Compression
	switch {
	case bytes.HasPrefix(magic, gzipMagic):
		comp = oci.Gzip
		gz, err := gzip.NewReader(br)
		if err != nil {
			return st, fmt.Errorf("gzip: %v: %w", err, unpack.ErrInvalidArchive)
		}
		defer gz.Close()
		dec = gz
	case bytes.HasPrefix(magic, zstdMagic):
		comp = oci.Zstd
		zd, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(p.cfg.MaxZstdWindow),
			zstd.WithDecoderMaxMemory(p.cfg.MaxZstdWindow))
		if err != nil {
			return st, fmt.Errorf("zstd: %v: %w", err, unpack.ErrInvalidArchive)
		}
		defer zd.Close()
		dec = zd
	default:
		comp = oci.Uncompressed
		dec = br
	}
	if li, _ := oci.ParseLayerMediaType(desc.MediaType); li.Compression != comp {
		log.Debug("layer compression differs from its media type", "digest", desc.Digest.String(), "mediaType", desc.MediaType, "found", comp.String())
	}

	// Decompression runs in its own goroutine, unpacking (with the diffID
	// digest) in this one, joined by a few fixed buffers: the cores work
	// on one layer together, and memory stays bounded.
	pipe := newChunkPipe(ctx, dec, 4, 256<<10, decodeErr)
	defer func() {
		cancel()
		pipe.Close()
	}()
	h, checkDiffID := diffID.Verifier()
	tee := io.TeeReader(pipe, h)
	st.unpacked, err = unpack.Unpack(ctx, tee, staging, p.cfg.Unpack)
	if err != nil {
		return st, fmt.Errorf("unpacking: %w", err)
	}
	// The diffID covers the whole uncompressed stream, including what
	// follows the end-of-archive blocks; bound what we are willing to hash.
	trailer := p.cfg.Unpack.MaxBytes
	if trailer <= 0 || trailer > 1<<30 {
		trailer = 1 << 30
	}
	n, err := io.Copy(io.Discard, io.LimitReader(tee, trailer+1))
	if err != nil {
		return st, fmt.Errorf("reading past the archive: %w", decodeErr(err))
	}
	if n > trailer {
		return st, fmt.Errorf("more than %d bytes after the end of the archive: %w", trailer, unpack.ErrInvalidArchive)
	}
	// Reading the blob to EOF makes the blob reader check the digest and
	// the decrypting reader the HMAC.
	pipe.Close()
	if _, err := io.Copy(io.Discard, br); err != nil {
		return st, err
	}
	if err := checkDiffID(); err != nil {
		return st, fmt.Errorf("diffID: %w", err)
	}
	st.blobBytes = counted.n.Load()
	secs := time.Since(start).Seconds()
	log.Info("layer pulled", "digest", desc.Digest.String(), "compression", comp.String(), "encrypted", crypt != nil,
		"blob_bytes", st.blobBytes, "unpacked_bytes", st.unpacked.Bytes, "entries", st.unpacked.Entries,
		"seconds", roundSecs(secs), "mb_per_s", mbPerSec(st.blobBytes, secs), "unpacked_mb_per_s", mbPerSec(st.unpacked.Bytes, secs))
	return st, nil
}

// layerProgress logs a download's progress every iv until stop or ctx
// ends: bytes so far, the blob size, seconds and MB/s (10^6 bytes).
func layerProgress(ctx context.Context, stop <-chan struct{}, iv time.Duration, log *slog.Logger, desc oci.Descriptor, c *countReader, start time.Time) {
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			n := c.n.Load()
			secs := time.Since(start).Seconds()
			pct := 0.0
			if desc.Size > 0 {
				pct = math.Round(float64(n)*1000/float64(desc.Size)) / 10
			}
			log.Info("layer progress", "digest", desc.Digest.String(), "bytes", n, "size", desc.Size, "percent", pct,
				"seconds", roundSecs(secs), "mb_per_s", mbPerSec(n, secs))
		}
	}
}

// mbPerSec is n bytes over secs in MB/s (10^6 bytes), to 0.1.
func mbPerSec(n int64, secs float64) float64 {
	if secs <= 0 {
		return 0
	}
	return math.Round(float64(n)/1e6/secs*10) / 10
}

func roundSecs(s float64) float64 { return math.Round(s*1000) / 1000 }

// decodeErr marks decompressor failures as a bad layer unless they carry a
// class (a registry error surfacing through the decompressor).
func decodeErr(err error) error {
	if errdefs.IsUnavailable(err) || errdefs.IsFailedPrecondition(err) || errdefs.IsInvalidArgument(err) ||
		errdefs.IsResourceExhausted(err) || errdefs.IsNotFound(err) || errdefs.IsUnauthorized(err) ||
		errdefs.IsPermissionDenied(err) || errdefs.IsCanceled(err) || errdefs.IsDeadlineExceeded(err) {
		return err
	}
	return fmt.Errorf("%v: %w", err, unpack.ErrInvalidArchive)
}

// countReader counts what it reads; n may be read concurrently (progress).
type countReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// chunkPipe moves data from a producer goroutine reading src to the
// consumer through a fixed set of buffers. wrapErr, if set, classifies the
// producer's errors other than io.EOF.
type chunkPipe struct {
	full  chan []byte // filled buffers, in order
	free  chan []byte // buffers to refill
	done  chan struct{}
	errc  chan error // the producer's final error (io.EOF at the end)
	buf   []byte     // the buffer being consumed
	cur   []byte     // its unread part
	err   error
	once  bool
	ended chan struct{}
}

func newChunkPipe(ctx context.Context, src io.Reader, n, size int, wrapErr func(error) error) *chunkPipe {
	p := &chunkPipe{
		full: make(chan []byte, n), free: make(chan []byte, n),
		done: make(chan struct{}), errc: make(chan error, 1), ended: make(chan struct{}),
	}
	for i := 0; i < n; i++ {
		p.free <- make([]byte, size)
	}
	go func() {
		defer close(p.ended)
		for {
			var buf []byte
			select {
			case buf = <-p.free:
			case <-p.done:
				return
			case <-ctx.Done():
				p.errc <- ctx.Err()
				close(p.full)
				return
			}
			k, err := io.ReadFull(src, buf[:cap(buf)])
			if k > 0 {
				select {
				case p.full <- buf[:k]:
				case <-p.done:
					return
				}
			}
			if err != nil {
				if err == io.ErrUnexpectedEOF {
					err = io.EOF
				}
				if err != io.EOF && wrapErr != nil {
					err = wrapErr(err)
				}
				p.errc <- err
				close(p.full)
				return
			}
		}
	}()
	return p
}

func (p *chunkPipe) Read(b []byte) (int, error) {
	if len(p.cur) == 0 {
		if p.buf != nil {
			p.free <- p.buf
			p.buf, p.cur = nil, nil
		}
		if p.err != nil {
			return 0, p.err
		}
		buf, ok := <-p.full
		if !ok {
			p.err = <-p.errc
			return 0, p.err
		}
		p.buf, p.cur = buf[:cap(buf)], buf
	}
	n := copy(b, p.cur)
	p.cur = p.cur[n:]
	return n, nil
}

// Close stops the producer and waits for it, so the source is no longer
// read concurrently.
func (p *chunkPipe) Close() {
	if !p.once {
		p.once = true
		close(p.done)
	}
	<-p.ended
}
