package eventlog

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
)

// Default locations (guest-components' EVENTLOG_PATH and WAL_CACHE).
const (
	DefaultPath    = "/run/attestation-agent/eventlog"
	DefaultWALPath = "/run/attestation-agent/.wal_event_entry"
	// DefaultPCR is the PCR index events go to when the caller names none.
	DefaultPCR uint64 = 17
	// PathEnv overrides the path the evidence reader takes the AAEL from.
	PathEnv = "AAEL_PATH"
)

// Config configures a Log.
type Config struct {
	// Path of the log file; DefaultPath when empty.
	Path string
	// WALPath of the write-ahead file; DefaultWALPath when empty.
	WALPath string
	// DefaultPCR is the register crash recovery uses; DefaultPCR when 0.
	DefaultPCR uint64
	// Measurer extends and reads the measurement register.
	Measurer attester.RuntimeMeasurer
	// Logger receives recovery notices; discarded when nil.
	Logger *slog.Logger
}

// Log appends AAEL events and extends the register with their digests.
type Log struct {
	mu      sync.Mutex
	f       *os.File
	pos     int64
	path    string
	walPath string
	pcr     uint64
	m       attester.RuntimeMeasurer
	alg     Alg
	log     *slog.Logger
	// failed is set when a record left the register in an unknown state
	// (or extended without its entry written); the write-ahead file is
	// kept for the next Open and further records are refused, so it is not
	// overwritten.
	failed error
}

// Open opens (creating when absent) the event log and, when a write-ahead
// file from a crash exists, completes the interrupted record: if the
// register already holds the expected value only the entry is rewritten; if
// extending it with the event digest gives the expected value it is extended
// and the entry written; anything else is an error wrapping
// errdefs.ErrDataLoss and the caller must not serve.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if cfg.Measurer == nil {
		return nil, fmt.Errorf("event log: measurer: nil: %w", errdefs.ErrInvalidArgument)
	}
	alg, err := AlgFromHash(cfg.Measurer.HashAlg())
	if err != nil {
		return nil, err
	}
	l := &Log{path: cfg.Path, walPath: cfg.WALPath, pcr: cfg.DefaultPCR, m: cfg.Measurer, alg: alg, log: cfg.Logger}
	if l.path == "" {
		l.path = DefaultPath
	}
	if l.walPath == "" {
		l.walPath = DefaultWALPath
	}
	if l.pcr == 0 {
		l.pcr = DefaultPCR
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
		return nil, fmt.Errorf("event log: create directory: %w", err)
	}
	// No O_APPEND: recovery rewrites an entry at its recorded offset.
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("event log: open %s: %w", l.path, err)
	}
	if l.pos, err = f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, fmt.Errorf("event log: seek: %w", err)
	}
	l.f = f
	if err := l.recover(ctx); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// Path returns the log file path.
func (l *Log) Path() string { return l.path }

// Snapshot returns the log's content as recorded so far: whole entries
// only (records are serialised by the log's lock).
func (l *Log) Snapshot() ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, err := os.ReadFile(l.path)
	if err != nil {
		return nil, fmt.Errorf("event log: %w", err)
	}
	if int64(len(b)) > l.pos {
		b = b[:l.pos]
	}
	return b, nil
}

// Close closes the log file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Record measures ev into the register pcr maps to and appends its entry:
// write-ahead file, extend, append, remove the write-ahead file.
//
// When the extend fails the register is read back: unchanged, the
// write-ahead file is removed and the error returned (nothing was
// measured, nothing is replayed later); already extended (the error came
// after the TPM/RTMR took the digest), the entry is written and the record
// completes; unknown, the write-ahead file is kept so the next Open
// resolves it, and the Log refuses further records with an error wrapping
// errdefs.ErrDataLoss. A failed entry write after the extend likewise
// keeps the write-ahead file and stops the Log.
func (l *Log) Record(ctx context.Context, ev Event, pcr uint64) error {
	e, err := NewEntry(ev, l.m.Register(pcr), l.alg)
	if err != nil {
		return err
	}
	digest := e.Digests[0].Value
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return fmt.Errorf("event log: closed: %w", errdefs.ErrFailedPrecondition)
	}
	if l.failed != nil {
		return fmt.Errorf("event log: an earlier record is unresolved (reopen to recover): %w", l.failed)
	}
	cur, err := l.m.Measurement(ctx, pcr)
	if err != nil {
		return fmt.Errorf("event log: read register for PCR %d: %w", pcr, err)
	}
	expected, err := l.alg.sum(cur, digest)
	if err != nil {
		return err
	}
	if err := l.writeWAL(uint64(l.pos), expected, ev.String()); err != nil {
		return err
	}
	if err := l.m.Extend(ctx, pcr, digest); err != nil {
		extendErr := fmt.Errorf("event log: extend PCR %d: %w", pcr, err)
		now, rerr := l.m.Measurement(ctx, pcr)
		switch {
		case rerr == nil && bytes.Equal(now, cur):
			// Not extended: roll back.
			if rmErr := os.Remove(l.walPath); rmErr != nil {
				l.failed = fmt.Errorf("event log: remove write-ahead file after a failed extend: %v: %w", rmErr, errdefs.ErrDataLoss)
				return errors.Join(extendErr, l.failed)
			}
			return extendErr
		case rerr == nil && bytes.Equal(now, expected):
			l.log.Warn("event log: extend reported an error but the register moved; completing the record", "pcr", pcr, "error", err)
		default:
			l.failed = fmt.Errorf("event log: register for PCR %d in an unknown state after a failed extend (read back: %v): %w", pcr, rerr, errdefs.ErrDataLoss)
			return errors.Join(extendErr, l.failed)
		}
	}
	if err := l.writeAt(e.Marshal(), l.pos); err != nil {
		l.failed = fmt.Errorf("event log: PCR %d extended but its entry not written: %v: %w", pcr, err, errdefs.ErrDataLoss)
		return err
	}
	if err := os.Remove(l.walPath); err != nil {
		return fmt.Errorf("event log: remove write-ahead file: %w", err)
	}
	return nil
}

func (l *Log) writeAt(b []byte, off int64) error {
	if _, err := l.f.WriteAt(b, off); err != nil {
		return fmt.Errorf("event log: write entry: %w", err)
	}
	if err := l.f.Sync(); err != nil {
		return fmt.Errorf("event log: sync: %w", err)
	}
	l.pos = off + int64(len(b))
	return nil
}

// writeWAL writes u64 BE offset || expected register value || event text.
func (l *Log) writeWAL(off uint64, expected []byte, text string) error {
	b := binary.BigEndian.AppendUint64(nil, off)
	b = append(append(b, expected...), text...)
	f, err := os.OpenFile(l.walPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("event log: write-ahead file: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// The register is untouched: a partial write-ahead file would only
		// make the next Open refuse to start.
		_ = os.Remove(l.walPath)
		return fmt.Errorf("event log: write-ahead file: %w", err)
	}
	return nil
}

func (l *Log) recover(ctx context.Context) error {
	b, err := os.ReadFile(l.walPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("event log: read write-ahead file: %w", err)
	}
	size := l.alg.Size()
	if len(b) < 8+size {
		return fmt.Errorf("event log: write-ahead file %s: truncated: %w", l.walPath, errdefs.ErrDataLoss)
	}
	off := binary.BigEndian.Uint64(b)
	expected := b[8 : 8+size]
	ev, err := ParseEventText(string(b[8+size:]))
	if err != nil {
		return fmt.Errorf("event log: write-ahead file %s: %v: %w", l.walPath, err, errdefs.ErrDataLoss)
	}
	if off > uint64(l.pos) {
		return fmt.Errorf("event log: write-ahead offset %d beyond the log end %d: %w", off, l.pos, errdefs.ErrDataLoss)
	}
	l.log.Warn("event log: completing a record interrupted by a crash", "offset", off, "domain", ev.Domain, "operation", ev.Operation)
	e, err := NewEntry(ev, l.m.Register(l.pcr), l.alg)
	if err != nil {
		return err
	}
	digest := e.Digests[0].Value
	cur, err := l.m.Measurement(ctx, l.pcr)
	if err != nil {
		return fmt.Errorf("event log: recovery: read register: %w", err)
	}
	if !bytes.Equal(cur, expected) {
		next, err := l.alg.sum(cur, digest)
		if err != nil {
			return err
		}
		if !bytes.Equal(next, expected) {
			return fmt.Errorf("event log: recovery: register for PCR %d matches neither before nor after the interrupted event; the log is corrupt or another writer extended it: %w", l.pcr, errdefs.ErrDataLoss)
		}
		if err := l.m.Extend(ctx, l.pcr, digest); err != nil {
			return fmt.Errorf("event log: recovery: extend: %w", err)
		}
	}
	if err := l.writeAt(e.Marshal(), int64(off)); err != nil {
		return err
	}
	if err := l.f.Truncate(l.pos); err != nil {
		return fmt.Errorf("event log: recovery: truncate: %w", err)
	}
	if err := os.Remove(l.walPath); err != nil {
		return fmt.Errorf("event log: recovery: remove write-ahead file: %w", err)
	}
	return nil
}
