package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/cova-project/cova/agent/ocispec"
	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/rootfs/verity"
)

// verityToken fills the file whose blocks the corrupted copy damages.
const verityToken = "COVA-VERIFIED-BLOCK-"

// TestDMVerity builds a busybox ext4 image on the host, appends its
// dm-verity hash tree with rootfs/verity and attaches it read-only, plus a
// copy with one byte of a file flipped. Both are handed to the agent as
// blk storages with Kata's X-kata.dmverity options pinning the root hash.
// A container whose rootfs is the intact image reads the file; on the
// corrupted copy the same read fails with EIO, and a wrong root hash fails
// CreateContainer (the file system's superblock already reads as EIO).
func TestDMVerity(t *testing.T) {
	t.Parallel()
	d := needDM(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()

	content := strings.Repeat(verityToken, 8192/len(verityToken)+1)[:8192]
	img := busyboxExt4(ctx, t, d.env, "8M", map[string]string{"etc/verified": content})
	p, err := verity.Format(img, img, verity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(raw, []byte(verityToken))
	if at < 0 || int64(at) >= p.HashOffset {
		t.Fatalf("the token is at %d, want it in the data area (< %d)", at, p.HashOffset)
	}
	raw[at+3] ^= 0x01
	bad := filepath.Join(t.TempDir(), "corrupt.img")
	if err := os.WriteFile(bad, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	good := Disk{Path: img, ReadOnly: true, Slot: 3}
	corrupt := Disk{Path: bad, ReadOnly: true, Slot: 4}

	start := time.Now()
	v := d.boot(t, good, corrupt)
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)
	const sid = "sandbox-verity"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	verityStorage := func(disk Disk, mp, rootHash string) *pb.Storage {
		return &pb.Storage{Driver: "blk", Source: disk.PCIPath(), Fstype: "ext4", MountPoint: mp, Options: []string{
			"ro", "X-kata.dmverity-enabled=true",
			"X-kata.dmverity.roothash=" + rootHash,
			fmt.Sprintf("X-kata.dmverity.hashoffset=%d", p.HashOffset),
			"X-kata.dmverity.salt=" + p.SaltHex(),
		}}
	}
	const check = `cat /etc/verified | head -c 40; echo; echo done`

	mp := filepath.Join("/run/kata-containers", sid, "rootfs")
	t0 := time.Now()
	out, errOut, status := runContainer(ctx, t, a, sid, containerSpec(mp, "sh", "-c", check), []*pb.Storage{verityStorage(good, mp, p.RootHashHex())})
	if want := content[:40] + "\ndone\n"; out != want || status != 0 {
		t.Errorf("verified rootfs: stdout %q stderr %q status %d; want %q status 0", out, errOut, status, want)
	}
	t.Logf("intact image: container in %v", time.Since(t0).Round(time.Millisecond))

	mp2 := filepath.Join("/run/kata-containers", "corrupt", "rootfs")
	t0 = time.Now()
	out, errOut, status = runContainer(ctx, t, a, "corrupt", containerSpec(mp2, "sh", "-c", `cat /etc/verified >/dev/null`), []*pb.Storage{verityStorage(corrupt, mp2, p.RootHashHex())})
	if status == 0 || !strings.Contains(errOut, "Input/output error") {
		t.Errorf("corrupted image: stdout %q stderr %q status %d; want an I/O error", out, errOut, status)
	}
	t.Logf("corrupted image: %q, exit %d, in %v", strings.TrimSpace(errOut), status, time.Since(t0).Round(time.Millisecond))

	// A root hash the image does not have: the mount itself fails.
	wrong := []byte(p.RootHashHex())
	wrong[0] ^= 0x01
	mp3 := filepath.Join("/run/kata-containers", "wrong", "rootfs")
	w, err := ocispec.FromSpec(containerSpec(mp3, "true"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: "wrong", ExecId: "wrong", OCI: w, Storages: []*pb.Storage{verityStorage(good, mp3, string(wrong))}})
	if err == nil || !strings.Contains(err.Error(), "input/output error") {
		t.Errorf("CreateContainer with a wrong root hash: %v; want the mount to fail with EIO", err)
	} else {
		t.Logf("wrong root hash: %v", err)
	}
	if !strings.Contains(v.Console(), "dm-verity volume mounted") {
		t.Error(`the console has no "dm-verity volume mounted" line`)
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox; whole test %v", powerOff(ctx, t, a, v).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// plainMarker is what the container writes to the encrypted volume; the
// raw disk must never hold it.
const plainMarker = "COVA-PLAINTEXT-MARKER-3b9e61"

// TestDMCryptEphemeral hands the agent a blank disk as a blk storage with
// Kata's encryption_key=ephemeral and create_filesystem, the way the
// runtime asks for an encrypted block emptyDir. The agent maps it through
// dm-crypt with a key only the guest holds, makes ext4 on it and mounts
// it; a container writes a file there and reads it back. After the
// container is gone (and the mapping with it) and the VM is off, the raw
// disk on the host holds neither the file's text nor an ext4 superblock,
// but does hold data.
func TestDMCryptEphemeral(t *testing.T) {
	t.Parallel()
	d := needDM(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()

	rootImg := busyboxExt4(ctx, t, d.env, "8M", nil)
	blank := filepath.Join(t.TempDir(), "scratch.img")
	if err := os.WriteFile(blank, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(blank, 32<<20); err != nil {
		t.Fatal(err)
	}
	rootDisk := Disk{Path: rootImg, ReadOnly: true, Slot: 3}
	scratch := Disk{Path: blank, Slot: 4}

	start := time.Now()
	v := d.boot(t, rootDisk, scratch)
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)
	const sid = "sandbox-crypt"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	root := filepath.Join("/run/kata-containers", sid, "rootfs")
	vol := "/run/kata-containers/sandbox/storage/scratch"
	storages := []*pb.Storage{
		{Driver: "blk", Source: rootDisk.PCIPath(), Fstype: "ext4", Options: []string{"ro"}, MountPoint: root},
		{Driver: "blk", Source: scratch.PCIPath(), Fstype: "ext4", Options: []string{"rw"}, MountPoint: vol,
			DriverOptions: []string{"encryption_key=ephemeral", "create_filesystem"}},
	}
	spec := containerSpec(root, "sh", "-c", `for i in 1 2 3 4 5 6 7 8; do echo `+plainMarker+`; done > /data/secret && sync && cat /data/secret | head -n 1 && ls /data`)
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}})
	t0 := time.Now()
	out, errOut, status := runContainer(ctx, t, a, sid, spec, storages)
	if want := plainMarker + "\nlost+found\nsecret\n"; out != want || status != 0 {
		t.Errorf("container on the encrypted volume: stdout %q stderr %q status %d; want %q status 0", out, errOut, status, want)
	}
	t.Logf("container with mkfs on dm-crypt: %v", time.Since(t0).Round(time.Millisecond))
	console := v.Console()
	for _, line := range []string{"ephemeral encrypted volume mounted", "secure volume removed"} {
		if !strings.Contains(console, line) {
			t.Errorf("the console has no %q line", line)
		}
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox", powerOff(ctx, t, a, v).Round(time.Millisecond))

	raw, err := os.ReadFile(blank)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte(plainMarker)) {
		t.Error("the raw disk holds the plaintext the container wrote")
	}
	if raw[1080] == 0x53 && raw[1081] == 0xef {
		t.Error("the raw disk holds an ext4 superblock: the file system is not encrypted")
	}
	if len(bytes.Trim(raw, "\x00")) == 0 {
		t.Error("the raw disk is still blank: nothing was written through dm-crypt")
	}
	t.Logf("whole test %v", time.Since(start).Round(time.Millisecond))
}
