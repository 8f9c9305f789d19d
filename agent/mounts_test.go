package agent_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/cova-project/cova/agent"
	pb "github.com/cova-project/cova/protocols/grpc"
)

// TestMountConfinement: as PID 1 the agent confines OCI mounts whatever the
// policy says: bind sources under the Kata root (or a storage of the same
// request), other mounts only pseudo filesystems.
func TestMountConfinement(t *testing.T) {
	e := newEnvWith(t, func(o *agent.Options) { o.MountSourcePrefixes = []string{o.Root} })
	e.sandbox(t, "sb")
	withMount := func(m *pb.Mount) *pb.Spec {
		s := e.spec(t, "cat", "/etc/shared-file")
		s.Mounts = append(s.Mounts, m)
		return s
	}
	refused := []struct {
		name  string
		m     *pb.Mount
		field string
	}{
		{"bind of the guest root", &pb.Mount{Destination: "/host", Source: "/", Type: "bind", Options: []string{"rbind"}}, "bind source \"/\" is outside"},
		{"bind by option only", &pb.Mount{Destination: "/host", Source: "/run", Type: "none", Options: []string{"bind"}}, "OCI.Mounts[7].source"},
		{"dot-dot escape", &pb.Mount{Destination: "/x", Source: e.root + "/shared/../../../etc", Type: "bind"}, "absolute clean path"},
		{"relative source", &pb.Mount{Destination: "/x", Source: "shared", Type: "bind"}, "absolute clean path"},
		{"block device filesystem", &pb.Mount{Destination: "/data", Source: "/dev/vda", Type: "ext4"}, "OCI.Mounts[7].type"},
		{"overlay", &pb.Mount{Destination: "/data", Source: "overlay", Type: "overlay", Options: []string{"lowerdir=/"}}, "not a pseudo filesystem"},
		{"empty destination", &pb.Mount{Source: "proc", Type: "proc"}, "destination"},
	}
	for _, tc := range refused {
		t.Run("refused/"+tc.name, func(t *testing.T) {
			_, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: withMount(tc.m)})
			wantCode(t, err, codes.InvalidArgument, tc.field)
		})
	}

	// A file the host copied into the shared directory binds in.
	src := filepath.Join(e.root, "shared", "containers", "c-0123456789abcdef-file")
	if err := os.WriteFile(src, []byte("from the shared dir\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := withMount(&pb.Mount{Destination: "/etc/shared-file", Source: src, Type: "bind", Options: []string{"rbind", "ro"}})
	if _, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: spec}); err != nil {
		t.Fatalf("bind from the shared directory refused: %v", err)
	}
	if _, err := e.c.StartContainer(e.ctx, &pb.StartContainerRequest{ContainerId: "c"}); err != nil {
		t.Fatal(err)
	}
	if out := e.readAll(t, "c", "", true); out != "from the shared dir\n" {
		t.Fatalf("container read %q through the bind mount", out)
	}
}

// TestGuestPullSourceMatchesAnnotation: an image_guest_pull storage must
// pull the image the container's image-name annotation names (kata #11354).
func TestGuestPullSourceMatchesAnnotation(t *testing.T) {
	e := newEnv(t, nil)
	e.sandbox(t, "sb")
	spec := e.spec(t, "true")
	spec.Annotations = map[string]string{"io.kubernetes.cri.image-name": "registry.example/app@sha256:" + strings.Repeat("a", 64)}
	mp := e.root + "/c/rootfs"
	spec.Root.Path = mp
	_, err := e.c.CreateContainer(e.ctx, &pb.CreateContainerRequest{ContainerId: "c", OCI: spec, Storages: []*pb.Storage{{
		Driver: "image_guest_pull", Source: "registry.example/evil:latest", Fstype: "overlay", MountPoint: mp,
	}}})
	wantCode(t, err, codes.InvalidArgument, `storages[0].source: image "registry.example/evil:latest" differs from the container's image-name annotation`)
}
