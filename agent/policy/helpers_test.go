package policy

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/protocols/types"
)

// secretMarker is an env value that must never reach a log or an error.
const secretMarker = "s3cr3t-marker-value-7f1c"

// syncBuffer is a log sink safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// debugLogger logs everything into a buffer.
func debugLogger() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func mustEngine(t testing.TB, policy string, opts Options) *Engine {
	t.Helper()
	e, err := New(policy, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return e
}

// agentRPCs lists AgentService's methods in declaration order.
func agentRPCs(t testing.TB) []protoreflect.MethodDescriptor {
	t.Helper()
	sd := pb.File_grpc_agent_proto.Services().ByName("AgentService")
	if sd == nil {
		t.Fatal("AgentService not in the descriptor")
	}
	var out []protoreflect.MethodDescriptor
	for i := range sd.Methods().Len() {
		out = append(out, sd.Methods().Get(i))
	}
	return out
}

// newRequest returns an empty request of the method's input type.
func newRequest(t testing.TB, md protoreflect.MethodDescriptor) proto.Message {
	t.Helper()
	mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
	if err != nil {
		t.Fatalf("%s: %v", md.Input().FullName(), err)
	}
	return mt.New().Interface()
}

// fillMessage sets every field of m to a fixed non-zero value: strings
// name the field, numbers are 7 (64-bit ones 1<<40, beyond float32 and int32),
// bytes are {1,2,3}, enums 1, repeated fields and maps get one element.
func fillMessage(m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			mp.Set(protoreflect.ValueOfString("key").MapKey(), fillValue(fd.MapValue(), mp.NewValue, depth))
		case fd.IsList():
			l := m.Mutable(fd).List()
			l.Append(fillValue(fd, l.NewElement, depth))
		case fd.Message() != nil:
			if depth < 6 {
				m.Set(fd, fillValue(fd, func() protoreflect.Value { return m.NewField(fd) }, depth))
			}
		default:
			m.Set(fd, fillValue(fd, nil, depth))
		}
	}
}

func fillValue(fd protoreflect.FieldDescriptor, newv func() protoreflect.Value, depth int) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(1)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(7)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(7)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(1 << 40)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(1 << 40)
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(1.5)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(string(fd.Name()))
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{1, 2, 3})
	case protoreflect.MessageKind:
		v := newv()
		fillMessage(v.Message(), depth+1)
		return v
	}
	panic("unhandled kind " + fd.Kind().String())
}

const (
	sandboxName = "web-pod"
	sandboxNS   = "default"
	nginxImage  = "docker.io/library/nginx@sha256:0f04e4f646a3f14bf31d8bc8d885b6c951fdcf42589d06845f64d18aec6a3c4d"
)

// sampleCreateContainer is a realistic CreateContainerRequest for an nginx
// container of pod web-pod, as the Kata shim sends it with guest pull.
func sampleCreateContainer(id string) *pb.CreateContainerRequest {
	root := "/run/kata-containers/" + id + "/rootfs"
	return &pb.CreateContainerRequest{
		ContainerId: id,
		ExecId:      id,
		Storages: []*pb.Storage{{
			Driver:     "image_guest_pull",
			Source:     nginxImage,
			Fstype:     "overlay",
			MountPoint: root,
		}},
		OCI: &pb.Spec{
			Version: "1.1.0",
			Process: &pb.Process{
				User: &pb.User{UID: 0, GID: 0},
				Args: []string{"nginx", "-g", "daemon off;"},
				Env: []string{
					"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
					"HOSTNAME=web-pod",
					"NGINX_VERSION=1.27.0",
					"API_TOKEN=" + secretMarker,
				},
				Cwd: "/",
				Capabilities: &pb.LinuxCapabilities{
					Bounding:  []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"},
					Effective: []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"},
					Permitted: []string{"CAP_CHOWN", "CAP_NET_BIND_SERVICE", "CAP_SETUID", "CAP_SETGID"},
				},
				Rlimits:     []*pb.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1048576, Soft: 1048576}},
				OOMScoreAdj: 1000,
			},
			Root:     &pb.Root{Path: root, Readonly: false},
			Hostname: "web-pod",
			Mounts: []*pb.Mount{
				{Destination: "/proc", Source: "proc", Type: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
				{Destination: "/dev", Source: "tmpfs", Type: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
				{Destination: "/etc/resolv.conf", Source: "/run/kata-containers/shared/containers/" + id + "-0123456789abcdef-resolv.conf", Type: "bind", Options: []string{"rbind", "rprivate", "ro"}},
			},
			Annotations: map[string]string{
				"io.kubernetes.cri.container-type":    "container",
				"io.kubernetes.cri.container-name":    "web",
				"io.kubernetes.cri.sandbox-name":      sandboxName,
				"io.kubernetes.cri.sandbox-namespace": sandboxNS,
				"io.kubernetes.cri.image-name":        nginxImage,
			},
			Linux: &pb.Linux{
				CgroupsPath: "kubepods-besteffort-pod1234.slice:cri-containerd:" + id,
				Namespaces: []*pb.LinuxNamespace{
					{Type: "ipc"}, {Type: "uts"}, {Type: "mount"},
				},
				MaskedPaths:   []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"},
				ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
				Resources: &pb.LinuxResources{
					CPU:    &pb.LinuxCPU{Shares: 2, Period: 100000},
					Memory: &pb.LinuxMemory{Limit: 0},
				},
			},
		},
	}
}

// route is a shorthand for tests.
func route(dest, gw, dev, src string) *types.Route {
	return &types.Route{Dest: dest, Gateway: gw, Device: dev, Source: src}
}
