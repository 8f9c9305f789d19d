package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/agent/network"
	pb "github.com/cova-project/cova/protocols/grpc"
)

func (a *Agent) guestDetails(r *pb.GuestDetailsRequest) *pb.GuestDetailsResponse {
	resp := &pb.GuestDetailsResponse{
		AgentDetails: &pb.AgentDetails{
			Version:         Version,
			InitDaemon:      a.opts.VM,
			DeviceHandlers:  []string{"blk", "scsi"},
			StorageHandlers: a.opts.Storage.Handlers(),
			SupportsSeccomp: false,
			ExtraFeatures:   []string{},
		},
	}
	if r.MemBlockSize {
		if b, err := os.ReadFile("/sys/devices/system/memory/block_size_bytes"); err == nil {
			if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 16, 64); err == nil {
				resp.MemBlockSizeBytes = v
			}
		}
	}
	if r.MemHotplugProbe {
		_, err := os.Stat("/sys/devices/system/memory/probe")
		resp.SupportMemHotplugProbe = err == nil
	}
	return resp
}

func (a *Agent) setTime(sec, usec int64) error {
	if usec < 0 || usec >= 1_000_000 {
		return invalid("Usec", "%d is outside [0, 1000000)", usec)
	}
	if sec < 0 {
		return invalid("Sec", "%d is negative", sec)
	}
	if !a.opts.VM {
		return hostModeRefusal("set the clock")
	}
	tv := unix.Timeval{Sec: sec, Usec: usec}
	if err := unix.Settimeofday(&tv); err != nil {
		return fmt.Errorf("settimeofday: %w", err)
	}
	return nil
}

// reseedRandom mixes host bytes into the guest pool without crediting
// entropy: untrusted bytes can only add, never replace, randomness.
func (a *Agent) reseedRandom(data []byte) error {
	if len(data) == 0 {
		return invalid("data", "is empty")
	}
	if len(data) > 1<<20 {
		return invalid("data", "%d bytes is more than 1 MiB", len(data))
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open /dev/urandom: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write /dev/urandom: %w", err)
	}
	return nil
}

func (a *Agent) onlineCPUMem(ctx context.Context, r *pb.OnlineCPUMemRequest) error {
	if r.NbCpus > 4096 {
		return invalid("nb_cpus", "%d is more than 4096", r.NbCpus)
	}
	if !a.opts.VM {
		return hostModeRefusal("online CPUs and memory")
	}
	onlined := uint32(0)
	online := func(glob string) (uint32, error) {
		paths, _ := filepath.Glob(glob)
		var n uint32
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				continue
			}
			if strings.TrimSpace(string(b)) == "0" || strings.TrimSpace(string(b)) == "offline" {
				val := "1"
				if strings.Contains(p, "memory") {
					val = "online"
				}
				if err := os.WriteFile(p, []byte(val), 0); err == nil {
					n++
				}
			}
		}
		return n, nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		n, _ := online("/sys/devices/system/cpu/cpu*/online")
		onlined += n
		if !r.Wait || r.NbCpus == 0 || onlined >= r.NbCpus || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if !r.CpuOnly {
		_, _ = online("/sys/devices/system/memory/memory*/state")
	}
	return nil
}

func (a *Agent) volumeStats(p string) (*pb.VolumeStatsResponse, error) {
	if p == "" || !filepath.IsAbs(p) || path.Clean(p) != p {
		return nil, invalid("volume_guest_path", "%q must be an absolute clean path", p)
	}
	if !strings.HasPrefix(p, strings.TrimSuffix(a.opts.Root, "/")+"/") {
		return nil, invalid("volume_guest_path", "%q is outside %s", p, a.opts.Root)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		if os.IsNotExist(err) {
			return nil, fmt.Errorf("volume %s: %w", p, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("statfs %s: %w", p, err)
	}
	bs := uint64(st.Bsize)
	return &pb.VolumeStatsResponse{
		Usage: []*pb.VolumeUsage{
			{Total: st.Blocks * bs, Available: st.Bavail * bs, Used: (st.Blocks - st.Bfree) * bs, Unit: pb.VolumeUsage_BYTES},
			{Total: st.Files, Available: st.Ffree, Used: st.Files - st.Ffree, Unit: pb.VolumeUsage_INODES},
		},
		VolumeCondition: &pb.VolumeCondition{Abnormal: false, Message: "volume is healthy"},
	}, nil
}

func (a *Agent) diagnosticData(_ context.Context, r *pb.GetDiagnosticDataRequest) (*pb.GetDiagnosticDataResponse, error) {
	if r.LogType != "termination_log" {
		return nil, invalid("log_type", "%q is not supported (only termination_log)", r.LogType)
	}
	return nil, unimplemented("GetDiagnosticData")
}

func iptablesCmd(v6 bool, suffix string) string {
	if v6 {
		return "ip6tables-" + suffix
	}
	return "iptables-" + suffix
}

func (a *Agent) getIPTables(ctx context.Context, v6 bool) ([]byte, error) {
	bin := iptablesCmd(v6, "save")
	p, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%s is not in the guest: %w", bin, errdefs.ErrNotImplemented)
	}
	out, err := exec.CommandContext(ctx, p).Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	return out, nil
}

func (a *Agent) setIPTables(ctx context.Context, v6 bool, data []byte) ([]byte, error) {
	if len(data) > 4<<20 {
		return nil, invalid("data", "is larger than 4 MiB")
	}
	bin := iptablesCmd(v6, "restore")
	p, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("%s is not in the guest: %w", bin, errdefs.ErrNotImplemented)
	}
	cmd := exec.CommandContext(ctx, p)
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, invalid("data", "%s rejected the rules: %s", bin, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// readOnlyNetwork lists the agent's own network namespace (host mode allows
// reading it).
func (a *Agent) readOnlyNetwork() *network.Manager {
	return network.New(nil, a.log)
}

// metrics renders agent and guest metrics in the Prometheus text format.
func (a *Agent) metrics() string {
	var b strings.Builder
	gauge := func(name, help string, v float64) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n%s %g\n", name, help, name, name, v)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gauge("cova_agent_up_seconds", "Seconds since the agent started.", time.Since(a.started).Seconds())
	gauge("cova_agent_rss_bytes", "Resident set size of the agent.", float64(processRSS()))
	gauge("cova_agent_go_heap_bytes", "Go heap in use.", float64(ms.HeapInuse))
	gauge("cova_agent_goroutines", "Goroutines.", float64(runtime.NumGoroutine()))
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		gauge("cova_agent_open_fds", "Open file descriptors.", float64(len(ents)))
	}
	gauge("cova_agent_containers", "Containers.", float64(len(a.opts.Containers.List())))
	gauge("cova_agent_rpc_panics_total", "Recovered handler panics.", float64(a.panics.Load()))
	gauge("cova_agent_rpc_errors_total", "Rpcs answered with an error.", float64(a.rpcErrs.Load()))
	var names []string
	counts := map[string]uint64{}
	a.rpcCount.Range(func(k, v any) bool {
		names = append(names, k.(string))
		counts[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	sort.Strings(names)
	b.WriteString("# HELP cova_agent_rpc_total Rpcs served, by method.\n# TYPE cova_agent_rpc_total counter\n")
	for _, n := range names {
		fmt.Fprintf(&b, "cova_agent_rpc_total{method=%q} %d\n", n, counts[n])
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		b.WriteString("# HELP cova_guest_meminfo_bytes /proc/meminfo fields.\n# TYPE cova_guest_meminfo_bytes gauge\n")
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) < 2 {
				continue
			}
			v, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				continue
			}
			if len(f) == 3 && f[2] == "kB" {
				v *= 1024
			}
			fmt.Fprintf(&b, "cova_guest_meminfo_bytes{field=%q} %d\n", strings.TrimSuffix(f[0], ":"), v)
		}
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(data))
		if len(f) >= 3 {
			for i, n := range []string{"1m", "5m", "15m"} {
				if v, err := strconv.ParseFloat(f[i], 64); err == nil {
					fmt.Fprintf(&b, "cova_guest_load{period=%q} %g\n", n, v)
				}
			}
		}
	}
	if a.opts.ExtraMetrics != nil {
		a.opts.ExtraMetrics(&b)
	}
	return b.String()
}

func cgroupStatsToPB(s *cgroups.Stats) *pb.CgroupStats {
	if s == nil {
		return nil
	}
	out := &pb.CgroupStats{
		CpuStats: &pb.CpuStats{
			CpuUsage: &pb.CpuUsage{
				TotalUsage:        s.CpuStats.CpuUsage.TotalUsage,
				PercpuUsage:       s.CpuStats.CpuUsage.PercpuUsage,
				UsageInKernelmode: s.CpuStats.CpuUsage.UsageInKernelmode,
				UsageInUsermode:   s.CpuStats.CpuUsage.UsageInUsermode,
			},
			ThrottlingData: &pb.ThrottlingData{
				Periods:          s.CpuStats.ThrottlingData.Periods,
				ThrottledPeriods: s.CpuStats.ThrottlingData.ThrottledPeriods,
				ThrottledTime:    s.CpuStats.ThrottlingData.ThrottledTime,
			},
		},
		MemoryStats: &pb.MemoryStats{
			Cache:        s.MemoryStats.Cache,
			Usage:        memData(s.MemoryStats.Usage),
			SwapUsage:    memData(s.MemoryStats.SwapUsage),
			KernelUsage:  memData(s.MemoryStats.KernelUsage),
			UseHierarchy: s.MemoryStats.UseHierarchy,
			Stats:        s.MemoryStats.Stats,
		},
		PidsStats: &pb.PidsStats{Current: s.PidsStats.Current, Limit: s.PidsStats.Limit},
		BlkioStats: &pb.BlkioStats{
			IoServiceBytesRecursive: blkio(s.BlkioStats.IoServiceBytesRecursive),
			IoServicedRecursive:     blkio(s.BlkioStats.IoServicedRecursive),
			IoQueuedRecursive:       blkio(s.BlkioStats.IoQueuedRecursive),
			IoServiceTimeRecursive:  blkio(s.BlkioStats.IoServiceTimeRecursive),
			IoWaitTimeRecursive:     blkio(s.BlkioStats.IoWaitTimeRecursive),
			IoMergedRecursive:       blkio(s.BlkioStats.IoMergedRecursive),
			IoTimeRecursive:         blkio(s.BlkioStats.IoTimeRecursive),
			SectorsRecursive:        blkio(s.BlkioStats.SectorsRecursive),
		},
	}
	if len(s.HugetlbStats) > 0 {
		out.HugetlbStats = map[string]*pb.HugetlbStats{}
		for k, v := range s.HugetlbStats {
			out.HugetlbStats[k] = &pb.HugetlbStats{Usage: v.Usage, MaxUsage: v.MaxUsage, Failcnt: v.Failcnt}
		}
	}
	return out
}

func memData(d cgroups.MemoryData) *pb.MemoryData {
	return &pb.MemoryData{Usage: d.Usage, MaxUsage: d.MaxUsage, Failcnt: d.Failcnt, Limit: d.Limit}
}

func blkio(es []cgroups.BlkioStatEntry) []*pb.BlkioStatsEntry {
	out := make([]*pb.BlkioStatsEntry, 0, len(es))
	for _, e := range es {
		out = append(out, &pb.BlkioStatsEntry{Major: e.Major, Minor: e.Minor, Op: e.Op, Value: e.Value})
	}
	return out
}
