package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/cova-project/cova/protocols/grpc"
	"github.com/cova-project/cova/rootfs"
	"github.com/cova-project/cova/test/kbs"
	"github.com/opencontainers/runtime-spec/specs-go"
)

// toolFiles maps host programs and the shared libraries ldd lists for
// them to the same paths in a guest.
func toolFiles(t *testing.T, progs ...string) []rootfs.FileMapping {
	t.Helper()
	seen := map[string]bool{}
	var files []rootfs.FileMapping
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			files = append(files, rootfs.FileMapping{Src: p, Dst: p})
		}
	}
	for _, prog := range progs {
		path, err := exec.LookPath(prog)
		if err != nil {
			unavailable(t, "%s is not installed (apt-get install cryptsetup-bin dmsetup e2fsprogs)", prog)
		}
		if path, err = filepath.EvalSymlinks(path); err != nil {
			t.Fatal(err)
		}
		add(path)
		out, err := exec.Command("ldd", path).Output()
		if err != nil {
			t.Fatalf("ldd %s: %v", path, err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
				add(f[2])
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				add(f[0])
			}
		}
	}
	return files
}

// scriptGuest boots the device-mapper kernel with a busybox shell script
// as the first process (no agent) and the host's cryptsetup, dmsetup and
// mke2fs (with their libraries) in the initrd, so the reference tools can
// make and read volumes the agent opens. The script runs with /proc, /sys
// and /dev mounted, the device-mapper modules loaded and udev sync off
// (DM_DISABLE_UDEV=1: libdevmapper makes the nodes); the real tools come
// (only) on PATH; mke2fs, which is also an applet, is $MKE2FS. The
// script's output is the console.
// It returns when QEMU has exited.
func scriptGuest(ctx context.Context, t *testing.T, d *dmEnv, script string, disks ...Disk) string {
	t.Helper()
	km, err := rootfs.OpenKernelModules(d.kernel.Root, d.kernel.Release)
	if err != nil {
		t.Fatal(err)
	}
	mods, _, err := km.Resolve(append([]string{"virtio_pci", "virtio_blk"}, dmModules...))
	if err != nil {
		t.Fatal(err)
	}
	var insmod strings.Builder
	for _, m := range mods {
		fmt.Fprintf(&insmod, "insmod /lib/modules/%s/%s\n", km.Release, m.Path)
	}
	dir := t.TempDir()
	rc := filepath.Join(dir, "rc")
	// Debian's busybox shell runs its own applets before PATH: mke2fs must
	// be called by its path.
	mke2fs, err := exec.LookPath("mke2fs")
	if err != nil {
		unavailable(t, "mke2fs is not installed (apt-get install e2fsprogs)")
	}
	if mke2fs, err = filepath.EvalSymlinks(mke2fs); err != nil {
		t.Fatal(err)
	}
	body := "#!/bin/sh\n/bin/busybox --install -s /bin\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin DM_DISABLE_UDEV=1 MKE2FS=" + mke2fs + "\n" +
		"mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\nmkdir -p /run/cryptsetup /mnt\n" +
		insmod.String() + script + "\necho COVA-SCRIPT-END\npoweroff -f\n"
	if err := os.WriteFile(rc, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	tools := toolFiles(t, "cryptsetup", "dmsetup", "mke2fs")
	files := append(tools,
		rootfs.FileMapping{Src: d.busybox, Dst: "/bin/busybox"},
		rootfs.FileMapping{Src: d.busybox, Dst: "/bin/sh"},
		rootfs.FileMapping{Src: rc, Dst: "/etc/rc"},
		rootfs.FileMapping{Src: "/etc/mke2fs.conf", Dst: "/etc/mke2fs.conf"},
	)
	initrd := filepath.Join(dir, "initrd-script.img")
	f, err := os.Create(initrd)
	if err != nil {
		t.Fatal(err)
	}
	_, err = rootfs.Build(ctx, f, rootfs.Options{
		Agent: d.busybox, KernelDir: d.kernel.Root, KernelRelease: d.kernel.Release,
		Modules: append([]string{"virtio_pci", "virtio_blk"}, dmModules...), Files: files,
	})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("building the script initrd: %v", err)
	}
	v := bootConfig(t, Config{Kernel: d.kernel.Image, Initrd: initrd, Append: "rdinit=/etc/rc", Dir: vmDir(t), Disks: disks, Memory: "768M"})
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := v.Wait(wctx); err != nil {
		t.Logf("script guest: %v", err)
	}
	out := v.Console()
	if !strings.Contains(out, "COVA-SCRIPT-END") {
		t.Fatalf("the script guest did not finish:\n%s", tail(out, 80))
	}
	return out
}

const (
	luksPass      = "cova-luks2-passphrase-7f3c1d"
	luksIntMarker = "COVA-LUKS2-INTEGRITY-MARKER-b41e"
	luksMarker    = "COVA-LUKS2-PLAIN-MARKER-9d02"
	luksBack      = "COVA-WRITTEN-THROUGH-CDH-5a7c"
	luksIntSize   = 40 << 20 // 16 MiB header, then dm-integrity
	luksPlainSize = 24 << 20
	clientFSSize  = "16M" // busybox + cova-ctl
)

// cryptsetupScript formats /dev/vda as cryptsetup 2.6 does for
// guest-components' LUKS2 volumes with integrity (--integrity hmac-sha256,
// 4096-byte sectors, wiped so every block has a tag) and /dev/vdb as a plain
// LUKS2 volume with an argon2id keyslot, each with ext4 and a marker file.
const cryptsetupScript = `
[ "$(cat /sys/block/vda/size)" = 81920 ] && [ "$(cat /sys/block/vdb/size)" = 49152 ] || echo COVA-WRONG-DISKS
printf '%s' "$PASS" | cryptsetup luksFormat --batch-mode --type luks2 --cipher aes-xts-plain64 --sector-size 4096 --integrity hmac-sha256 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - /dev/vda &&
printf '%s' "$PASS" | cryptsetup open --key-file - /dev/vda a &&
dmsetup table a_dif && $MKE2FS -t ext4 -q /dev/mapper/a && mount /dev/mapper/a /mnt && echo "$MA" > /mnt/marker && umount /mnt && cryptsetup close a && echo COVA-A-READY
printf '%s' "$PASS" | cryptsetup luksFormat --batch-mode --type luks2 --pbkdf argon2id --pbkdf-memory 8192 --pbkdf-force-iterations 4 --pbkdf-parallel 1 --key-file - /dev/vdb &&
printf '%s' "$PASS" | cryptsetup open --key-file - /dev/vdb b &&
$MKE2FS -t ext4 -q /dev/mapper/b && mount /dev/mapper/b /mnt && echo "$MB" > /mnt/marker && umount /mnt && cryptsetup close b && echo COVA-B-READY
`

// readBackScript opens both volumes again with cryptsetup and prints what
// the agent's container wrote.
const readBackScript = `
for v in vda:a vdb:b; do
  printf '%s' "$PASS" | cryptsetup open --key-file - /dev/${v%%:*} ${v##*:} && mount -o ro /dev/mapper/${v##*:} /mnt &&
  echo "${v##*:}: $(cat /mnt/back)" && umount /mnt && cryptsetup close ${v##*:}
done
`

// clientRootfs is a busybox ext4 image with the static cova-ctl in /bin
// and the empty directories /cdh, /a and /b.
func clientRootfs(ctx context.Context, t *testing.T, e *env) string {
	t.Helper()
	ctl, err := filepath.Abs(filepath.Join("..", "..", "bin", "cova-ctl"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(ctl)
	if err != nil {
		unavailable(t, "bin/cova-ctl is not built (make build): %v", err)
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	makeBusybox(t, e.busybox, tree, nil)
	for _, mp := range []string{"cdh", "a", "b"} { // bind targets: the rootfs is read-only
		if err := os.Mkdir(filepath.Join(tree, mp), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "bin", "cova-ctl"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "client.ext4")
	if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-E", "root_owner=0:0", "-d", tree, img, clientFSSize).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	return img
}

// TestLUKS2SecureMount: volumes cryptsetup made are opened by the agent's
// CDH SecureMount, asked for by an in-guest client (cova-ctl secure-mount in
// a container that binds the CDH socket, which measured cdh.toml moved under
// /run/kata-containers), and what the agent writes reads back with
// cryptsetup.
//
//  1. A guest running cryptsetup formats two disks: LUKS2 with integrity
//     (hmac-sha256 over dm-integrity, as guest-components formats) and
//     plain LUKS2 (argon2id), each with ext4 and a marker.
//  2. The agent boots with the two disks; the client asks for: the plain
//     volume with dataIntegrity=true (refused: FailedPrecondition), a wrong
//     key (PermissionDenied), then both volumes (the integrity volume's key
//     from the dev KBS after attestation, the plain one's from a file). A second container binds
//     the mount points, reads the markers and writes a file to each.
//  3. cryptsetup opens both again and reads the agent's files: the
//     dm-integrity journal and tags the agent wrote are what cryptsetup
//     expects. The raw disks never hold the plaintext.
func TestLUKS2SecureMount(t *testing.T) {
	t.Parallel()
	d := needDM(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	dir := t.TempDir()
	mkDisk := func(name string, size int64) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, size); err != nil {
			t.Fatal(err)
		}
		return p
	}
	intImg, plainImg := mkDisk("luks-int.img", luksIntSize), mkDisk("luks-plain.img", luksPlainSize)
	env := "export PASS=" + luksPass + " MA=" + luksIntMarker + " MB=" + luksMarker + "\n"

	start := time.Now()
	out := scriptGuest(ctx, t, d, env+cryptsetupScript, Disk{Path: intImg, Slot: 3}, Disk{Path: plainImg, Slot: 4})
	for _, want := range []string{"COVA-A-READY", "COVA-B-READY", "integrity 254:0 32768 32 J"} {
		if !strings.Contains(out, want) {
			t.Fatalf("cryptsetup guest: no %q in\n%s", want, tail(out, 60))
		}
	}
	if strings.Contains(out, "COVA-WRONG-DISKS") {
		t.Fatal("the script guest saw the disks in another order")
	}
	t.Logf("cryptsetup formatted both volumes in %v", time.Since(start).Round(time.Millisecond))

	// 2. The agent, with the CDH socket where a container may bind it and
	// a KBS that holds the integrity volume's passphrase.
	k := kbs.StartTB(t, kbs.Options{PlainHTTP: true, Resources: map[string][]byte{"default/disk/luks-key": []byte(luksPass)}})
	kbsURL := "http://10.0.2.2:" + k.URL()[strings.LastIndexByte(k.URL(), ':')+1:]
	rootImg := clientRootfs(ctx, t, d.env)
	const cdhDir = "/run/kata-containers/cdh"
	doc := `version = "0.1.0"
algorithm = "sha256"

[data]
"aa.toml" = '''
[token_configs.kbs]
url = "` + kbsURL + `"
'''
"cdh.toml" = '''
socket = "unix://` + cdhDir + `/cdh.sock"
[kbc]
name = "cc_kbc"
url = "` + kbsURL + `"
'''
`
	rootDisk := Disk{Path: rootImg, ReadOnly: true, Slot: 3}
	v := bootConfig(t, Config{
		Kernel: d.kernel.Image, Initrd: d.initrd,
		Append: "agent.kernel_modules=" + strings.Join(d.modules, ",") + " agent.log=debug",
		Dir:    vmDir(t),
		Disks: []Disk{rootDisk, {Path: initdataDisk(t, []byte(doc), false), ReadOnly: true, Slot: 4},
			{Path: intImg, Slot: 5}, {Path: plainImg, Slot: 6}},
		Net: true,
	})
	a, tm := connect(ctx, t, v)
	t.Logf("boot: %v", tm)
	guestNetwork(ctx, t, a)
	const sid = "sandbox-luks2"
	if _, err := a.CreateSandbox(ctx, &pb.CreateSandboxRequest{SandboxId: sid, Hostname: "cova"}); err != nil {
		t.Fatalf("CreateSandbox: %v", err)
	}
	keys := filepath.Join(dir, "keys")
	if err := os.MkdirAll(keys, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, k := range map[string]string{"good": luksPass, "wrong": luksPass + "x"} {
		if err := os.WriteFile(filepath.Join(keys, name), []byte(k), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := a.CopyDir(ctx, keys, filepath.Join(sharedKataDir, "luks-keys")); err != nil {
		t.Fatal(err)
	}
	const (
		intMP   = "/run/kata-containers/sandbox/storage/luks-int"
		plainMP = "/run/kata-containers/sandbox/storage/luks-plain"
	)
	client := `dev() { for b in /sys/block/vd*; do [ "$(cat $b/size)" = "$1" ] && cat $b/dev; done; }
A=$(dev 81920); B=$(dev 49152); echo "disks $A $B"
sm() { cova-ctl secure-mount --cdh unix:///cdh/cdh.sock --option sourceType=encrypted --option encryptionType=luks2 --option targetType=fileSystem --option filesystemType=ext4 "$@"; }
K=file://` + sharedKataDir + `/luks-keys
sm --option deviceId=$B --option key=$K/good --option dataIntegrity=true ` + plainMP + `-x 2>&1; echo "plain-as-integrity=$?"
sm --option deviceId=$B --option key=$K/wrong ` + plainMP + `-y 2>&1; echo "wrong-key=$?"
sm --option deviceId=$A --option key=kbs:///default/disk/luks-key --option dataIntegrity=true --option mapperName=luks-int ` + intMP + `; echo "integrity=$?"
sm --option deviceId=$B --option key=$K/good --option mapperName=luks-plain ` + plainMP + `; echo "plain=$?"`
	root := filepath.Join("/run/kata-containers", sid, "rootfs")
	storages := []*pb.Storage{{Driver: "blk", Source: rootDisk.PCIPath(), Fstype: "ext4", Options: []string{"ro"}, MountPoint: root}}
	spec := containerSpec(root, "sh", "-c", client)
	spec.Mounts = append(spec.Mounts, specs.Mount{Destination: "/cdh", Type: "bind", Source: cdhDir, Options: []string{"rbind", "rw"}})
	t0 := time.Now()
	cout, cerr, status := runContainer(ctx, t, a, sid, spec, storages)
	t.Logf("client (%v):\n%s%s", time.Since(t0).Round(time.Millisecond), cout, cerr)
	for _, want := range []string{"plain-as-integrity=1", "FailedPrecondition", "has no integrity", "wrong-key=1", "PermissionDenied", "integrity=0", "plain=0", intMP + "\n"} {
		if !strings.Contains(cout, want) {
			t.Errorf("client output lacks %q", want)
		}
	}
	if status != 0 {
		t.Errorf("client exited %d", status)
	}
	if st := k.Stats(); st.Attested == 0 || st.Resource == 0 {
		t.Errorf("the KBS released no key: %+v", st)
	}

	reader := `echo "int: $(cat /a/marker)"; echo "plain: $(cat /b/marker)"
for b in /sys/block/dm-*; do echo "$(cat $b/dm/name) tag_size=$(cat $b/integrity/tag_size 2>/dev/null)"; done
echo ` + luksBack + `-a > /a/back && echo ` + luksBack + `-b > /b/back && busybox sync && echo written`
	// The client's rootfs storage went with it: the reader mounts the disk again.
	root = filepath.Join("/run/kata-containers", "reader", "rootfs")
	storages[0].MountPoint = root
	spec = containerSpec(root, "sh", "-c", reader)
	spec.Mounts = append(spec.Mounts,
		specs.Mount{Destination: "/a", Type: "bind", Source: intMP, Options: []string{"rbind", "rw"}},
		specs.Mount{Destination: "/b", Type: "bind", Source: plainMP, Options: []string{"rbind", "rw"}})
	rout, rerr, status := runContainer(ctx, t, a, "reader", spec, storages)
	t.Logf("reader:\n%s%s", rout, rerr)
	for _, want := range []string{"int: " + luksIntMarker, "plain: " + luksMarker, "luks-int_dif tag_size=32", "written"} {
		if !strings.Contains(rout, want) {
			t.Errorf("reader output lacks %q", want)
		}
	}
	if status != 0 {
		t.Errorf("reader exited %d", status)
	}
	if !consoleHas(v, "dm-integrity device active") {
		t.Error(`the console has no "dm-integrity device active" line`)
	}
	t.Logf("poweroff: QEMU exited %v after DestroySandbox", powerOff(ctx, t, a, v).Round(time.Millisecond))
	for _, img := range []string{intImg, plainImg} {
		raw, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{luksIntMarker, luksMarker, luksBack} {
			if bytes.Contains(raw, []byte(m)) {
				t.Errorf("%s holds the plaintext %q", filepath.Base(img), m)
			}
		}
	}

	// 3. cryptsetup reads what the agent wrote.
	out = scriptGuest(ctx, t, d, env+readBackScript, Disk{Path: intImg, Slot: 3}, Disk{Path: plainImg, Slot: 4})
	for _, want := range []string{"a: " + luksBack + "-a", "b: " + luksBack + "-b"} {
		if !strings.Contains(out, want) {
			t.Errorf("cryptsetup read-back: no %q in\n%s", want, tail(out, 40))
		}
	}
	t.Logf("whole test %v", time.Since(start).Round(time.Millisecond))
}
