package sysinit

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

const freshProcCgroups = `#subsys_name	hierarchy	num_cgroups	enabled
cpuset	0	1	1
cpu	0	1	1
cpuacct	0	1	1
blkio	0	1	1
memory	0	1	1
devices	0	1	1
freezer	0	1	1
net_cls	0	1	1
perf_event	0	1	1
net_prio	0	1	1
hugetlb	0	1	1
pids	0	1	1
rdma	0	1	0
`

func TestCgroupGroups(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    [][]string
		wantErr error
	}{
		{
			name: "fresh kernel co-mounts cpu,cpuacct and net_cls,net_prio, skips disabled",
			in:   freshProcCgroups,
			want: [][]string{{"blkio"}, {"cpu", "cpuacct"}, {"cpuset"}, {"devices"}, {"freezer"}, {"hugetlb"},
				{"memory"}, {"net_cls", "net_prio"}, {"perf_event"}, {"pids"}},
		},
		{
			name: "existing hierarchies are kept as they are",
			in: "#subsys_name\thierarchy\tnum_cgroups\tenabled\n" +
				"cpu\t1\t1\t1\ncpuacct\t2\t1\t1\ndevices\t5\t1\t1\nnet_cls\t7\t1\t1\nnet_prio\t7\t1\t1\nmemory\t0\t1\t1\n",
			want: [][]string{{"cpu"}, {"cpuacct"}, {"devices"}, {"memory"}, {"net_cls", "net_prio"}},
		},
		{
			name: "a lone member of a pair mounts alone",
			in:   "cpu\t0\t1\t1\ndevices\t0\t1\t1\n",
			want: [][]string{{"cpu"}, {"devices"}},
		},
		{
			name: "malformed lines are skipped",
			in:   "devices\t0\t1\t1\nshort\t0\nbad/name\t0\t1\t1\nneg\t-1\t1\t1\nnum\tx\t1\t1\n\n",
			want: [][]string{{"devices"}},
		},
		{
			name:    "no devices controller",
			in:      "cpu\t0\t1\t1\nmemory\t0\t1\t1\n",
			wantErr: errdefs.ErrFailedPrecondition,
		},
		{
			name:    "devices disabled",
			in:      "devices\t0\t1\t0\n",
			wantErr: errdefs.ErrFailedPrecondition,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cgroupGroups(parseProcCgroups([]byte(tc.in)))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("groups = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSetUseHierarchy(t *testing.T) {
	tests := []struct {
		name    string
		initial string // "" means no file
		want    string
	}{
		{"already on", "1\n", "1\n"},
		{"off is turned on", "0\n", "1"},
		{"no memory controller", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "memory.use_hierarchy")
			if tc.initial != "" {
				if err := os.WriteFile(p, []byte(tc.initial), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := setUseHierarchy(dir); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if tc.initial == "" {
				if !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("file created: %v", err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("content = %q (%v), want %q", got, err, tc.want)
			}
		})
	}
}

func TestEnableControllers(t *testing.T) {
	tests := []struct {
		name        string
		controllers string
		want        string
	}{
		{"all at once", "cpu io memory pids\n", "+cpu +io +memory +pids"},
		{"none available", "\n", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "cgroup.controllers"), []byte(tc.controllers), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			enableControllers(orDiscard(nil), dir)
			got, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
			if err != nil {
				t.Fatal(err)
			}
			if strings.TrimSpace(string(got)) != tc.want {
				t.Fatalf("subtree_control = %q, want %q", got, tc.want)
			}
		})
	}
}
