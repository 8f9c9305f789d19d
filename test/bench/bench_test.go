// Package bench compares cova-agent with the tools a user would use instead,
// side by side in one run, and reports ratios (make bench). It drives the
// built bin/cova-agent as a separate process, as the Kata shim would.
package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/agent/ocispec"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/test/testutil"
)

func agentBin(tb testing.TB) string {
	tb.Helper()
	p, err := filepath.Abs("../../bin/cova-agent")
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		tb.Skip("bin/cova-agent not built: run make bench")
	}
	return p
}

type agentProc struct {
	cmd    *exec.Cmd
	client *ttrpc.Client
	api    pb.AgentServiceService
	health pb.HealthService
	// startup is exec → first successful Health.Check.
	startup time.Duration
}

func startAgent(tb testing.TB) *agentProc {
	tb.Helper()
	dir := tb.TempDir()
	sock := filepath.Join(dir, "a.sock")
	cmd := exec.Command(agentBin(tb), "--listen", "unix://"+sock, "--root", filepath.Join(dir, "state"), "--log-level", "warn")
	cmd.Stderr = os.Stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	var conn net.Conn
	var err error
	for time.Since(t0) < 10*time.Second {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	if err != nil {
		tb.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	p := &agentProc{cmd: cmd, client: c, api: pb.NewAgentServiceClient(c), health: pb.NewHealthClient(c)}
	if _, err := p.health.Check(context.Background(), &pb.CheckRequest{}); err != nil {
		tb.Fatal(err)
	}
	p.startup = time.Since(t0)
	tb.Cleanup(func() {
		c.Close()
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
	})
	return p
}

func benchSpec(rootfs string, args ...string) *specs.Spec {
	s := testutil.Spec(rootfs, args...)
	s.Linux.CgroupsPath = ""
	ns := s.Linux.Namespaces[:0]
	for _, n := range s.Linux.Namespaces {
		if n.Type != specs.NetworkNamespace {
			ns = append(ns, n)
		}
	}
	s.Linux.Namespaces = ns
	return s
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkCreateStartWait runs `true` through the agent (Create, Start,
// Wait, Remove over ttrpc) and with `runc run` of the same bundle,
// interleaved, and reports both medians and their ratio (goal ≤ 1.2).
func BenchmarkCreateStartWait(b *testing.B) {
	testutil.RequireRoot(b)
	runc := testutil.RequireTool(b, "runc")
	a := startAgent(b)
	ctx := context.Background()
	rootfs := testutil.BusyboxRootfs(b)
	spec := benchSpec(rootfs, "true")
	g, err := ocispec.FromSpec(spec)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := a.api.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "bench"}); err != nil {
		b.Fatal(err)
	}
	bundle := b.TempDir()
	rs := benchSpec(rootfs, "true")
	rs.Linux.CgroupsPath = "cova-bench/runc"
	data, _ := json.Marshal(rs)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	runcRoot := b.TempDir()
	var agentT, runcT []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("c%d", i)
		t0 := time.Now()
		if _, err := a.api.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: id, OCI: g}); err != nil {
			b.Fatal(err)
		}
		if _, err := a.api.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: id}); err != nil {
			b.Fatal(err)
		}
		if w, err := a.api.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: id}); err != nil || w.Status != 0 {
			b.Fatal(w, err)
		}
		if _, err := a.api.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: id}); err != nil {
			b.Fatal(err)
		}
		agentT = append(agentT, time.Since(t0))

		t0 = time.Now()
		cmd := exec.Command(runc, "--root", runcRoot, "run", "--bundle", bundle, "r"+id)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("runc run: %v: %s", err, out)
		}
		runcT = append(runcT, time.Since(t0))
	}
	b.StopTimer()
	am, rm := median(agentT), median(runcT)
	b.ReportMetric(ms(am), "agent-ms")
	b.ReportMetric(ms(rm), "runc-ms")
	b.ReportMetric(float64(am)/float64(rm), "agent/runc")
}

// BenchmarkExec measures an exec of `true` in a running container through
// the agent against `runc exec` into a runc container.
func BenchmarkExec(b *testing.B) {
	testutil.RequireRoot(b)
	runc := testutil.RequireTool(b, "runc")
	a := startAgent(b)
	ctx := context.Background()
	rootfs := testutil.BusyboxRootfs(b)
	g, err := ocispec.FromSpec(benchSpec(rootfs, "sleep", "1000"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := a.api.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: "bench"}); err != nil {
		b.Fatal(err)
	}
	if _, err := a.api.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: g}); err != nil {
		b.Fatal(err)
	}
	if _, err := a.api.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: "c"}); err != nil {
		b.Fatal(err)
	}
	bundle := b.TempDir()
	rs := benchSpec(rootfs, "sleep", "1000")
	rs.Linux.CgroupsPath = "cova-bench/runc-exec"
	data, _ := json.Marshal(rs)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	runcRoot := b.TempDir()
	// Detached: the container inherits runc's stdio, so give it /dev/null
	// (a pipe would keep CombinedOutput waiting forever).
	if err := exec.Command(runc, "--root", runcRoot, "run", "-d", "--bundle", bundle, "rexec").Run(); err != nil {
		b.Fatalf("runc run -d: %v", err)
	}
	b.Cleanup(func() {
		_ = exec.Command(runc, "--root", runcRoot, "delete", "-f", "rexec").Run()
	})
	proc := g.Process
	proc.Args = []string{"true"}
	var agentT, runcT []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		id := "e" + strconv.Itoa(i)
		t0 := time.Now()
		if _, err := a.api.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: "c", ExecId: id, Process: proc}); err != nil {
			b.Fatal(err)
		}
		if w, err := a.api.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: "c", ExecId: id}); err != nil || w.Status != 0 {
			b.Fatal(w, err)
		}
		agentT = append(agentT, time.Since(t0))
		t0 = time.Now()
		if out, err := exec.Command(runc, "--root", runcRoot, "exec", "rexec", "true").CombinedOutput(); err != nil {
			b.Fatalf("runc exec: %v: %s", err, out)
		}
		runcT = append(runcT, time.Since(t0))
	}
	b.StopTimer()
	am, rm := median(agentT), median(runcT)
	b.ReportMetric(ms(am), "agent-ms")
	b.ReportMetric(ms(rm), "runc-exec-ms")
	b.ReportMetric(float64(am)/float64(rm), "agent/runc")
}

// BenchmarkStartupAndIdleRSS measures exec of the agent binary → first
// answered Health.Check, and the agent's resident memory once idle.
func BenchmarkStartupAndIdleRSS(b *testing.B) {
	agentBin(b)
	var st []time.Duration
	var rss, anon []float64
	for i := 0; i < b.N; i++ {
		a := startAgent(b)
		st = append(st, a.startup)
		time.Sleep(500 * time.Millisecond)
		rss = append(rss, float64(statusKB(b, a.cmd.Process.Pid, "VmRSS")))
		anon = append(anon, float64(statusKB(b, a.cmd.Process.Pid, "RssAnon")))
	}
	sort.Float64s(rss)
	sort.Float64s(anon)
	b.ReportMetric(ms(median(st)), "startup-ms")
	b.ReportMetric(rss[len(rss)/2]/1e3, "idle-rss-MB")
	// RssAnon is the agent's private memory; the rest of VmRSS is the
	// binary's own pages, which an initrd keeps in RAM anyway.
	b.ReportMetric(anon[len(anon)/2]/1e3, "idle-anon-MB")
}

// statusKB reads one "Key: N kB" line of /proc/PID/status.
func statusKB(tb testing.TB, pid int, key string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(l, key+":") {
			f := strings.Fields(l)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb
		}
	}
	tb.Fatalf("no %s in /proc/%d/status", key, pid)
	return 0
}
