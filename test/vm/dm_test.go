package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

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
	if wrong[0] == '0' { // another hex digit
		wrong[0] = '1'
	} else {
		wrong[0] = '0'
	}
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
	if !consoleHas(v, "dm-verity volume mounted") {
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
	// Plain dm-crypt: integrity off explicitly (Cova's default is on);
	// TestDMCryptIntegrity covers it on.
	v := d.bootWith(t, "agent.secure_storage_integrity=false", rootDisk, scratch)
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
	for _, line := range []string{"ephemeral encrypted volume mounted", "secure volume removed"} {
		if !consoleHas(v, line) {
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

// TestDMCryptIntegrity boots with agent.secure_storage_integrity=true and
// hands the agent a blank disk as a blk storage with
// encryption_key=ephemeral: the agent builds a dm-integrity device under an
// authenticated dm-crypt device (HMAC-SHA256 per 4096-byte block). A
// container writes a file and reads it back with O_DIRECT; sysfs shows the
// integrity device with its 48-byte tags. The host then flips one bit of
// the file's ciphertext in the disk image while the VM runs (QEMU reads the
// image file again; O_DIRECT keeps the guest's page cache out of the way),
// and the same read, from a process executed in the container, fails
// (EILSEQ: the kernel logs "INTEGRITY AEAD ERROR") instead of returning
// altered data.
func TestDMCryptIntegrity(t *testing.T) {
	t.Parallel()
	d := needDM(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	defer cancel()

	rootImg := busyboxExt4(ctx, t, d.env, "8M", nil)
	blank := filepath.Join(t.TempDir(), "scratch.img")
	if err := os.WriteFile(blank, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(blank, 16<<20); err != nil {
		t.Fatal(err)
	}
	rootDisk := Disk{Path: rootImg, ReadOnly: true, Slot: 3}
	scratch := Disk{Path: blank, Slot: 4}

	start := time.Now()
	v := d.bootWith(t, "agent.secure_storage_integrity=true", rootDisk, scratch)
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)
	const sid = "sandbox-integrity"
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
	// 1 MiB of file data (256 blocks, one extent), read back past the page
	// cache; then the dm devices as sysfs names them, with their integrity
	// tag sizes.
	const read = `dd if=/data/blob of=/dev/null bs=65536 iflag=direct`
	spec := containerSpec(root, "sh", "-c", `dd if=/dev/zero of=/data/blob bs=65536 count=16 2>/dev/null && sync && `+read+` 2>/dev/null && echo read-ok; `+
		`for b in /sys/block/dm-*; do echo "$(cat $b/dm/name) tag_size=$(cat $b/integrity/tag_size)"; done; echo written; exec sleep 600`)
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: vol, Options: []string{"rbind", "rw"}})
	w, err := ocispec.FromSpec(spec)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := a.CreateContainer(ctx, &pb.CreateContainerRequest{ContainerId: sid, ExecId: sid, OCI: w, Storages: storages}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	t.Logf("CreateContainer with dm-integrity, tag wipe and mkfs: %v", time.Since(t0).Round(time.Millisecond))
	if !consoleHas(v, `"integrity":true`) {
		t.Fatal("the ephemeral volume was set up without integrity: does cmd/cova-agent give the storage manager mount.WithSecureStorageIntegrity(secure, cfg.SecureStorageIntegrity)?")
	}
	before, err := os.ReadFile(blank)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.StartContainer(ctx, &pb.StartContainerRequest{ContainerId: sid}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	var out []byte
	for !bytes.Contains(out, []byte("written\n")) {
		r, err := a.ReadStdout(ctx, &pb.ReadStreamRequest{ContainerId: sid, ExecId: sid, Len: 32 << 10})
		if err != nil || len(r.GetData()) == 0 {
			t.Fatalf("container output %q ended: %v", out, err)
		}
		out = append(out, r.GetData()...)
	}
	t.Logf("container: %q", out)
	if !bytes.Contains(out, []byte("read-ok\n")) {
		t.Errorf("the container could not read back what it wrote: %q", out)
	}
	var difTags, crypt bool
	for _, line := range strings.Split(string(out), "\n") {
		name, tags, _ := strings.Cut(line, " ")
		difTags = difTags || strings.HasPrefix(name, "cova-sm-") && strings.HasSuffix(name, "_dif") && tags == "tag_size=48"
		crypt = crypt || strings.HasPrefix(name, "cova-sm-") && !strings.HasSuffix(name, "_dif")
	}
	if !difTags || !crypt {
		t.Errorf("sysfs does not show a cova-sm-*_dif device with 48-byte tags under a cova-sm-* device: %q", out)
	}

	// The blocks the container changed; the longest run of them is the
	// file's data. Flip one byte in its middle.
	after, err := os.ReadFile(blank)
	if err != nil {
		t.Fatal(err)
	}
	const bs = 4096
	bestStart, bestLen, runStart := 0, 0, -1
	for b := 0; b <= len(after)/bs; b++ {
		changed := b < len(after)/bs && !bytes.Equal(before[b*bs:(b+1)*bs], after[b*bs:(b+1)*bs])
		switch {
		case changed && runStart < 0:
			runStart = b
		case !changed && runStart >= 0:
			if b-runStart > bestLen {
				bestStart, bestLen = runStart, b-runStart
			}
			runStart = -1
		}
	}
	if bestLen < 64 {
		t.Fatalf("the longest run of changed blocks is %d blocks; want the file's 256", bestLen)
	}
	at := int64((bestStart+bestLen/2)*bs + 100)
	f, err := os.OpenFile(blank, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{after[at] ^ 0x40}, at); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped a bit at byte %d (changed run: blocks %d..%d)", at, bestStart, bestStart+bestLen-1)

	proc := proto.Clone(w.Process).(*pb.Process)
	proc.Args = []string{"sh", "-c", read}
	if _, err := a.ExecProcess(ctx, &pb.ExecProcessRequest{ContainerId: sid, ExecId: "reread", Process: proc}); err != nil {
		t.Fatalf("ExecProcess: %v", err)
	}
	var outs [2][]byte
	var wg sync.WaitGroup
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i] = a.ReadAll(ctx, sid, "reread", i == 1)
		}()
	}
	r, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: sid, ExecId: "reread"})
	if err != nil {
		t.Fatalf("WaitProcess: %v", err)
	}
	wg.Wait()
	// dm-crypt fails an AEAD check with BLK_STS_PROTECTION, which reaches
	// the reader as EILSEQ ("Invalid or incomplete multibyte or wide
	// character"); older kernels said EIO.
	errOut := string(outs[1])
	if r.GetStatus() == 0 || !strings.Contains(errOut, "Invalid or incomplete multibyte") && !strings.Contains(errOut, "Input/output error") {
		t.Errorf("reading the tampered file: stdout %q stderr %q status %d; want EILSEQ or EIO", outs[0], errOut, r.GetStatus())
	} else {
		t.Logf("tampered read: %q, exit %d", strings.TrimSpace(errOut), r.GetStatus())
	}

	if _, err := a.SignalProcess(ctx, &pb.SignalProcessRequest{ContainerId: sid, ExecId: sid, Signal: 9}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.WaitProcess(ctx, &pb.WaitProcessRequest{ContainerId: sid, ExecId: sid}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.RemoveContainer(ctx, &pb.RemoveContainerRequest{ContainerId: sid, Timeout: 10}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	for _, line := range []string{"dm-integrity device active", "integrity tags initialised", "secure volume removed", "INTEGRITY AEAD ERROR"} {
		if !consoleHas(v, line) {
			t.Errorf("the console has no %q line", line)
		}
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox; whole test %v", powerOff(ctx, t, a, v).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
