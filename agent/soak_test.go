package agent_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	pb "github.com/cova-project/cova/protocols/grpc"
)

// TestSoakContainerCycles runs create/start/exec/wait/remove cycles through
// the agent and checks that file descriptors, goroutines, zombies, mounts
// and cgroups return to their baseline (make soak runs 500 cycles and prints
// the figures; COVA_SOAK_CYCLES overrides the count, -short runs 100).
func TestSoakContainerCycles(t *testing.T) {
	n := 500
	if testing.Short() {
		n = 100
	}
	if v := os.Getenv("COVA_SOAK_CYCLES"); v != "" {
		fmt.Sscan(v, &n)
	}
	e := newEnv(t, nil)
	e.sandbox(t, "sb")
	spec := e.spec(t, "sleep", "1000")
	proc := e.spec(t, "true").Process
	cycle := func(i int) {
		id := fmt.Sprintf("c%d", i)
		if _, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: id, OCI: spec}); err != nil {
			t.Fatalf("cycle %d create: %v", i, err)
		}
		if _, err := e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("cycle %d start: %v", i, err)
		}
		if _, err := e.c.ExecProcess(e.ctx, &pb.ExecProcessRequest{ContainerId: id, ExecId: "x", Process: proc}); err != nil {
			t.Fatalf("cycle %d exec: %v", i, err)
		}
		if w, err := e.c.WaitProcess(e.ctx, &pb.WaitProcessRequest{ContainerId: id, ExecId: "x"}); err != nil || w.Status != 0 {
			t.Fatalf("cycle %d exec wait: %v %v", i, w, err)
		}
		if _, err := e.c.RemoveContainer(e.ctx, &pb.RemoveContainerRequest{ContainerId: id, Timeout: 10}); err != nil {
			t.Fatalf("cycle %d remove: %v", i, err)
		}
	}
	for i := 0; i < 10; i++ { // warm up
		cycle(i)
	}
	time.Sleep(300 * time.Millisecond)
	fds0, gr0, mnt0, rss0 := countFDs(t), runtime.NumGoroutine(), mounts(t), rssKB(t)
	start := time.Now()
	for i := 10; i < n+10; i++ {
		cycle(i)
	}
	took := time.Since(start)
	deadline := time.Now().Add(5 * time.Second)
	for {
		fds, gr, mnt, z := countFDs(t), runtime.NumGoroutine(), mounts(t), zombies(t)
		cg := containerCgroups(t)
		// A small fixed bound (lazily opened fds and goroutines of the
		// runtime and ttrpc), independent of the number of cycles.
		if fds <= fds0+4 && gr <= gr0+3 && mnt == mnt0 && z == 0 && cg == 0 {
			t.Logf("%d cycles in %v (%.1f ms each): fds %d->%d, goroutines %d->%d, mounts %d->%d, zombies 0, container cgroups 0, RSS %d->%d kB",
				n, took.Round(time.Millisecond), float64(took.Milliseconds())/float64(n), fds0, fds, gr0, gr, mnt0, mnt, rss0, rssKB(t))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d cycles: fds %d->%d, goroutines %d->%d, mounts %d->%d, zombies %d, container cgroups left %d",
				n, fds0, fds, gr0, gr, mnt0, mnt, z, cg)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func mounts(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

func rssKB(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			var kb int
			fmt.Sscan(strings.Fields(l)[1], &kb)
			return kb
		}
	}
	return 0
}

// containerCgroups counts leftover per-container cgroup dirs of this test
// (memory controller, v1 hosts; 0 where it cannot look).
func containerCgroups(t *testing.T) int {
	name := strings.ReplaceAll(t.Name(), "/", "_")
	matches, _ := filepath.Glob("/sys/fs/cgroup/memory/*/*/cova-test/" + name + "-*/kata/sb/c[0-9]*")
	more, _ := filepath.Glob("/sys/fs/cgroup/memory/cova-test/" + name + "-*/kata/sb/c[0-9]*")
	n := 0
	for _, m := range append(matches, more...) {
		if fi, err := os.Stat(m); err == nil && fi.IsDir() {
			n++
		}
	}
	return n
}
