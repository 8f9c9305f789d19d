package mount

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/mount/dm"
)

type secureCall struct {
	op         string // "mount" or "unmount"
	volumeType string
	options    map[string]string
	mountPoint string
}

// fakeSecure records SecureMounter calls.
type fakeSecure struct {
	mu    sync.Mutex
	calls []secureCall
	err   error
}

func (f *fakeSecure) SecureMount(_ context.Context, volumeType string, options map[string]string, flags []string, mountPoint string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(flags) != 0 {
		return "", errors.New("flags are not expected")
	}
	f.calls = append(f.calls, secureCall{"mount", volumeType, maps.Clone(options), mountPoint})
	return mountPoint, f.err
}

func (f *fakeSecure) Unmount(_ context.Context, mountPoint string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, secureCall{op: "unmount", mountPoint: mountPoint})
	return nil
}

type dmCall struct {
	op, name string
	targets  []dm.Target
	readOnly bool
}

// fakeDM records device-mapper calls.
type fakeDM struct {
	calls []dmCall
	err   error
}

func (f *fakeDM) CreateDevice(_ context.Context, name, _ string, targets []dm.Target, ro bool) (string, error) {
	f.calls = append(f.calls, dmCall{"create", name, targets, ro})
	if f.err != nil {
		return "", f.err
	}
	return "/dev/mapper/" + name, nil
}

func (f *fakeDM) RemoveDevice(_ context.Context, name string) error {
	f.calls = append(f.calls, dmCall{op: "remove", name: name})
	return nil
}

// blockEnv is a test env with one virtio-blk disk vda (254:0) at PCI path 02/03.
func blockEnv(t *testing.T, mod func(*Options)) *testEnv {
	t.Helper()
	requireRoot(t, "mknod of block device nodes in a temp dir")
	e := newTestEnv(t, mod)
	f := e.fakeSys(t)
	f.bridge("pci0000:00/0000:00:02.0", "0000:01")
	f.virtioBlk("pci0000:00/0000:00:02.0/0000:01:03.0", "vda", 254, 0)
	f.node("vda", 254, 0)
	return e
}

func TestEphemeralEncryptedBlock(t *testing.T) {
	ctx := context.Background()
	sec := &fakeSecure{}
	e := blockEnv(t, func(o *Options) { o.SecureMounter = sec })
	mp := e.p("sandbox/storage/vol")
	s := Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: mp, Options: []string{"rw"},
		DriverOptions: []string{DriverOptionEphemeralEncryption, DriverOptionCreateFS}}
	if _, err := e.m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"deviceId": "254:0", "encryptionType": "luks2", "sourceType": "empty", "targetType": "fileSystem",
		"filesystemType": "ext4", "mkfsOpts": "-O ^has_journal -m 0 -i 163840 -I 128", "dataIntegrity": "false",
	}
	if len(sec.calls) != 1 || sec.calls[0].volumeType != "block-device" || sec.calls[0].mountPoint != mp || !maps.Equal(sec.calls[0].options, want) {
		t.Fatalf("SecureMount calls %+v, want one block-device at %s with %v", sec.calls, mp, want)
	}
	if n := len(e.fake.Calls()); n != 0 {
		t.Fatalf("the manager mounted itself:\n%s", joinCalls(e.fake.Calls()))
	}
	if st, err := os.Stat(mp); err != nil || !st.IsDir() {
		t.Fatalf("mount point not created: %v", err)
	}
	if err := e.m.Remove(ctx, mp); err != nil {
		t.Fatal(err)
	}
	if len(sec.calls) != 2 || sec.calls[1].op != "unmount" || sec.calls[1].mountPoint != mp {
		t.Fatalf("after Remove: %+v, want an Unmount of %s", sec.calls, mp)
	}
	if _, err := os.Lstat(mp); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mount point left behind: %v", err)
	}

	// Kata's older agents sent encryption_key=ephemeral alone: the volume
	// is made all the same.
	s.DriverOptions = []string{DriverOptionEphemeralEncryption}
	if _, err := e.m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	if len(sec.calls) != 3 {
		t.Fatalf("calls %+v", sec.calls)
	}

	// A failing SecureMount leaves nothing recorded and no directory.
	sec.err = errors.New("no dm-crypt")
	s.MountPoint = e.p("sandbox/storage/vol2")
	if _, err := e.m.Add(ctx, "c1", s); err == nil || !strings.Contains(err.Error(), "254:0") {
		t.Fatalf("Add = %v, want the SecureMount error naming the device", err)
	}
	if _, err := os.Lstat(s.MountPoint); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mount point left behind: %v", err)
	}
}

// TestEphemeralEncryptedSymlinkRefused: the SecureMounter takes a path
// name, so a mount point that resolves elsewhere by name is refused.
func TestEphemeralEncryptedSymlinkRefused(t *testing.T) {
	sec := &fakeSecure{}
	e := blockEnv(t, func(o *Options) { o.SecureMounter = sec })
	outside := t.TempDir()
	mustSymlink(t, outside, e.p("sandbox"))
	// Resolved inside the root, the link names an existing directory, so
	// the manager's own (root-scoped) mkdir succeeds.
	mustMkdir(t, filepath.Join(e.root, outside))
	s := Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: e.p("sandbox/vol"),
		DriverOptions: []string{DriverOptionEphemeralEncryption, DriverOptionCreateFS}}
	_, err := e.m.Add(context.Background(), "c1", s)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "mount_point:") {
		t.Fatalf("Add = %v, want a refused mount point", err)
	}
	if len(sec.calls) != 0 {
		t.Fatalf("SecureMount called: %+v", sec.calls)
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("created outside the root: %v", entries)
	}
}

func TestVerityBlock(t *testing.T) {
	ctx := context.Background()
	fdm := &fakeDM{}
	e := blockEnv(t, func(o *Options) { o.DeviceMapper = fdm })
	root := strings.Repeat("0123456789abcdef", 4)
	mp := e.p("sandbox/storage/verity")
	s := Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: mp, Options: []string{
		"nosuid", OptionVerityEnabled + "=true", OptionVerityPrefix + "roothash=" + root,
		OptionVerityPrefix + "hashoffset=1048576", OptionVerityPrefix + "salt=00ff",
		OptionVerityPrefix + "blocksize=4096", OptionVerityPrefix + "hashsize=4096",
	}}
	if _, err := e.m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	// 256 data blocks; the superblock at 1 MiB, the tree from block 257.
	wantParams := "1 254:0 254:0 4096 4096 256 257 sha256 " + root + " 00ff"
	if len(fdm.calls) != 1 || !fdm.calls[0].readOnly || len(fdm.calls[0].targets) != 1 ||
		fdm.calls[0].targets[0].Params != wantParams || fdm.calls[0].targets[0].Length != 2048 || fdm.calls[0].targets[0].Type != "verity" {
		t.Fatalf("dm calls %+v, want one read-only verity target %q of 2048 sectors", fdm.calls, wantParams)
	}
	name := fdm.calls[0].name
	// Another user of the mount point must ask for the same root hash.
	other := s
	other.Options = append([]string(nil), s.Options...)
	other.Options[2] = OptionVerityPrefix + "roothash=" + strings.Repeat("f", 64)
	if _, err := e.m.Add(ctx, "c2", other); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("Add with another root hash on a shared mount point = %v, want already exists", err)
	}
	if _, err := e.m.Add(ctx, "c2", s); err != nil {
		t.Fatal(err)
	}
	if err := e.m.Remove(ctx, mp); err != nil {
		t.Fatal(err)
	}
	if len(fdm.calls) != 1 {
		t.Fatalf("a shared mount made dm calls: %+v", fdm.calls)
	}
	want := call{op: "mount", source: "/dev/mapper/" + name, target: mp, fstype: "ext4", flags: unix.MS_RDONLY | unix.MS_NOSUID}
	if calls := e.fake.Calls(); len(calls) != 1 || calls[0] != want {
		t.Fatalf("mounts:\n%swant %v (the X-kata options never reach mount(2))", joinCalls(calls), want)
	}
	if err := e.m.Remove(ctx, mp); err != nil {
		t.Fatal(err)
	}
	if len(fdm.calls) != 2 || fdm.calls[1].op != "remove" || fdm.calls[1].name != name || e.fake.count("unmount") != 1 {
		t.Fatalf("after Remove: dm %+v, mounts:\n%s", fdm.calls, joinCalls(e.fake.Calls()))
	}

	// Without a superblock the tree starts at the offset; no salt.
	s.MountPoint = e.p("sandbox/storage/verity2")
	s.Options = []string{OptionVerityEnabled + "=true", OptionVerityPrefix + "roothash=" + root,
		OptionVerityPrefix + "hashoffset=8192", OptionVerityPrefix + "no-superblock=true"}
	if _, err := e.m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	if got := fdm.calls[2].targets[0].Params; got != "1 254:0 254:0 4096 4096 2 2 sha256 "+root+" -" {
		t.Fatalf("params %q", got)
	}
	if fdm.calls[2].name == name {
		t.Fatal("two mount points share a dm name")
	}

	// A mount failure removes the verity device again.
	e.fake.mountErr = unix.EINVAL
	s.MountPoint = e.p("sandbox/storage/verity3")
	if _, err := e.m.Add(ctx, "c1", s); err == nil {
		t.Fatal("Add succeeded with a failing mount")
	}
	if last := fdm.calls[len(fdm.calls)-1]; last.op != "remove" {
		t.Fatalf("verity device not removed after the failed mount: %+v", fdm.calls)
	}
}

func TestParseVerityOptions(t *testing.T) {
	root := "roothash=" + strings.Repeat("ab", 32)
	on := OptionVerityEnabled + "=true"
	tests := []struct {
		name  string
		opts  []string
		class error // nil: accepted
		rest  []string
		off   bool // accepted without verity
	}{
		{"plain", []string{"ro", "nosuid"}, nil, []string{"ro", "nosuid"}, true},
		{"disabled", []string{OptionVerityEnabled + "=false", "ro"}, nil, []string{"ro"}, true},
		{"full", []string{"ro", on, OptionVerityPrefix + root, OptionVerityPrefix + "hashoffset=4096"}, nil, []string{"ro"}, false},
		{"params without enabled", []string{OptionVerityPrefix + root}, errdefs.ErrInvalidArgument, nil, false},
		{"enabled odd value", []string{OptionVerityEnabled + "=yes"}, errdefs.ErrInvalidArgument, nil, false},
		{"short root hash", []string{on, OptionVerityPrefix + "roothash=abcd", OptionVerityPrefix + "hashoffset=4096"}, errdefs.ErrInvalidArgument, nil, false},
		{"no offset", []string{on, OptionVerityPrefix + root}, errdefs.ErrInvalidArgument, nil, false},
		{"unaligned offset", []string{on, OptionVerityPrefix + root, OptionVerityPrefix + "hashoffset=4097"}, errdefs.ErrInvalidArgument, nil, false},
		{"negative offset", []string{on, OptionVerityPrefix + root, OptionVerityPrefix + "hashoffset=-4096"}, errdefs.ErrInvalidArgument, nil, false},
		{"bad salt", []string{on, OptionVerityPrefix + root, OptionVerityPrefix + "hashoffset=4096", OptionVerityPrefix + "salt=xyz"}, errdefs.ErrInvalidArgument, nil, false},
		{"twice", []string{on, OptionVerityPrefix + root, OptionVerityPrefix + root, OptionVerityPrefix + "hashoffset=4096"}, errdefs.ErrInvalidArgument, nil, false},
		{"512-byte blocks", []string{on, OptionVerityPrefix + root, OptionVerityPrefix + "hashoffset=4096", OptionVerityPrefix + "blocksize=512"}, errdefs.ErrNotImplemented, nil, false},
		{"sha1", []string{on, OptionVerityPrefix + root, OptionVerityPrefix + "hashoffset=4096", OptionVerityPrefix + "hashtype=sha1"}, errdefs.ErrNotImplemented, nil, false},
		{"unknown parameter", []string{on, OptionVerityPrefix + root, OptionVerityPrefix + "hashoffset=4096", OptionVerityPrefix + "fec=1"}, errdefs.ErrNotImplemented, nil, false},
		{"other X-kata option", []string{"X-kata.multi-layer=true"}, errdefs.ErrNotImplemented, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, rest, err := parseVerityOptions(tc.opts)
			if tc.class != nil {
				if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), "options:") {
					t.Fatalf("err = %v, want %v naming options", err, tc.class)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (v == nil) != tc.off || strings.Join(rest, ",") != strings.Join(tc.rest, ",") {
				t.Fatalf("verity %+v rest %q", v, rest)
			}
			if v != nil && (v.params.DataBlocks != 1 || !v.params.Superblock || v.params.HashStartBlock() != 2) {
				t.Fatalf("params %+v", v.params)
			}
		})
	}
}

func TestCreateFilesystem(t *testing.T) {
	ctx := context.Background()
	var ran [][]string
	var runErr error
	e := blockEnv(t, func(o *Options) {
		o.Run = func(_ context.Context, name string, args ...string) ([]byte, error) {
			ran = append(ran, append([]string{name}, args...))
			return []byte("mke2fs says no"), runErr
		}
	})
	dev := filepath.Join(e.dev, "vda")
	s := Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: e.p("sandbox/storage/plain"), DriverOptions: []string{DriverOptionCreateFS}}
	if _, err := e.m.Add(ctx, "c1", s); err != nil {
		t.Fatal(err)
	}
	want := "mkfs.ext4 -F -O ^has_journal -m 0 -i 163840 -I 128 " + dev
	if len(ran) != 1 || strings.Join(ran[0], " ") != want {
		t.Fatalf("ran %q, want %q", ran, want)
	}
	if calls := e.fake.Calls(); len(calls) != 1 || calls[0].source != dev || calls[0].fstype != "ext4" {
		t.Fatalf("mounts:\n%s", joinCalls(calls))
	}
	runErr = errors.New("exit status 1")
	s.MountPoint = e.p("sandbox/storage/plain2")
	if _, err := e.m.Add(ctx, "c1", s); err == nil || !strings.Contains(err.Error(), "mke2fs says no") {
		t.Fatalf("Add = %v, want the mkfs output", err)
	}
	if n := e.fake.count("mount"); n != 1 {
		t.Fatalf("mounted after a failed mkfs: %d mounts", n)
	}
}

// TestSecureStorageIntegrity: agent.secure_storage_integrity reaches the
// SecureMount options of ephemeral volumes; a nil mounter stays nil.
func TestSecureStorageIntegrity(t *testing.T) {
	if WithSecureStorageIntegrity(nil, true) != nil {
		t.Fatal("a nil SecureMounter became non-nil")
	}
	for _, on := range []bool{true, false} {
		sec := &fakeSecure{}
		e := blockEnv(t, func(o *Options) { o.SecureMounter = WithSecureStorageIntegrity(sec, on) })
		s := Storage{Driver: DriverBlk, Source: "02/03", Fstype: "ext4", MountPoint: e.p("sandbox/storage/vol"), Options: []string{"rw"},
			DriverOptions: []string{DriverOptionEphemeralEncryption}}
		if _, err := e.m.Add(context.Background(), "c1", s); err != nil {
			t.Fatal(err)
		}
		want := "false"
		if on {
			want = "true"
		}
		if len(sec.calls) != 1 || sec.calls[0].options["dataIntegrity"] != want {
			t.Fatalf("integrity %v: SecureMount calls %+v, want dataIntegrity=%s", on, sec.calls, want)
		}
	}
}
