// Package reaper is the agent's single owner of child reaping.
//
// The agent runs containers in-process with libcontainer, which waits on its
// own short-lived bootstrap children with exec.Cmd/os.Process.Wait, and the
// agent itself waits on container processes that become its children (as
// PID 1 or as a child subreaper). A plain wait4(-1) loop would steal the exit
// statuses of the former, so the Reaper never waits on "any" child:
//
//   - Subscribed pids are reaped with wait4(pid, WNOHANG) when SIGCHLD
//     arrives, and at once on Subscribe (the process may already be a zombie).
//   - Orphans (zombie children nobody subscribed to) are found by scanning
//     /proc and reaped only after they have been seen as zombies for at least
//     the grace period, so a goroutine's own Wait on its exec.Cmd always wins.
//
// Only wait4 with an explicit pid is ever called. Scans are coalesced and
// rate-limited; an idle Reaper with no zombies pending arms no timer.
package reaper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// Defaults for the options.
const (
	// DefaultGrace is how long an unsubscribed zombie child is left for its
	// owner to Wait on before the orphan scan reaps it.
	DefaultGrace = 2 * time.Second
	// DefaultScanInterval is the minimum spacing between two /proc scans.
	DefaultScanInterval = time.Second

	// recentTTL is how long a collected exit is kept for a late Subscribe
	// of the same pid; recentMax bounds that cache.
	recentTTL = time.Minute
	recentMax = 1024
)

// Exit is the termination of one child process.
type Exit struct {
	Pid int
	// Status is the exit code, or 128+signal number when killed by a signal
	// (as a shell reports it).
	Status   int
	Signaled bool
	// Signal is the terminating signal when Signaled, else 0.
	Signal syscall.Signal
	// Time is when the reaper collected the status.
	Time time.Time
}

// Stats are the Reaper's counters.
type Stats struct {
	// OrphansReaped counts zombies reaped by the orphan scan.
	OrphansReaped uint64
	// ExitsDelivered counts exits sent to subscribers.
	ExitsDelivered uint64
	// Scans counts /proc scans.
	Scans uint64
	// Subscribed is the number of pids with at least one subscriber.
	Subscribed int
}

// Option configures a Reaper.
type Option func(*Reaper)

// WithGrace sets how long an unsubscribed zombie child must have been seen
// before the orphan scan reaps it. Zero reaps on first sight (only safe when
// nothing in the process calls Wait on its own children); negative values
// are ignored.
func WithGrace(d time.Duration) Option {
	return func(r *Reaper) {
		if d >= 0 {
			r.grace = d
		}
	}
}

// WithScanInterval sets the minimum spacing between /proc scans. Values
// below 10ms are ignored.
func WithScanInterval(d time.Duration) Option {
	return func(r *Reaper) {
		if d >= 10*time.Millisecond {
			r.scanInterval = d
		}
	}
}

// Reaper reaps the agent's children. Create it with New, then Start it once.
type Reaper struct {
	log          *slog.Logger
	grace        time.Duration
	scanInterval time.Duration
	self         int
	done         chan struct{}

	mu   sync.Mutex
	subs map[int][]chan Exit
	// recent holds recently collected exits for late subscribers;
	// recentOrder is their insertion order, oldest first.
	recent      map[int]Exit
	recentOrder []recentKey
	started     bool
	stopped     bool
	stats       Stats

	// seen maps zombie children to the time a scan first saw them. Only the
	// loop goroutine touches it.
	seen map[zombie]time.Time
}

type recentKey struct {
	pid int
	at  time.Time
}

// zombie identifies a zombie process; the start time guards against pid
// reuse between two scans.
type zombie struct {
	pid   int
	start uint64
}

// New returns a Reaper that logs to logger (nil discards logs).
func New(logger *slog.Logger, opts ...Option) *Reaper {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Reaper{
		log:          logger,
		grace:        DefaultGrace,
		scanInterval: DefaultScanInterval,
		self:         os.Getpid(),
		done:         make(chan struct{}),
		subs:         make(map[int][]chan Exit),
		recent:       make(map[int]Exit),
		seen:         make(map[zombie]time.Time),
	}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Start installs SIGCHLD notification and runs the reaping goroutine until
// ctx is done. On stop, the channels of pending subscribers are closed
// without a value. Start may be called once.
func (r *Reaper) Start(ctx context.Context) error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return fmt.Errorf("starting reaper: already started: %w", errdefs.ErrFailedPrecondition)
	}
	r.started = true
	r.mu.Unlock()

	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, unix.SIGCHLD)
	go r.loop(ctx, sigc)
	return nil
}

// Done is closed when the goroutine started by Start has returned.
func (r *Reaper) Done() <-chan struct{} { return r.done }

// Subscribe returns a channel that receives the exit of child pid, then is
// closed. The pid is reaped at once if it has already exited. Several
// subscribers of one pid all receive the exit, and so does a late subscriber
// within a minute of the exit being collected (delivered to someone else or
// reaped as an orphan).
//
// The channel is closed without a value if no status can be collected: pid
// is not positive, the process no longer exists and is not (or no longer) a
// child of this process (for example someone else reaped it), the reaper has
// stopped, or Unsubscribe was called. A pid that exists but is not yet a
// child (it may be reparented to us later) stays subscribed.
func (r *Reaper) Subscribe(pid int) <-chan Exit {
	ch := make(chan Exit, 1)
	if pid <= 0 {
		close(ch)
		return ch
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.subs[pid] = append(r.subs[pid], ch)
	r.tryReapLocked(pid)
	if r.stopped {
		// Nothing will deliver later.
		r.closeSubsLocked(pid)
	}
	return ch
}

// Unsubscribe closes, without a value, the channels of every subscriber of
// pid and forgets them. The process, if it exits later, becomes an orphan
// for the scan.
func (r *Reaper) Unsubscribe(pid int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closeSubsLocked(pid)
}

// Stats returns a snapshot of the counters.
func (r *Reaper) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Subscribed = len(r.subs)
	return s
}

func (r *Reaper) loop(ctx context.Context, sigc chan os.Signal) {
	defer close(r.done)
	defer signal.Stop(sigc)
	defer r.stop()

	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var (
		armedAt  time.Time // zero when the timer is not armed
		lastScan time.Time
		dirty    = true // a scan is owed
		pending  time.Time
	)
	for {
		now := time.Now()
		r.mu.Lock()
		r.reapSubscribedLocked()
		r.mu.Unlock()

		due := !pending.IsZero() && !now.Before(pending)
		if (dirty || due) && now.Sub(lastScan) >= r.scanInterval {
			dirty = false
			lastScan = now
			pending = r.scan(now)
		}

		// Next wake-up: an owed scan, or the earliest pending zombie's due
		// time, never sooner than the rate limit allows.
		var next time.Time
		if dirty {
			next = lastScan.Add(r.scanInterval)
		}
		if !pending.IsZero() {
			due := pending
			if earliest := lastScan.Add(r.scanInterval); due.Before(earliest) {
				due = earliest
			}
			if next.IsZero() || due.Before(next) {
				next = due
			}
		}
		if !next.IsZero() && (armedAt.IsZero() || !armedAt.Equal(next)) {
			timer.Reset(time.Until(next))
			armedAt = next
		} else if next.IsZero() && !armedAt.IsZero() {
			timer.Stop()
			armedAt = time.Time{}
		}

		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-sigc:
			dirty = true
		case <-timer.C:
			armedAt = time.Time{}
		}
	}
}

// stop marks the reaper stopped and closes every pending subscription.
func (r *Reaper) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	for pid := range r.subs {
		r.closeSubsLocked(pid)
	}
}

// reapSubscribedLocked tries every subscribed pid once: O(subscribed) wait4
// calls.
func (r *Reaper) reapSubscribedLocked() {
	for pid := range r.subs {
		r.tryReapLocked(pid)
	}
}

// tryReapLocked collects pid's status if it has exited and delivers it.
func (r *Reaper) tryReapLocked(pid int) {
	ex, ok, err := wait(pid)
	switch {
	case ok:
		r.rememberLocked(ex)
		r.deliverLocked(ex)
	case err == nil:
		// Still running; a remembered exit under this pid is stale.
		delete(r.recent, pid)
	case errors.Is(err, unix.ECHILD):
		if ex, cached := r.recent[pid]; cached && time.Since(ex.Time) <= recentTTL {
			r.deliverLocked(ex)
			return
		}
		if err := unix.Kill(pid, 0); err == nil || errors.Is(err, unix.EPERM) {
			// Exists but is not our child (yet): keep waiting.
			return
		}
		r.log.Debug("subscribed pid is gone and not our child", "pid", pid)
		r.closeSubsLocked(pid)
	default:
		r.log.Warn("wait4 failed", "pid", pid, "err", err)
	}
}

func (r *Reaper) deliverLocked(ex Exit) {
	for _, ch := range r.subs[ex.Pid] {
		ch <- ex // buffered 1 and sent once: never blocks
		close(ch)
		r.stats.ExitsDelivered++
	}
	delete(r.subs, ex.Pid)
}

func (r *Reaper) closeSubsLocked(pid int) {
	for _, ch := range r.subs[pid] {
		close(ch)
	}
	delete(r.subs, pid)
}

// scan looks for zombie children nobody subscribed to and reaps those first
// seen at least grace ago. It returns the time the earliest remaining zombie
// becomes due, or zero if none remain.
func (r *Reaper) scan(now time.Time) time.Time {
	zs, err := zombieChildren("/proc", r.self)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Scans++
	r.pruneRecentLocked(now)
	if err != nil {
		r.log.Warn("scanning for zombie children", "err", err)
		// Keep the previous view; try again after the grace.
		return now.Add(r.grace)
	}
	seen := make(map[zombie]time.Time, len(zs))
	var next time.Time
	for _, z := range zs {
		if _, sub := r.subs[z.pid]; sub {
			r.tryReapLocked(z.pid)
			continue
		}
		first, ok := r.seen[z]
		if !ok {
			first = now
		}
		if due := first.Add(r.grace); now.Before(due) {
			seen[z] = first
			if next.IsZero() || due.Before(next) {
				next = due
			}
			continue
		}
		ex, reaped, err := wait(z.pid)
		switch {
		case reaped:
			r.stats.OrphansReaped++
			r.rememberLocked(ex)
			r.log.Debug("reaped orphan", "pid", ex.Pid, "status", ex.Status)
		case err == nil, errors.Is(err, unix.ECHILD):
			// Not ready, or its owner reaped it first.
		default:
			r.log.Warn("wait4 on orphan failed", "pid", z.pid, "err", err)
		}
	}
	r.seen = seen
	return next
}

// rememberLocked keeps ex for a later Subscribe of the same pid, evicting
// the oldest entry when the cache is full.
func (r *Reaper) rememberLocked(ex Exit) {
	r.pruneRecentLocked(ex.Time)
	if len(r.recent) >= recentMax {
		r.evictLocked()
	}
	r.recent[ex.Pid] = ex
	r.recentOrder = append(r.recentOrder, recentKey{pid: ex.Pid, at: ex.Time})
}

// evictLocked drops the oldest remembered exit.
func (r *Reaper) evictLocked() {
	for len(r.recentOrder) > 0 {
		k := r.recentOrder[0]
		r.recentOrder = r.recentOrder[1:]
		if e, ok := r.recent[k.pid]; ok && e.Time.Equal(k.at) {
			delete(r.recent, k.pid)
			return
		}
	}
}

// pruneRecentLocked forgets exits older than recentTTL.
func (r *Reaper) pruneRecentLocked(now time.Time) {
	for len(r.recentOrder) > 0 && now.Sub(r.recentOrder[0].at) > recentTTL {
		k := r.recentOrder[0]
		r.recentOrder = r.recentOrder[1:]
		if e, ok := r.recent[k.pid]; ok && e.Time.Equal(k.at) {
			delete(r.recent, k.pid)
		}
	}
	if len(r.recentOrder) == 0 {
		r.recentOrder = nil // let the backing array go
	}
}

// wait calls wait4(pid, WNOHANG|__WALL). ok reports a collected exit; ok false
// with a nil error means the process has not exited.
func wait(pid int) (Exit, bool, error) {
	var ws unix.WaitStatus
	for {
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG|unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return Exit{}, false, err
		}
		if got != pid {
			return Exit{}, false, nil
		}
		return exitFromStatus(pid, ws), true, nil
	}
}

func exitFromStatus(pid int, ws unix.WaitStatus) Exit {
	ex := Exit{Pid: pid, Time: time.Now()}
	switch {
	case ws.Signaled():
		ex.Signaled = true
		ex.Signal = syscall.Signal(ws.Signal())
		ex.Status = 128 + int(ws.Signal())
	default:
		ex.Status = ws.ExitStatus()
	}
	return ex
}

// zombieChildren lists the zombie processes under procRoot whose parent is
// ppid.
func zombieChildren(procRoot string, ppid int) ([]zombie, error) {
	d, err := os.Open(procRoot)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", procRoot, err)
	}
	defer d.Close()
	var (
		out []zombie
		buf = make([]byte, 1024)
	)
	for {
		names, err := d.Readdirnames(256)
		for _, name := range names {
			if name == "" || name[0] < '0' || name[0] > '9' {
				continue
			}
			pid, perr := strconv.Atoi(name)
			if perr != nil || pid <= 0 {
				continue
			}
			z, isChildZombie := readZombie(procRoot+"/"+name+"/stat", pid, ppid, buf)
			if isChildZombie {
				out = append(out, z)
			}
		}
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, fmt.Errorf("reading %s: %w", procRoot, err)
		}
	}
}

// readZombie reads a /proc/<pid>/stat file and reports whether the process
// is a zombie child of ppid.
func readZombie(path string, pid, ppid int, buf []byte) (zombie, bool) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return zombie{}, false // raced with exit, or not ours to read
	}
	n, err := unix.Read(fd, buf)
	_ = unix.Close(fd)
	if err != nil || n <= 0 {
		return zombie{}, false
	}
	state, parent, start, ok := parseStat(buf[:n])
	if !ok || state != 'Z' || parent != ppid {
		return zombie{}, false
	}
	return zombie{pid: pid, start: start}, true
}

// parseStat extracts state, ppid and starttime from a /proc/<pid>/stat line.
func parseStat(b []byte) (state byte, ppid int, start uint64, ok bool) {
	// comm may contain spaces and parentheses: the fields start after the
	// last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state), fields[1] field 4 (ppid), fields[19]
	// field 22 (starttime).
	if len(fields) < 20 || len(fields[0]) != 1 {
		return 0, 0, 0, false
	}
	p, err := strconv.Atoi(string(fields[1]))
	if err != nil {
		return 0, 0, 0, false
	}
	st, err := strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return 0, 0, 0, false
	}
	return fields[0][0], p, st, true
}
