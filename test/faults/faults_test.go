package faults

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"

	"github.com/cova-project/cova/test/testutil"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
		return
	}
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild(os.Getenv(childEnv)))
	}
	os.Exit(m.Run())
}

// outcome is how a fault must end. A hang, a panic, a half-written rootfs or
// a leaked secret is never one of them.
type outcome string

const (
	// succeeds: the fault is absorbed without a retry (e.g. skewed clocks).
	succeeds outcome = "succeeds"
	// retried: a bounded retry (re-attest, resume, Retry-After) succeeds.
	retried outcome = "bounded retry, then success"
	// clearError: the caller gets an error of the right class naming the
	// step.
	clearError outcome = "clear error"
	// failClosed: nothing is released or committed, or the boot stops.
	failClosed outcome = "fail-closed"
	// serves: the agent keeps serving; the rpc contract holds.
	serves outcome = "keeps serving"
)

// fault is one row of the catalog.
type fault struct {
	area, name string
	want       outcome
	// bound is the time the whole row (setup included) must finish in;
	// run's ctx carries it as a deadline and a watchdog fails the binary
	// if the row ignores it.
	bound time.Duration
	// root rows need root (skip outside CI, fail with CI=true).
	root bool
	// run injects the fault and drives the real component; it returns the
	// error the caller (the host, the boot sequence) sees, nil on success.
	run func(ctx context.Context, t *testing.T) error
	// classes the error must match (errors.Is), for error outcomes.
	classes []error
	// says are substrings the error must contain (the step, the cause).
	says []string
}

// markers are secrets planted by rows; no error may carry one.
var markers = []string{kbsSecretMarker, registryPassword}

// grace is the slack on a row's bound before the watchdog fires.
const grace = 10 * time.Second

type result struct {
	f       fault
	elapsed time.Duration
	err     error
	ran     bool
	skipped bool
	failed  bool
}

// TestFaults runs every catalogued fault against the real components and
// checks its outcome, its time bound, that no secret is in the error and
// that no goroutine is left behind.
func TestFaults(t *testing.T) {
	var results []result
	for _, f := range catalog() {
		if f.bound <= 0 || f.run == nil {
			t.Fatalf("row %s/%s: no bound or no run", f.area, f.name)
		}
		r := result{f: f}
		before := runtime.NumGoroutine()
		ok := t.Run(f.area+"/"+f.name, func(t *testing.T) {
			r.ran = true
			defer func() { r.skipped = t.Skipped() }()
			if f.root {
				testutil.RequireRoot(t)
			}
			ctx, cancel := context.WithTimeout(context.Background(), f.bound)
			defer cancel()
			watchdog := time.AfterFunc(f.bound+grace, func() {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				panic(fmt.Sprintf("fault row %s/%s hung past %v\n%s", f.area, f.name, f.bound+grace, buf[:n]))
			})
			defer watchdog.Stop()
			start := time.Now()
			err := f.run(ctx, t)
			r.elapsed, r.err = time.Since(start), err
			if r.elapsed > f.bound {
				t.Errorf("took %v, bound %v", r.elapsed, f.bound)
			}
			checkOutcome(t, f, err)
		})
		r.failed = !ok
		if ok && r.ran && !r.skipped {
			if n := settleGoroutines(before, 5*time.Second); n > before+leakSlack {
				buf := make([]byte, 1<<20)
				t.Errorf("%s/%s: %d goroutines before, %d after:\n%s", f.area, f.name, before, n, buf[:runtime.Stack(buf, true)])
				r.failed = true
			}
		}
		results = append(results, r)
	}
	logTable(t, results)
}

// leakSlack tolerates the runtime's and net/http's lazily started helpers.
const leakSlack = 2

// settleGoroutines waits (bounded) for goroutines of finished work to exit
// and returns the count.
func settleGoroutines(want int, limit time.Duration) int {
	deadline := time.Now().Add(limit)
	for {
		n := runtime.NumGoroutine()
		if n <= want+leakSlack || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func checkOutcome(t *testing.T, f fault, err error) {
	t.Helper()
	if err != nil {
		for _, m := range markers {
			if strings.Contains(err.Error(), m) {
				t.Errorf("a secret marker is in the error: %v", err)
			}
		}
	}
	switch f.want {
	case succeeds, retried, serves:
		if err != nil {
			t.Fatalf("want %s, got %v", f.want, err)
		}
	case clearError, failClosed:
		if err == nil {
			t.Fatalf("want %s, got success", f.want)
		}
		for _, c := range f.classes {
			if !errors.Is(err, c) {
				t.Errorf("error %q is not %v", err, c)
			}
		}
		for _, s := range f.says {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not say %q", err, s)
			}
		}
	default:
		t.Fatalf("unknown outcome %q", f.want)
	}
}

// logTable prints the catalog with what each row did (go test -v shows it).
func logTable(t *testing.T, rs []result) {
	var b strings.Builder
	fmt.Fprintf(&b, "\n%-9s | %-58s | %-27s | %7s | %s\n", "area", "fault", "outcome", "time", "error seen by the caller")
	for _, r := range rs {
		status := fmt.Sprintf("%6.2fs", r.elapsed.Seconds())
		switch {
		case !r.ran:
			status = "not run"
		case r.skipped:
			status = "skipped"
		case r.failed:
			status = "FAILED"
		}
		msg := ""
		if r.err != nil {
			msg = shorten(r.err.Error(), 140)
		}
		fmt.Fprintf(&b, "%-9s | %-58s | %-27s | %7s | %s\n", r.f.area, r.f.name, r.f.want, status, msg)
	}
	t.Log(b.String())
}

var (
	digestRE  = regexp.MustCompile(`sha256:[0-9a-f]{12}[0-9a-f]{52}`)
	tempDirRE = regexp.MustCompile(`/tmp/[^ "/]+/[0-9]+/`)
)

// shorten makes an error fit one table cell: one line, digests and temp
// dirs abbreviated, at most n runes.
func shorten(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " | ")
	s = digestRE.ReplaceAllStringFunc(s, func(d string) string { return d[:len("sha256:")+12] + "…" })
	s = tempDirRE.ReplaceAllString(s, "$$TMP/")
	if r := []rune(s); len(r) > n {
		s = string(r[:n]) + "…"
	}
	return s
}

// catalog is every fault of issue 8 (and the threat notes C1–C7), in one
// table.
func catalog() []fault {
	var all []fault
	all = append(all, kbsFaults()...)
	all = append(all, registryFaults()...)
	all = append(all, unpackFaults()...)
	all = append(all, bootFaults()...)
	all = append(all, agentFaults()...)
	return all
}
