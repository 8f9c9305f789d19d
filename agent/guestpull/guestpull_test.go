package guestpull

import (
	"context"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/mount"
)

func TestSetupRefusesBadStorages(t *testing.T) {
	p, err := imagepull.New(imagepull.Config{WorkDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	d := New(p, nil, "", nil)
	mp := t.TempDir() + "/rootfs"
	cases := []struct {
		name  string
		s     mount.Storage
		check func(error) bool
	}{
		{"fstype", mount.Storage{Source: "busybox", Fstype: "ext4", MountPoint: mp}, errdefs.IsInvalidArgument},
		{"bad reference", mount.Storage{Source: "library/Busy box:@@", Fstype: "overlay", MountPoint: mp}, errdefs.IsInvalidArgument},
		{"metadata not json", mount.Storage{Source: "busybox", DriverOptions: []string{"image_guest_pull={"}, MountPoint: mp}, errdefs.IsInvalidArgument},
		{"pause container", mount.Storage{Source: "pause", DriverOptions: []string{`image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"sandbox"}}`}, MountPoint: mp}, errdefs.IsNotImplemented},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := d.Setup(context.Background(), "c1", tc.s); !tc.check(err) {
				t.Fatalf("Setup = %v", err)
			}
		})
	}
}

func TestContainerType(t *testing.T) {
	got, err := containerType([]string{"other=1", `image_guest_pull={"metadata":{"io.kubernetes.cri.container-type":"container","x":"y"}}`})
	if err != nil || got != "container" {
		t.Fatalf("containerType = %q, %v", got, err)
	}
	if got, err := containerType(nil); err != nil || got != "" {
		t.Fatalf("no options: %q %v", got, err)
	}
}
