package policy

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/protocols/types"
)

var update = flag.Bool("update", false, "rewrite testdata/*.json golden files")

// TestInputGolden pins the input document of every AgentService request
// type: testdata/<Message>.json holds two lines, the input of the empty
// request and of a request with every field set (fillMessage). Run with
// -update after a deliberate change.
func TestInputGolden(t *testing.T) {
	seen := map[string]bool{}
	for _, md := range agentRPCs(t) {
		name := string(md.Input().Name())
		if seen[name] {
			continue
		}
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			empty := newRequest(t, md)
			full := newRequest(t, md)
			fillMessage(full.ProtoReflect(), 0)
			var got bytes.Buffer
			for _, m := range []proto.Message{empty, full} {
				b, err := Input(m)
				if err != nil {
					t.Fatalf("Input: %v", err)
				}
				if !json.Valid(b) {
					t.Fatalf("Input is not valid JSON: %s", b)
				}
				got.Write(b)
				got.WriteByte('\n')
			}
			path := filepath.Join("testdata", name+".json")
			if *update {
				if err := os.WriteFile(path, got.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("golden file missing (run go test -update): %v", err)
			}
			if !bytes.Equal(got.Bytes(), want) {
				t.Errorf("input of %s changed\n got: %s\nwant: %s", name, got.Bytes(), want)
			}
		})
	}
}

// TestInputShape checks kata's serialisation rules one by one.
func TestInputShape(t *testing.T) {
	swappiness := uint32(60)
	cases := []struct {
		name string
		req  proto.Message
		want string
	}{
		{
			name: "unset message is null, repeated is [], proto names kept",
			req:  &pb.ExecProcessRequest{ContainerId: "c1"},
			want: `{"container_id":"c1","exec_id":"","string_user":null,"process":null,"stdin_port":0,"stdout_port":0,"stderr_port":0}`,
		},
		{
			name: "type becomes type_, camelCase proto names kept",
			req: &pb.UpdateInterfaceRequest{Interface: &types.Interface{
				Device: "eth0", Name: "eth0", Mtu: 1500, HwAddr: "02:00:00:00:00:01", Type: "veth", RawFlags: 0x80,
				IPAddresses: []*types.IPAddress{{Family: types.IPFamily_v6, Address: "fd00::2", Mask: "64"}},
			}},
			want: `{"interface":{"device":"eth0","name":"eth0","IPAddresses":[{"family":1,"address":"fd00::2","mask":"64"}],"mtu":1500,"hwAddr":"02:00:00:00:00:01","devicePath":"","type_":"veth","raw_flags":128}}`,
		},
		{
			name: "64-bit integers are numbers",
			req:  &pb.SetGuestDateTimeRequest{Sec: 1 << 53, Usec: -1},
			want: `{"Sec":9007199254740992,"Usec":-1}`,
		},
		{
			name: "bytes are arrays of numbers",
			req:  &pb.WriteStreamRequest{ContainerId: "c", Data: []byte{0, 'a', 255}},
			want: `{"container_id":"c","exec_id":"","data":[0,97,255]}`,
		},
		{
			name: "empty bytes are []",
			req:  &pb.ReseedRandomDevRequest{},
			want: `{"data":[]}`,
		},
		{
			name: "proto3 optional is null when unset, a value when set",
			req:  &pb.MemAgentMemcgConfig{SwappinessMax: &swappiness},
			want: `{"disabled":null,"swap":null,"swappiness_max":60,"period_secs":null,"period_psi_percent_limit":null,"eviction_psi_percent_limit":null,"eviction_run_aging_count_min":null}`,
		},
		{
			name: "nested null and []",
			req:  &pb.UpdateRoutesRequest{Routes: &pb.Routes{}},
			want: `{"routes":{"Routes":[]}}`,
		},
		{
			name: "maps are objects with sorted keys; strings escaped as serde does",
			req: &pb.CreateContainerRequest{OCI: &pb.Spec{Annotations: map[string]string{
				"b": "x\"y\\z\n\t\x01<&>", "a": "é",
			}}},
			want: `{"container_id":"","exec_id":"","string_user":null,"devices":[],"storages":[],"OCI":{"Version":"","Process":null,"Root":null,"Hostname":"","Mounts":[],"Hooks":null,"Annotations":{"a":"é","b":"x\"y\\z\n\t\u0001<&>"},"Linux":null,"Solaris":null,"Windows":null},"sandbox_pidns":false,"shared_mounts":[],"stdin_port":0,"stdout_port":0,"stderr_port":0}`,
		},
		{
			name: "CopyFile regular file: derived object without data",
			req:  &pb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/x-hostname", FileSize: 4, FileMode: unix.S_IFREG | 0o644, DirMode: unix.S_IFDIR | 0o755, Uid: 0, Gid: 0, Offset: 0, Data: []byte("web\n")},
			want: `{"path":"/run/kata-containers/shared/containers/x-hostname","file_type":"Regular","symlink_target":null,"file_size":4,"file_mode":33188,"dir_mode":16877,"uid":0,"gid":0,"offset":0}`,
		},
		{
			name: "CopyFile symlink: target from data",
			req:  &pb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/x/..data", FileMode: unix.S_IFLNK | 0o777, Data: []byte("..2026_11_27"), Uid: -1, Gid: 7},
			want: `{"path":"/run/kata-containers/shared/containers/x/..data","file_type":"Symlink","symlink_target":"..2026_11_27","file_size":0,"file_mode":41471,"dir_mode":0,"uid":-1,"gid":7,"offset":0}`,
		},
		{
			name: "CopyFile directory and unknown types",
			req:  &pb.CopyFileRequest{Path: "/d", FileMode: unix.S_IFSOCK},
			want: `{"path":"/d","file_type":"Unknown","symlink_target":null,"file_size":0,"file_mode":49152,"dir_mode":0,"uid":0,"gid":0,"offset":0}`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Input(tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("\n got: %s\nwant: %s", got, tc.want)
			}
		})
	}
}

// TestInputMountAndDeviceType checks the type_ rename where genpolicy's
// rules read it: OCI mounts and devices.
func TestInputMountAndDeviceType(t *testing.T) {
	req := sampleCreateContainer("c1")
	req.Devices = []*pb.Device{{Id: "0000:00:02.0", Type: "vfio-pci", VmPath: "/dev/vfio/1"}}
	b, err := Input(req)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Devices []map[string]any `json:"devices"`
		OCI     struct {
			Mounts []map[string]any `json:"Mounts"`
		} `json:"OCI"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Devices[0]["type_"] != "vfio-pci" || doc.Devices[0]["type"] != nil {
		t.Errorf("device type: %v", doc.Devices[0])
	}
	if doc.OCI.Mounts[0]["type_"] != "proc" || doc.OCI.Mounts[0]["type"] != nil {
		t.Errorf("mount type: %v", doc.OCI.Mounts[0])
	}
}

func TestInputNil(t *testing.T) {
	if _, err := Input(nil); err == nil {
		t.Error("Input(nil) succeeded")
	}
	if _, err := Input((*pb.CreateContainerRequest)(nil)); err == nil {
		t.Error("Input(typed nil) succeeded")
	}
}

// TestNoOtherRustKeywords guards fieldName: rust-protobuf escapes Rust
// keywords used as field names, and only "type" is handled. A new field
// named like another keyword must be looked at.
func TestNoOtherRustKeywords(t *testing.T) {
	keywords := strings.Fields(`as async await break const continue crate dyn else enum extern false fn for
		if impl in let loop match mod move mut pub ref return self static struct super trait true
		unsafe use where while abstract become box do final macro override priv typeof unsized virtual yield try`)
	seen := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		for i := range md.Fields().Len() {
			fd := md.Fields().Get(i)
			for _, k := range keywords {
				if string(fd.Name()) == k {
					t.Errorf("%s: field %q is a Rust keyword; check how kata's input names it", fd.FullName(), k)
				}
			}
			if fd.Message() != nil {
				walk(fd.Message())
			}
		}
	}
	for _, md := range agentRPCs(t) {
		walk(md.Input())
	}
	if len(seen) < 40 {
		t.Fatalf("walked only %d messages", len(seen))
	}
}

func TestEntryPoint(t *testing.T) {
	cases := map[string]proto.Message{
		"CreateContainerRequest": &pb.CreateContainerRequest{},
		"ReadStreamRequest":      &pb.ReadStreamRequest{},
		"WriteStreamRequest":     &pb.WriteStreamRequest{},
		"GuestDetailsRequest":    &pb.GuestDetailsRequest{},
		"MemAgentMemcgConfig":    &pb.MemAgentMemcgConfig{},
		"VolumeStatsRequest":     &pb.VolumeStatsRequest{},
	}
	for want, req := range cases {
		if got := EntryPoint(req); got != want {
			t.Errorf("EntryPoint(%T) = %q, want %q", req, got, want)
		}
	}
	m := agentMethods()
	for rpc, want := range map[string]string{"ReadStdout": "ReadStreamRequest", "ReadStderr": "ReadStreamRequest", "WriteStdin": "WriteStreamRequest", "GetGuestDetails": "GuestDetailsRequest", "MemAgentCompactSet": "MemAgentCompactConfig", "GetVolumeStats": "VolumeStatsRequest"} {
		if m[rpc] != want {
			t.Errorf("agentMethods()[%s] = %q, want %q", rpc, m[rpc], want)
		}
	}
}
