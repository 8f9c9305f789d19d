package reaper

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// startReaper starts a Reaper and stops it (waiting for its goroutine) when
// the test ends, so reapers of different tests never overlap.
func startReaper(t *testing.T, opts ...Option) *Reaper {
	t.Helper()
	r := New(nil, opts...)
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.Done():
		case <-time.After(5 * time.Second):
			t.Error("reaper goroutine did not stop")
		}
	})
	return r
}

// start runs a command without ever calling Wait on it.
func start(t *testing.T, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

func recv(t *testing.T, ch <-chan Exit, within time.Duration) (Exit, bool) {
	t.Helper()
	select {
	case ex, ok := <-ch:
		return ex, ok
	case <-time.After(within):
		t.Fatalf("no exit within %v", within)
		return Exit{}, false
	}
}

// procState returns the state letter and parent of pid, or ok=false if the
// process is gone.
func procState(pid int) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	st, pp, _, ok := parseStat(b)
	return st, pp, ok
}

func waitZombie(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if st, _, ok := procState(pid); ok && st == 'Z' {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("pid %d did not become a zombie", pid)
}

var subreaperOnce sync.Once

// becomeSubreaper makes the test binary a child subreaper so orphaned
// grandchildren are reparented to it.
func becomeSubreaper(t *testing.T) {
	t.Helper()
	var err error
	subreaperOnce.Do(func() {
		err = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	})
	if err != nil {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
}

func TestParseStat(t *testing.T) {
	// Fields 5..21 after "Z 7", then starttime (field 22) and more.
	tail := strings.Repeat(" 0", 16) + " 12345 0 0"
	tests := []struct {
		name      string
		line      string
		wantOK    bool
		wantState byte
		wantPPid  int
		wantStart uint64
	}{
		{"plain", "42 (sleep) Z 7 42" + tail, true, 'Z', 7, 12345},
		{"comm with parens and spaces", "42 (a) (b c) S 9 42" + tail, true, 'S', 9, 12345},
		{"no paren", "42 sleep Z 7", false, 0, 0, 0},
		{"truncated", "42 (sleep) Z 7 42 0", false, 0, 0, 0},
		{"bad starttime", "42 (sleep) Z 7 42" + strings.Repeat(" 0", 16) + " x", false, 0, 0, 0},
		{"bad ppid", "42 (sleep) Z x 42" + tail, false, 0, 0, 0},
		{"empty", "", false, 0, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, pp, start, ok := parseStat([]byte(tc.line))
			if ok != tc.wantOK {
				t.Fatalf("ok = %v, want %v", ok, tc.wantOK)
			}
			if ok && (st != tc.wantState || pp != tc.wantPPid || start != tc.wantStart) {
				t.Fatalf("got (%c, %d, %d), want (%c, %d, %d)", st, pp, start, tc.wantState, tc.wantPPid, tc.wantStart)
			}
		})
	}
}

func TestSubscribeExit(t *testing.T) {
	r := startReaper(t)
	tests := []struct {
		name         string
		args         []string
		kill         syscall.Signal
		wantStatus   int
		wantSignaled bool
	}{
		{"exit 0", []string{"/bin/true"}, 0, 0, false},
		{"exit 3", []string{"/bin/sh", "-c", "exit 3"}, 0, 3, false},
		{"SIGKILL", []string{"/bin/sleep", "30"}, syscall.SIGKILL, 137, true},
		{"SIGTERM", []string{"/bin/sleep", "30"}, syscall.SIGTERM, 143, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cmd := start(t, tc.args[0], tc.args[1:]...)
			ch := r.Subscribe(cmd.Process.Pid)
			if tc.kill != 0 {
				if err := cmd.Process.Signal(tc.kill); err != nil {
					t.Fatal(err)
				}
			}
			ex, ok := recv(t, ch, 10*time.Second)
			if !ok {
				t.Fatal("channel closed without an exit")
			}
			if ex.Pid != cmd.Process.Pid || ex.Status != tc.wantStatus || ex.Signaled != tc.wantSignaled {
				t.Fatalf("exit = %+v, want pid %d status %d signaled %v", ex, cmd.Process.Pid, tc.wantStatus, tc.wantSignaled)
			}
			if tc.wantSignaled && ex.Signal != tc.kill {
				t.Fatalf("signal = %v, want %v", ex.Signal, tc.kill)
			}
			if ex.Time.IsZero() {
				t.Fatal("exit time not set")
			}
			if _, ok := <-ch; ok {
				t.Fatal("channel not closed after delivery")
			}
			if _, _, alive := procState(cmd.Process.Pid); alive {
				t.Fatalf("pid %d still in /proc after its exit was delivered", cmd.Process.Pid)
			}
		})
	}
}

func TestExitBeforeSubscribe(t *testing.T) {
	r := startReaper(t)
	cmd := start(t, "/bin/sh", "-c", "exit 5")
	waitZombie(t, cmd.Process.Pid)
	ex, ok := recv(t, r.Subscribe(cmd.Process.Pid), time.Second)
	if !ok || ex.Status != 5 {
		t.Fatalf("exit = %+v (ok %v), want status 5", ex, ok)
	}
}

func TestSubscribeBeforeStart(t *testing.T) {
	r := New(nil)
	cmd := start(t, "/bin/sleep", "0.1")
	ch := r.Subscribe(cmd.Process.Pid)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); <-r.Done() }()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if ex, ok := recv(t, ch, 10*time.Second); !ok || ex.Status != 0 {
		t.Fatalf("exit = %+v (ok %v), want status 0", ex, ok)
	}
}

func TestSubscribeNoStatus(t *testing.T) {
	r := startReaper(t)
	// A pid that existed as our child but was reaped by someone else.
	gone := exec.Command("/bin/true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		pid  int
	}{
		{"zero", 0},
		{"negative", -5},
		{"reaped elsewhere", gone.Process.Pid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if ex, ok := recv(t, r.Subscribe(tc.pid), time.Second); ok {
				t.Fatalf("got exit %+v, want a closed channel", ex)
			}
		})
	}
	if s := r.Stats(); s.Subscribed != 0 {
		t.Fatalf("Subscribed = %d, want 0", s.Subscribed)
	}
}

func TestNotOurChildStaysSubscribed(t *testing.T) {
	r := startReaper(t)
	ch := r.Subscribe(os.Getppid())
	select {
	case ex, ok := <-ch:
		t.Fatalf("got (%+v, %v) for a live non-child, want nothing yet", ex, ok)
	case <-time.After(100 * time.Millisecond):
	}
	r.Unsubscribe(os.Getppid())
	if _, ok := recv(t, ch, time.Second); ok {
		t.Fatal("Unsubscribe delivered a value")
	}
}

func TestMultipleSubscribers(t *testing.T) {
	r := startReaper(t)
	cmd := start(t, "/bin/sh", "-c", "sleep 0.2; exit 9")
	a, b := r.Subscribe(cmd.Process.Pid), r.Subscribe(cmd.Process.Pid)
	for i, ch := range []<-chan Exit{a, b} {
		if ex, ok := recv(t, ch, 10*time.Second); !ok || ex.Status != 9 {
			t.Fatalf("subscriber %d: exit = %+v (ok %v), want status 9", i, ex, ok)
		}
	}
	// A subscriber arriving after delivery gets the remembered exit.
	if ex, ok := recv(t, r.Subscribe(cmd.Process.Pid), time.Second); !ok || ex.Status != 9 {
		t.Fatalf("late subscriber: exit = %+v (ok %v), want status 9", ex, ok)
	}
	if s := r.Stats(); s.ExitsDelivered != 3 {
		t.Fatalf("ExitsDelivered = %d, want 3", s.ExitsDelivered)
	}
}

func TestUnsubscribe(t *testing.T) {
	r := startReaper(t)
	cmd := start(t, "/bin/sleep", "30")
	ch := r.Subscribe(cmd.Process.Pid)
	r.Unsubscribe(cmd.Process.Pid)
	if ex, ok := recv(t, ch, time.Second); ok {
		t.Fatalf("got exit %+v after Unsubscribe, want a closed channel", ex)
	}
	if s := r.Stats(); s.Subscribed != 0 {
		t.Fatalf("Subscribed = %d, want 0", s.Subscribed)
	}
	// A new subscription still gets the exit.
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	if ex, ok := recv(t, r.Subscribe(cmd.Process.Pid), 10*time.Second); !ok || ex.Status != 137 {
		t.Fatalf("exit = %+v (ok %v), want status 137", ex, ok)
	}
}

func TestOrphanReapedAfterGrace(t *testing.T) {
	becomeSubreaper(t)
	const grace = 1500 * time.Millisecond
	r := startReaper(t, WithGrace(grace), WithScanInterval(100*time.Millisecond))
	before := r.Stats().OrphansReaped

	// The shell backgrounds a grandchild and exits; the grandchild is
	// reparented to us and becomes an unsubscribed zombie. We Wait on the
	// shell ourselves: the reaper must not steal it.
	out, err := exec.Command("/bin/sh", "-c", "/bin/sleep 0.2 >/dev/null 2>&1 & echo $!").Output()
	if err != nil {
		t.Fatalf("shell: %v", err)
	}
	gpid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("grandchild pid %q: %v", out, err)
	}
	waitZombie(t, gpid)
	if _, pp, _ := procState(gpid); pp != os.Getpid() {
		t.Fatalf("grandchild parent = %d, want us (%d)", pp, os.Getpid())
	}
	zombieAt := time.Now()

	// Not before the grace: it became a zombie no later than zombieAt.
	time.Sleep(grace / 3)
	if st, _, ok := procState(gpid); !ok || st != 'Z' {
		t.Fatalf("orphan reaped %v after it was seen as a zombie, before the %v grace", time.Since(zombieAt), grace)
	}
	deadline := time.Now().Add(grace + 10*time.Second)
	for {
		if _, _, ok := procState(gpid); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d not reaped", gpid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := r.Stats().OrphansReaped - before; got != 1 {
		t.Fatalf("OrphansReaped grew by %d, want 1", got)
	}
	// A late subscriber still gets the orphan's status.
	if ex, ok := recv(t, r.Subscribe(gpid), time.Second); !ok || ex.Status != 0 || ex.Pid != gpid {
		t.Fatalf("late subscribe: exit = %+v (ok %v), want pid %d status 0", ex, ok, gpid)
	}
}

func TestOwnWaitNotStolen(t *testing.T) {
	r := startReaper(t, WithScanInterval(50*time.Millisecond)) // default grace
	cmd := start(t, "/bin/sh", "-c", "exit 7")
	waitZombie(t, cmd.Process.Pid)
	scans := r.Stats().Scans

	// Keep SIGCHLD coming (and so scans running) while the zombie waits.
	end := time.Now().Add(500 * time.Millisecond)
	for time.Now().Before(end) {
		other := start(t, "/bin/true")
		recv(t, r.Subscribe(other.Process.Pid), 10*time.Second)
		time.Sleep(50 * time.Millisecond)
	}
	if r.Stats().Scans <= scans {
		t.Fatal("no scan ran while the zombie waited; the test proves nothing")
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Fatalf("Wait = %v, want exit status 7 (status stolen?)", err)
	}
	if s := r.Stats(); s.OrphansReaped != 0 {
		t.Fatalf("OrphansReaped = %d, want 0", s.OrphansReaped)
	}
}

func TestManyChildrenNoZombies(t *testing.T) {
	const n = 1000
	r := startReaper(t)
	begin := time.Now()
	scans := r.Stats().Scans
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		failed []string
		sem    = make(chan struct{}, 8)
	)
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cmd := exec.Command("/bin/true")
			if err := cmd.Start(); err != nil {
				mu.Lock()
				failed = append(failed, err.Error())
				mu.Unlock()
				return
			}
			select {
			case ex, ok := <-r.Subscribe(cmd.Process.Pid):
				if !ok || ex.Status != 0 {
					mu.Lock()
					failed = append(failed, "bad exit "+strconv.Itoa(ex.Status))
					mu.Unlock()
				}
			case <-time.After(30 * time.Second):
				mu.Lock()
				failed = append(failed, "timeout pid "+strconv.Itoa(cmd.Process.Pid))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d failures, first: %s", len(failed), failed[0])
	}
	zs, err := zombieChildren("/proc", os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(zs) != 0 {
		t.Fatalf("%d zombie children left: %+v", len(zs), zs)
	}
	s := r.Stats()
	if s.Subscribed != 0 {
		t.Fatalf("Subscribed = %d, want 0", s.Subscribed)
	}
	// Scans are rate-limited to one per DefaultScanInterval however many
	// SIGCHLDs arrive.
	maxScans := uint64(time.Since(begin)/DefaultScanInterval) + 2
	if got := s.Scans - scans; got > maxScans {
		t.Fatalf("%d scans for %d children in %v, want at most %d", got, n, time.Since(begin), maxScans)
	}
	t.Logf("%d children in %v, %d scans", n, time.Since(begin), s.Scans-scans)
}

func TestStop(t *testing.T) {
	r := New(nil)
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("second Start = %v, want ErrFailedPrecondition", err)
	}
	cmd := start(t, "/bin/sleep", "30")
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	ch := r.Subscribe(cmd.Process.Pid)
	cancel()
	select {
	case <-r.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("reaper did not stop")
	}
	if ex, ok := recv(t, ch, time.Second); ok {
		t.Fatalf("pending subscriber got %+v, want a closed channel on stop", ex)
	}
	if ex, ok := recv(t, r.Subscribe(cmd.Process.Pid), time.Second); ok {
		t.Fatalf("Subscribe after stop got %+v, want a closed channel", ex)
	}
}

func TestRecentExits(t *testing.T) {
	base := time.Now()
	tests := []struct {
		name      string
		n         int           // exits remembered, pids 1..n, 1ms apart
		pruneAt   time.Duration // prune at base+pruneAt, if > 0
		wantLen   int
		wantFirst int // lowest pid still remembered
	}{
		{"under the bound", 10, 0, 10, 1},
		{"bound evicts the oldest", recentMax + 5, 0, recentMax, 6},
		{"ttl prunes old entries", 10, recentTTL + 5500*time.Microsecond, 5, 6},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := New(nil)
			for i := 1; i <= tc.n; i++ {
				r.rememberLocked(Exit{Pid: i, Time: base.Add(time.Duration(i) * time.Millisecond)})
			}
			if tc.pruneAt > 0 {
				r.pruneRecentLocked(base.Add(tc.pruneAt))
			}
			if len(r.recent) != tc.wantLen {
				t.Fatalf("len = %d, want %d", len(r.recent), tc.wantLen)
			}
			if _, ok := r.recent[tc.wantFirst]; !ok {
				t.Fatalf("pid %d missing", tc.wantFirst)
			}
			if _, ok := r.recent[tc.wantFirst-1]; ok && tc.wantFirst > 1 {
				t.Fatalf("pid %d still remembered", tc.wantFirst-1)
			}
			if len(r.recentOrder) != len(r.recent) {
				t.Fatalf("order has %d entries for %d exits", len(r.recentOrder), len(r.recent))
			}
		})
	}
}
