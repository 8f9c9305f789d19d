package securemount

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/cdh/securemount/luks2"
	"github.com/cova-project/cova/mount/dm"
)

// marker is key material that must never show up in logs or errors.
const marker = "MARKER-KEY-5ec7e7"

type createCall struct {
	name, uuid string
	targets    []dm.Target
	ro         bool
}

type fakeMapper struct {
	creates   []createCall
	removes   []string
	createErr error
	devDir    string
	// failCreate fails the create of that name only.
	failCreate string
	// status is the status line of any device (an integrity target's by
	// default); statusErr fails Status.
	status    string
	statusErr error
	statuses  []string
	events    []string // create:<name>, status:<name>, remove:<name>
	// removeErrs are returned by the next removals, in order.
	removeErrs []error
}

func (m *fakeMapper) CreateDevice(_ context.Context, name, uuid string, targets []dm.Target, ro bool) (string, error) {
	m.creates = append(m.creates, createCall{name, uuid, targets, ro})
	m.events = append(m.events, "create:"+name)
	if m.createErr != nil {
		return "", m.createErr
	}
	if m.failCreate == name {
		return "", fmt.Errorf("device-mapper table load %q: %w", name, unix.EINVAL)
	}
	return filepath.Join(m.devDir, "mapper", name), nil
}

func (m *fakeMapper) RemoveDevice(_ context.Context, name string) error {
	m.removes = append(m.removes, name)
	m.events = append(m.events, "remove:"+name)
	if len(m.removeErrs) > 0 {
		err := m.removeErrs[0]
		m.removeErrs = m.removeErrs[1:]
		return err
	}
	return nil
}

func (m *fakeMapper) Status(_ context.Context, name string) (dm.DeviceInfo, []dm.TargetStatus, error) {
	m.statuses = append(m.statuses, name)
	m.events = append(m.events, "status:"+name)
	if m.statusErr != nil {
		return dm.DeviceInfo{}, nil, m.statusErr
	}
	st := m.status
	if st == "" {
		st = "0 2000003 -"
	}
	return dm.DeviceInfo{Name: name}, []dm.TargetStatus{{Start: 0, Length: 8, Type: "integrity", Params: st}}, nil
}

// plainMapper has no Status.
type plainMapper struct{ m fakeMapper }

func (p *plainMapper) CreateDevice(ctx context.Context, name, uuid string, targets []dm.Target, ro bool) (string, error) {
	return p.m.CreateDevice(ctx, name, uuid, targets, ro)
}

func (p *plainMapper) RemoveDevice(ctx context.Context, name string) error {
	return p.m.RemoveDevice(ctx, name)
}

type zeroCall struct {
	path           string
	offset, length int64
}

type fakeKeys struct {
	unsealed, fetched []string
	key               []byte
	err               error
}

func (k *fakeKeys) Unseal(_ context.Context, s string) ([]byte, error) {
	k.unsealed = append(k.unsealed, s)
	return append([]byte(nil), k.key...), k.err
}

func (k *fakeKeys) GetResource(_ context.Context, uri string) ([]byte, error) {
	k.fetched = append(k.fetched, uri)
	return append([]byte(nil), k.key...), k.err
}

type mountCall struct {
	source, target, fstype string
	flags                  uintptr
}

// counter is a deterministic Rand: bytes 0, 1, 2, …
type counter struct{ n byte }

func (c *counter) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = c.n
		c.n++
	}
	return len(p), nil
}

type env struct {
	t        *testing.T
	svc      *Service
	mapper   *fakeMapper
	keys     *fakeKeys
	runs     [][]string
	runErr   error
	mounts   []mountCall
	unmounts []string
	mountErr error
	zeros    []zeroCall
	zeroErr  error
	zeroFail string // fail zeroing this path only
	logs     bytes.Buffer
	sys, dir string
	devs     map[string][2]uint32
}

func newEnv(t *testing.T) *env {
	e := &env{t: t, sys: t.TempDir(), dir: t.TempDir(), devs: map[string][2]uint32{}}
	e.mapper = &fakeMapper{devDir: filepath.Join(e.dir, "dev")}
	e.keys = &fakeKeys{key: []byte(marker)}
	e.addBlock(254, 1, "vdb", 2*1024*1024+5) // 1 GiB + 5 sectors
	svc, err := New(Config{
		Log:    slog.New(slog.NewTextHandler(&e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Keys:   e.keys,
		Mapper: e.mapper,
		Run: func(_ context.Context, name string, args ...string) ([]byte, error) {
			e.runs = append(e.runs, append([]string{name}, args...))
			if e.runErr != nil {
				return []byte("mke2fs: bad things"), e.runErr
			}
			return nil, nil
		},
		Mount: func(source, target, fstype string, flags uintptr, data string) error {
			e.mounts = append(e.mounts, mountCall{source, target, fstype, flags})
			return e.mountErr
		},
		Unmount: func(target string, flags int) error { e.unmounts = append(e.unmounts, target); return nil },
		StatDevice: func(p string) (uint32, uint32, error) {
			d, ok := e.devs[p]
			if !ok {
				return 0, 0, fmt.Errorf("stat %s: %w", p, os.ErrNotExist)
			}
			return d[0], d[1], nil
		},
		Zero: func(_ context.Context, path string, offset, length int64) error {
			e.zeros = append(e.zeros, zeroCall{path, offset, length})
			if path == e.zeroFail {
				return e.zeroErr
			}
			return nil
		},
		SysDir: e.sys,
		DevDir: filepath.Join(e.dir, "dev"),
		Rand:   &counter{},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.svc = svc
	return e
}

// addBlock makes /sys/dev/block/MAJ:MIN/{uevent,size}.
func (e *env) addBlock(major, minor uint32, name string, sectors uint64) {
	d := filepath.Join(e.sys, "dev", "block", fmt.Sprintf("%d:%d", major, minor))
	if err := os.MkdirAll(d, 0o755); err != nil {
		e.t.Fatal(err)
	}
	os.WriteFile(filepath.Join(d, "uevent"), []byte(fmt.Sprintf("MAJOR=%d\nMINOR=%d\nDEVNAME=%s\nDEVTYPE=disk\n", major, minor, name)), 0o644)
	os.WriteFile(filepath.Join(d, "size"), []byte(fmt.Sprintf("%d\n", sectors)), 0o644)
	e.devs[filepath.Join(e.dir, "dev", name)] = [2]uint32{major, minor}
}

// noLeak fails if the key marker (raw or hex) is in the logs or err.
func (e *env) noLeak(err error, extra ...[]byte) {
	e.t.Helper()
	secrets := append([][]byte{[]byte(marker), []byte(hex.EncodeToString([]byte(marker)))}, extra...)
	for _, s := range secrets {
		if err != nil && strings.Contains(err.Error(), string(s)) {
			e.t.Fatalf("error leaks key material: %v", err)
		}
		if bytes.Contains(e.logs.Bytes(), s) {
			e.t.Fatalf("logs leak key material:\n%s", e.logs.String())
		}
	}
}

func (e *env) mp() string { return filepath.Join(e.dir, "mnt", "vol") }

func TestEphemeralFileSystem(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	got, err := e.svc.SecureMount(ctx, VolumeBlockDevice, EphemeralOptions("254:1", false), nil, e.mp())
	if err != nil {
		t.Fatal(err)
	}
	if got != e.mp() {
		t.Errorf("returned %q, want the mount point", got)
	}
	if len(e.mapper.creates) != 1 {
		t.Fatalf("creates %v", e.mapper.creates)
	}
	c := e.mapper.creates[0]
	// Rand: 8 name bytes 00..07, then the 64-byte volume key 08..47.
	wantName := "cova-sm-0001020304050607"
	var vk []byte
	for i := 8; i < 72; i++ {
		vk = append(vk, byte(i))
	}
	wantTable := fmt.Sprintf("aes-xts-plain64 %x 0 254:1 0 1 sector_size:4096", vk)
	if c.name != wantName || c.uuid != "CRYPT-PLAIN-"+wantName || c.ro || len(c.targets) != 1 {
		t.Fatalf("create %+v", c)
	}
	tg := c.targets[0]
	if tg.Type != "crypt" || tg.Params != wantTable || tg.Length != 2*1024*1024 || !tg.Secret {
		t.Fatalf("target %d %d %s %q secret %v\nwant params %q length %d", tg.Start, tg.Length, tg.Type, tg.Params, tg.Secret, wantTable, 2*1024*1024)
	}
	devPath := filepath.Join(e.dir, "dev", "mapper", wantName)
	wantRun := []string{"mkfs.ext4", "-F", "-O", "^has_journal", "-m", "0", "-i", "163840", "-I", "128", devPath}
	if len(e.runs) != 1 || strings.Join(e.runs[0], " ") != strings.Join(wantRun, " ") {
		t.Fatalf("runs %q, want %q", e.runs, wantRun)
	}
	if len(e.mounts) != 1 || e.mounts[0] != (mountCall{devPath, e.mp(), "ext4", unix.MS_NOATIME | unix.MS_NOSUID | unix.MS_NODEV}) {
		t.Fatalf("mounts %+v", e.mounts)
	}
	if st, err := os.Stat(e.mp()); err != nil || !st.IsDir() {
		t.Fatalf("mount point not created: %v", err)
	}
	e.noLeak(nil, []byte(hex.EncodeToString(vk)))

	if _, err := e.svc.SecureMount(ctx, VolumeBlockDevice, EphemeralOptions("254:1", false), nil, e.mp()); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second mount at the same point: %v", err)
	}
	if err := e.svc.Unmount(ctx, e.mp()); err != nil {
		t.Fatal(err)
	}
	if len(e.unmounts) != 1 || e.unmounts[0] != e.mp() || len(e.mapper.removes) != 1 || e.mapper.removes[0] != wantName {
		t.Fatalf("unmounts %v removes %v", e.unmounts, e.mapper.removes)
	}
	if err := e.svc.Unmount(ctx, e.mp()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second unmount: %v", err)
	}
}

func TestDeviceTargetAndDevicePath(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if err := os.MkdirAll(filepath.Dir(e.mp()), 0o755); err != nil {
		t.Fatal(err)
	}
	opts := map[string]string{
		OptDevicePath: filepath.Join(e.dir, "dev", "vdb"), OptSourceType: SourceEmpty,
		OptEncryptionType: EncryptionLUKS2, OptTargetType: TargetDevice, OptMapperName: "scratch",
	}
	if _, err := e.svc.SecureMount(ctx, VolumeBlockDevice, opts, nil, e.mp()); err != nil {
		t.Fatal(err)
	}
	link, err := os.Readlink(e.mp())
	if err != nil || link != filepath.Join(e.dir, "dev", "mapper", "scratch") {
		t.Fatalf("link %q, %v", link, err)
	}
	if len(e.runs) != 0 || len(e.mounts) != 0 {
		t.Fatalf("device target ran %v / mounted %v", e.runs, e.mounts)
	}
	if p := e.mapper.creates[0].targets[0].Params; !strings.Contains(p, " 254:1 0 ") {
		t.Fatalf("table %q does not name 254:1", p)
	}
	if err := e.svc.Unmount(ctx, e.mp()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(e.mp()); !errors.Is(err, os.ErrNotExist) || len(e.mapper.removes) != 1 {
		t.Fatalf("link still there (%v) or device not removed %v", err, e.mapper.removes)
	}
}

func base() map[string]string {
	return map[string]string{OptDeviceID: "254:1", OptSourceType: SourceEmpty, OptEncryptionType: EncryptionLUKS2, OptTargetType: TargetFS}
}

func with(kv ...string) map[string]string {
	m := base()
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "<del>" {
			delete(m, kv[i])
		} else {
			m[kv[i]] = kv[i+1]
		}
	}
	return m
}

func TestOptionErrors(t *testing.T) {
	tests := []struct {
		name  string
		vt    string
		opts  map[string]string
		flags []string
		mp    string
		field string
		class error
	}{
		{"volume type", "alibaba-cloud-oss", base(), nil, "", "volume_type", errdefs.ErrNotImplemented},
		{"flags", "", base(), []string{"ro"}, "", "flags", errdefs.ErrInvalidArgument},
		{"unknown option", "", with("colour", "blue"), nil, "", "colour", errdefs.ErrInvalidArgument},
		{"relative mount point", "", base(), nil, "mnt", "mount_point", errdefs.ErrInvalidArgument},
		{"dotdot mount point", "", base(), nil, "/run/../etc", "mount_point", errdefs.ErrInvalidArgument},
		{"no device", "", with(OptDeviceID, "<del>"), nil, "", OptDeviceID, errdefs.ErrInvalidArgument},
		{"bad device id", "", with(OptDeviceID, "254"), nil, "", OptDeviceID, errdefs.ErrInvalidArgument},
		{"bad device id numbers", "", with(OptDeviceID, "a:b"), nil, "", OptDeviceID, errdefs.ErrInvalidArgument},
		{"relative device path", "", with(OptDeviceID, "<del>", OptDevicePath, "dev/vdb"), nil, "", OptDevicePath, errdefs.ErrInvalidArgument},
		{"no encryption type", "", with(OptEncryptionType, "<del>"), nil, "", OptEncryptionType, errdefs.ErrInvalidArgument},
		{"zfs", "", with(OptEncryptionType, "zfs"), nil, "", OptEncryptionType, errdefs.ErrNotImplemented},
		{"luks1", "", with(OptEncryptionType, "luks1"), nil, "", OptEncryptionType, errdefs.ErrInvalidArgument},
		{"no source type", "", with(OptSourceType, "<del>"), nil, "", OptSourceType, errdefs.ErrInvalidArgument},
		{"bad source type", "", with(OptSourceType, "full"), nil, "", OptSourceType, errdefs.ErrInvalidArgument},
		{"bad key scheme", "", with(OptKey, "https://kbs/key"), nil, "", OptKey, errdefs.ErrInvalidArgument},
		{"empty key", "", with(OptKey, ""), nil, "", OptKey, errdefs.ErrInvalidArgument},
		{"bad kbs uri", "", with(OptKey, "kbs:///a/../b"), nil, "", OptKey, errdefs.ErrInvalidArgument},
		{"relative key file", "", with(OptKey, "file://key"), nil, "", OptKey, errdefs.ErrInvalidArgument},
		{"encrypted without key", "", with(OptSourceType, SourceEncrypted), nil, "", OptKey, errdefs.ErrInvalidArgument},
		{"bad integrity", "", with(OptDataIntegrity, "yes"), nil, "", OptDataIntegrity, errdefs.ErrInvalidArgument},
		{"integrity mapper name", "", with(OptDataIntegrity, "true", OptMapperName, strings.Repeat("m", 125)), nil, "", OptMapperName, errdefs.ErrInvalidArgument},
		{"bad mapper name", "", with(OptMapperName, "a/b"), nil, "", OptMapperName, errdefs.ErrInvalidArgument},
		{"no target type", "", with(OptTargetType, "<del>"), nil, "", OptTargetType, errdefs.ErrInvalidArgument},
		{"bad target type", "", with(OptTargetType, "filesystem"), nil, "", OptTargetType, errdefs.ErrInvalidArgument},
		{"fs type for device", "", with(OptTargetType, TargetDevice, OptFilesystemType, "ext4"), nil, "", OptFilesystemType, errdefs.ErrInvalidArgument},
		{"xfs", "", with(OptFilesystemType, "xfs"), nil, "", OptFilesystemType, errdefs.ErrInvalidArgument},
		{"mkfs on encrypted", "", with(OptSourceType, SourceEncrypted, OptKey, "file:///k", OptMkfsOpts, "-m 0"), nil, "", OptMkfsOpts, errdefs.ErrInvalidArgument},
		{"too many mkfs args", "", with(OptMkfsOpts, strings.Repeat("-q ", 33)), nil, "", OptMkfsOpts, errdefs.ErrInvalidArgument},
		{"NUL in option", "", with(OptMkfsOpts, "-m\x000"), nil, "", OptMkfsOpts, errdefs.ErrInvalidArgument},
		{"legacy and new", "", with("encryptType", "LUKS"), nil, "", "encryptType", errdefs.ErrInvalidArgument},
		{"legacy other", "", map[string]string{OptDeviceID: "254:1", "encryptType": "bitlocker"}, nil, "", "encryptType", errdefs.ErrNotImplemented},
		{"missing device", "", with(OptDeviceID, "8:9"), nil, "", OptDeviceID, errdefs.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			vt, mp := tc.vt, tc.mp
			if vt == "" {
				vt = VolumeBlockDevice
			}
			if mp == "" {
				mp = e.mp()
			}
			_, err := e.svc.SecureMount(context.Background(), vt, tc.opts, tc.flags, mp)
			if !errors.Is(err, tc.class) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v, want %v naming %q", err, tc.class, tc.field)
			}
			if len(e.mapper.creates) != 0 || len(e.runs) != 0 || len(e.mounts) != 0 {
				t.Fatalf("a rejected request reached the system: %v %v %v", e.mapper.creates, e.runs, e.mounts)
			}
		})
	}
}

func TestLegacyKataOptions(t *testing.T) {
	e := newEnv(t)
	opts := map[string]string{OptDeviceID: "254:1", "encryptType": "LUKS", OptDataIntegrity: "false"}
	if _, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, opts, nil, e.mp()); err != nil {
		t.Fatal(err)
	}
	if len(e.runs) != 1 || e.runs[0][0] != "mkfs.ext4" || len(e.mounts) != 1 {
		t.Fatalf("legacy request did not make and mount ext4: %v %v", e.runs, e.mounts)
	}
}

func TestKeySources(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte(marker), 0o600); err != nil {
		t.Fatal(err)
	}
	sealedKey := "sealed.eyJhbGciOiJFUzI1NiJ9.payload.sig"
	tests := []struct {
		name     string
		key      string
		keys     func(*fakeKeys)
		nilKeys  bool
		unsealed int
		fetched  int
		class    error
	}{
		{name: "sealed", key: sealedKey, unsealed: 1},
		{name: "kbs", key: "kbs:///default/disk/key1", fetched: 1},
		{name: "file", key: "file://" + keyFile},
		{name: "missing file", key: "file:///nonexistent/key", class: os.ErrNotExist},
		{name: "kbs refuses", key: "kbs:///default/disk/key1", keys: func(k *fakeKeys) { k.err = fmt.Errorf("denied: %w", errdefs.ErrPermissionDenied) }, fetched: 1, class: errdefs.ErrPermissionDenied},
		{name: "empty key", key: "kbs:///default/disk/key1", keys: func(k *fakeKeys) { k.key = nil }, fetched: 1, class: errdefs.ErrInvalidArgument},
		{name: "no key service", key: sealedKey, nilKeys: true, class: errdefs.ErrFailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if tc.keys != nil {
				tc.keys(e.keys)
			}
			if tc.nilKeys {
				e.svc.cfg.Keys = nil
			}
			_, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, with(OptKey, tc.key), nil, e.mp())
			if tc.class == nil && err != nil || tc.class != nil && !errors.Is(err, tc.class) {
				t.Fatalf("error %v, want %v", err, tc.class)
			}
			if len(e.keys.unsealed) != tc.unsealed || len(e.keys.fetched) != tc.fetched {
				t.Fatalf("unsealed %v fetched %v", e.keys.unsealed, e.keys.fetched)
			}
			if tc.unsealed == 1 && e.keys.unsealed[0] != sealedKey {
				t.Fatalf("unsealed %q", e.keys.unsealed[0])
			}
			if tc.class != nil && len(e.mapper.creates) != 0 {
				t.Fatal("a key failure still created a device")
			}
			if err != nil && tc.class != nil && !strings.Contains(err.Error(), OptKey) {
				t.Fatalf("key error does not name the option: %v", err)
			}
			e.noLeak(err)
			if tc.class == nil {
				// An empty source gets a fresh volume key, not the given one.
				if p := e.mapper.creates[0].targets[0].Params; strings.Contains(p, hex.EncodeToString([]byte(marker))) {
					t.Fatalf("the passphrase became the volume key: %q", p)
				}
			}
		})
	}
}

func TestFailuresCleanUp(t *testing.T) {
	t.Run("mkfs fails", func(t *testing.T) {
		e := newEnv(t)
		e.runErr = errors.New("exit status 1")
		_, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, with(OptKey, "kbs:///a/b/c"), nil, e.mp())
		if err == nil || !strings.Contains(err.Error(), "mke2fs: bad things") {
			t.Fatalf("error %v, want the mkfs output", err)
		}
		if len(e.mapper.removes) != 1 || len(e.mounts) != 0 {
			t.Fatalf("removes %v mounts %v", e.mapper.removes, e.mounts)
		}
		e.noLeak(err)
	})
	t.Run("mount fails", func(t *testing.T) {
		e := newEnv(t)
		e.mountErr = unix.EINVAL
		_, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, base(), nil, e.mp())
		if !errors.Is(err, unix.EINVAL) || len(e.mapper.removes) != 1 {
			t.Fatalf("error %v removes %v", err, e.mapper.removes)
		}
		// The mount point is free again.
		e.mountErr = nil
		if _, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, base(), nil, e.mp()); err != nil {
			t.Fatalf("retry after a failure: %v", err)
		}
	})
	t.Run("dm fails", func(t *testing.T) {
		e := newEnv(t)
		e.mapper.createErr = fmt.Errorf("device-mapper create: %w", errdefs.ErrAlreadyExists)
		_, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, base(), nil, e.mp())
		if !errors.Is(err, errdefs.ErrAlreadyExists) || len(e.runs) != 0 || len(e.mapper.removes) != 0 {
			t.Fatalf("error %v runs %v removes %v", err, e.runs, e.mapper.removes)
		}
	})
	t.Run("tiny device", func(t *testing.T) {
		e := newEnv(t)
		e.addBlock(7, 3, "loop3", 7)
		_, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, with(OptDeviceID, "7:3"), nil, e.mp())
		if !errors.Is(err, errdefs.ErrInvalidArgument) || len(e.mapper.creates) != 0 {
			t.Fatalf("error %v creates %v", err, e.mapper.creates)
		}
	})
}

// TestEphemeralIntegrity checks the whole dm-integrity + authenticated
// dm-crypt sequence and its tables.
func TestEphemeralIntegrity(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if _, err := e.svc.SecureMount(ctx, VolumeBlockDevice, EphemeralOptions("254:1", true), nil, e.mp()); err != nil {
		t.Fatal(err)
	}
	name := "cova-sm-0001020304050607"
	lower := name + "_dif"
	mapperDir := filepath.Join(e.dir, "dev", "mapper")
	wantEvents := []string{"create:" + lower, "status:" + lower, "remove:" + lower, "create:" + lower, "create:" + name}
	if strings.Join(e.mapper.events, " ") != strings.Join(wantEvents, " ") {
		t.Fatalf("dm calls %v\nwant      %v", e.mapper.events, wantEvents)
	}
	c := e.mapper.creates
	// The probe: one 4096-byte block, which makes the kernel format the
	// superblock; then the size the status reported (2000003 sectors,
	// rounded down to whole blocks).
	if got := c[0].targets[0].String(); got != "0 8 integrity 254:1 0 48 D 1 block_size:4096" || c[0].uuid != "" {
		t.Fatalf("probe table %q uuid %q", got, c[0].uuid)
	}
	if got := c[1].targets[0].String(); got != "0 2000000 integrity 254:1 0 48 D 1 block_size:4096" {
		t.Fatalf("integrity table %q", got)
	}
	// Rand: 8 name bytes 00..07, then the 96-byte key 08..103 (XTS, HMAC).
	var vk []byte
	for i := 8; i < 8+96; i++ {
		vk = append(vk, byte(i))
	}
	ct := c[2].targets[0]
	wantCrypt := fmt.Sprintf("capi:authenc(hmac(sha256),xts(aes))-random %x 0 %s 0 2 integrity:48:aead sector_size:4096", vk, filepath.Join(mapperDir, lower))
	if ct.Type != "crypt" || ct.Params != wantCrypt || ct.Length != 2000000 || !ct.Secret || c[2].uuid != "CRYPT-INTEGRITY-"+name {
		t.Fatalf("crypt %d %s %q secret %v uuid %q\nwant %q", ct.Length, ct.Type, ct.Params, ct.Secret, c[2].uuid, wantCrypt)
	}
	// Superblock area of the raw disk first, then the whole crypt device.
	wantZeros := []zeroCall{{filepath.Join(e.dir, "dev", "vdb"), 0, 4096}, {filepath.Join(mapperDir, name), 0, 2000000 * 512}}
	if fmt.Sprint(e.zeros) != fmt.Sprint(wantZeros) {
		t.Fatalf("zeroed %v, want %v", e.zeros, wantZeros)
	}
	if len(e.runs) != 1 || e.runs[0][len(e.runs[0])-1] != filepath.Join(mapperDir, name) || len(e.mounts) != 1 || e.mounts[0].source != filepath.Join(mapperDir, name) {
		t.Fatalf("runs %v mounts %v", e.runs, e.mounts)
	}
	e.noLeak(nil, []byte(hex.EncodeToString(vk)), []byte(hex.EncodeToString(vk[64:])))
	if !strings.Contains(e.logs.String(), "dm-integrity device active") {
		t.Errorf("no dm-integrity log line:\n%s", e.logs.String())
	}

	if err := e.svc.Unmount(ctx, e.mp()); err != nil {
		t.Fatal(err)
	}
	if got := e.mapper.events[len(wantEvents):]; strings.Join(got, " ") != "remove:"+name+" remove:"+lower {
		t.Fatalf("unmount removed %v, want the crypt device, then the integrity device", got)
	}
}

func TestUnmountRetriesBusyDevice(t *testing.T) {
	busy := fmt.Errorf("device-mapper remove: %w", unix.EBUSY)
	tests := []struct {
		name    string
		errs    []error
		wantErr error
		removes int
	}{
		{"busy twice", []error{busy, busy}, nil, 3},
		{"always busy", []error{busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy, busy}, unix.EBUSY, dm.BusyAttempts},
		{"other error", []error{fmt.Errorf("device-mapper remove: %w", unix.EPERM)}, unix.EPERM, 1},
		{"gone", []error{fmt.Errorf("device-mapper remove: %w", errdefs.ErrNotFound)}, nil, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.svc.backoff = time.Millisecond
			ctx := context.Background()
			if _, err := e.svc.SecureMount(ctx, VolumeBlockDevice, base(), nil, e.mp()); err != nil {
				t.Fatal(err)
			}
			e.mapper.removeErrs = tc.errs
			err := e.svc.Unmount(ctx, e.mp())
			if tc.wantErr == nil && err != nil || tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("Unmount: %v, want %v", err, tc.wantErr)
			}
			if len(e.mapper.removes) != tc.removes {
				t.Fatalf("%d removals, want %d", len(e.mapper.removes), tc.removes)
			}
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		e := newEnv(t)
		if _, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, base(), nil, e.mp()); err != nil {
			t.Fatal(err)
		}
		e.mapper.removeErrs = []error{busy, busy}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := e.svc.Unmount(ctx, e.mp()); !errors.Is(err, unix.EBUSY) || !errors.Is(err, context.Canceled) || len(e.mapper.removes) != 1 {
			t.Fatalf("Unmount: %v after %d removals; want busy and cancelled after 1", err, len(e.mapper.removes))
		}
	})
}

func TestEphemeralIntegrityFailures(t *testing.T) {
	name := "cova-sm-0001020304050607"
	lower := name + "_dif"
	tests := []struct {
		name        string
		setup       func(e *env)
		class       error
		want        string
		wantRemoves []string
	}{
		{"superblock not cleared", func(e *env) {
			e.zeroFail, e.zeroErr = filepath.Join(e.dir, "dev", "vdb"), unix.EIO
		}, unix.EIO, "superblock", nil},
		{"status fails", func(e *env) { e.mapper.statusErr = fmt.Errorf("device-mapper table status: %w", errdefs.ErrNotFound) }, errdefs.ErrNotFound, "sizing", []string{lower}},
		{"odd status", func(e *env) { e.mapper.status = "0 lots -" }, errdefs.ErrInvalidArgument, "provided sectors", []string{lower}},
		{"provides nothing", func(e *env) { e.mapper.status = "0 7 -" }, errdefs.ErrInvalidArgument, "provides 7 sectors", []string{lower}},
		{"provides more than the disk", func(e *env) { e.mapper.status = "0 4000000 -" }, errdefs.ErrInvalidArgument, "provides", []string{lower}},
		{"crypt load fails", func(e *env) { e.mapper.failCreate = name }, unix.EINVAL, "dm-crypt", []string{lower, lower}},
		{"tag wipe fails", func(e *env) {
			e.zeroFail, e.zeroErr = filepath.Join(e.dir, "dev", "mapper", name), unix.ENOSPC
		}, unix.ENOSPC, "integrity tags", []string{lower, name, lower}},
		{"mkfs fails", func(e *env) { e.runErr = errors.New("exit status 1") }, nil, "mke2fs", []string{lower, name, lower}},
		{"tiny device", func(e *env) { e.addBlock(254, 1, "vdb", 2047) }, errdefs.ErrInvalidArgument, "1 MiB", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			tc.setup(e)
			_, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, EphemeralOptions("254:1", true), nil, e.mp())
			if err == nil || !strings.Contains(err.Error(), tc.want) || tc.class != nil && !errors.Is(err, tc.class) {
				t.Fatalf("error %v, want %v naming %q", err, tc.class, tc.want)
			}
			if fmt.Sprint(e.mapper.removes) != fmt.Sprint(tc.wantRemoves) {
				t.Fatalf("removed %v, want %v (events %v)", e.mapper.removes, tc.wantRemoves, e.mapper.events)
			}
			if len(e.mounts) != 0 {
				t.Fatalf("mounted %v", e.mounts)
			}
			e.noLeak(err)
		})
	}
	t.Run("mapper without status", func(t *testing.T) {
		m := &plainMapper{}
		svc, err := New(Config{Mapper: m, SysDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		_, err = svc.SecureMount(context.Background(), VolumeBlockDevice, EphemeralOptions("254:1", true), nil, "/run/x")
		if !errors.Is(err, errdefs.ErrNotImplemented) || !strings.Contains(err.Error(), OptDataIntegrity) || len(m.m.creates) != 0 {
			t.Fatalf("error %v creates %v", err, m.m.creates)
		}
	})
}

func TestZeroDevice(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk")
	orig := bytes.Repeat([]byte{0xa5}, 3*4096)
	if err := os.WriteFile(p, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	// A regular file has no BLKZEROOUT: the fallback writes zeros.
	if err := zeroDevice(context.Background(), p, 4096, 4096); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(bytes.Repeat([]byte{0xa5}, 4096), make([]byte, 4096)...), bytes.Repeat([]byte{0xa5}, 4096)...)
	if !bytes.Equal(got, want) {
		t.Fatal("zeroDevice did not zero exactly the second block")
	}
	for _, bad := range [][2]int64{{1, 512}, {0, 100}, {-512, 512}} {
		if err := zeroDevice(context.Background(), p, bad[0], bad[1]); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("range %v: %v, want invalid argument", bad, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := zeroDevice(ctx, p, 0, 4096); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if err := zeroDevice(context.Background(), filepath.Join(t.TempDir(), "none"), 0, 512); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// TestEncryptedSource opens a LUKS2 image made by luks2.Format the way a
// device formatted elsewhere would be opened.
func TestEncryptedSource(t *testing.T) {
	e := newEnv(t)
	img := filepath.Join(e.dir, "dev", "vdc")
	if err := os.MkdirAll(filepath.Dir(img), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(20 << 20); err != nil {
		t.Fatal(err)
	}
	vol, err := luks2.Format(f, []byte(marker), luks2.FormatOptions{KDF: luks2.KDF{Type: "pbkdf2", Iterations: 1000}, UUID: "01234567-89ab-4cde-8f01-23456789abcd"})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	e.addBlock(254, 2, "vdc", 20<<20/512)
	opts := with(OptDeviceID, "254:2", OptSourceType, SourceEncrypted, OptKey, "kbs:///default/disk/k", OptMapperName, "data")
	if _, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, opts, nil, e.mp()); err != nil {
		t.Fatal(err)
	}
	c := e.mapper.creates[0]
	want := fmt.Sprintf("aes-xts-plain64 %x 0 254:2 32768 1 sector_size:4096", vol.Key)
	if len(c.targets) != 1 || c.targets[0].Params != want || c.targets[0].Length != (20<<20-16<<20)/512 {
		t.Fatalf("target %+v\nwant params %q", c.targets, want)
	}
	if c.uuid != "CRYPT-LUKS2-0123456789ab4cde8f0123456789abcd-data" {
		t.Fatalf("dm uuid %q", c.uuid)
	}
	if len(e.runs) != 0 {
		t.Fatalf("an encrypted source was formatted: %v", e.runs)
	}
	if len(e.mounts) != 1 || e.mounts[0].source != filepath.Join(e.dir, "dev", "mapper", "data") {
		t.Fatalf("mounts %+v", e.mounts)
	}
	e.noLeak(nil, []byte(hex.EncodeToString(vol.Key)))

	t.Run("wrong key", func(t *testing.T) {
		e2 := newEnv(t)
		e2.keys.key = []byte("not the passphrase")
		e2.addBlock(254, 2, "vdc", 20<<20/512)
		e2.svc.cfg.OpenDevice = func(string) (io.ReaderAt, io.Closer, error) {
			f, err := os.Open(img)
			return f, f, err
		}
		_, err := e2.svc.SecureMount(context.Background(), VolumeBlockDevice, opts, nil, e2.mp())
		if !errors.Is(err, luks2.ErrWrongKey) || !errors.Is(err, errdefs.ErrPermissionDenied) || len(e2.mapper.creates) != 0 {
			t.Fatalf("error %v creates %v", err, e2.mapper.creates)
		}
	})
	t.Run("not luks", func(t *testing.T) {
		e3 := newEnv(t)
		opts := maps.Clone(opts)
		opts[OptDeviceID] = "254:1"
		e3.svc.cfg.OpenDevice = func(string) (io.ReaderAt, io.Closer, error) {
			r := bytes.NewReader(make([]byte, 1<<20))
			return r, io.NopCloser(nil), nil
		}
		_, err := e3.svc.SecureMount(context.Background(), VolumeBlockDevice, opts, nil, e3.mp())
		if err == nil || !strings.Contains(err.Error(), "LUKS2") || len(e3.mapper.creates) != 0 {
			t.Fatalf("error %v", err)
		}
	})
}

func TestNewNeedsMapper(t *testing.T) {
	if _, err := New(Config{}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("New without a mapper: %v", err)
	}
}

func TestKeyFuncs(t *testing.T) {
	ctx := context.Background()
	var empty KeyFuncs
	if _, err := empty.Unseal(ctx, "sealed.x"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("nil UnsealFunc: %v", err)
	}
	if _, err := empty.GetResource(ctx, "kbs:///a/b/c"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("nil ResourceFunc: %v", err)
	}
	k := KeyFuncs{
		UnsealFunc:   func(_ context.Context, s string) ([]byte, error) { return []byte("u:" + s), nil },
		ResourceFunc: func(_ context.Context, u string) ([]byte, error) { return []byte("r:" + u), nil },
	}
	if b, _ := k.Unseal(ctx, "s"); string(b) != "u:s" {
		t.Errorf("Unseal gave %q", b)
	}
	if b, _ := k.GetResource(ctx, "kbs:///a/b/c"); string(b) != "r:kbs:///a/b/c" {
		t.Errorf("GetResource gave %q", b)
	}
}

func TestRunTool(t *testing.T) {
	t.Setenv("PATH", "")
	if _, err := runTool(context.Background(), "no-such-tool-cova"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("missing tool: %v", err)
	}
	// "true" lives in /usr/bin or /bin on every Debian machine.
	if _, err := runTool(context.Background(), "true"); err != nil {
		t.Fatalf("tool from the fixed directories without PATH: %v", err)
	}
}

// integritySuperblock is a dm-integrity superblock as the kernel formats it
// for cryptsetup --integrity hmac-sha256 --sector-size 4096 (version 4,
// 32-byte tags, fixed padding), offering sectors data sectors.
func integritySuperblock(tag byte, sectors uint64) []byte {
	b := make([]byte, 512)
	copy(b, "integrt\x00")
	b[8], b[9], b[10] = 4, 15, tag
	b[12] = 1
	binary.LittleEndian.PutUint64(b[16:], sectors)
	b[24] = dm.IntegrityFlagFixedPadding
	b[28], b[29] = 3, 12
	return b
}

// TestEncryptedSourceIntegrity opens LUKS2 volumes whose segment has
// integrity as cryptsetup luksOpen does: a dm-integrity device in journal
// mode over the data area (its size from the superblock there), under an
// authenticated dm-crypt device; nothing is wiped or formatted.
func TestEncryptedSourceIntegrity(t *testing.T) {
	const dataSectors = 6000
	newImage := func(t *testing.T, e *env, integrity string, sb []byte) *luks2.Volume {
		t.Helper()
		img := filepath.Join(e.dir, "dev", "vdc")
		if err := os.MkdirAll(filepath.Dir(img), 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(20 << 20); err != nil {
			t.Fatal(err)
		}
		vol, err := luks2.Format(f, []byte(marker), luks2.FormatOptions{KDF: luks2.KDF{Type: "pbkdf2", Iterations: 1000}, UUID: "01234567-89ab-4cde-8f01-23456789abcd", Integrity: integrity})
		if err != nil {
			t.Fatal(err)
		}
		if sb != nil {
			if _, err := f.WriteAt(sb, 16<<20); err != nil {
				t.Fatal(err)
			}
		}
		e.addBlock(254, 2, "vdc", 20<<20/512)
		return vol
	}
	opts := func(integrity string) map[string]string {
		return with(OptDeviceID, "254:2", OptSourceType, SourceEncrypted, OptKey, "kbs:///default/disk/k", OptMapperName, "data", OptDataIntegrity, integrity)
	}

	for _, asked := range []string{"true", "false"} {
		t.Run("dataIntegrity="+asked, func(t *testing.T) {
			e := newEnv(t)
			vol := newImage(t, e, luks2.IntegrityHMACSHA256, integritySuperblock(32, dataSectors))
			if _, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, opts(asked), nil, e.mp()); err != nil {
				t.Fatal(err)
			}
			if len(e.mapper.creates) != 2 {
				t.Fatalf("creates %+v", e.mapper.creates)
			}
			lower, upper := e.mapper.creates[0], e.mapper.creates[1]
			if lower.name != "data_dif" || lower.uuid != "CRYPT-SUBDEV-0123456789ab4cde8f0123456789abcd-data_dif" || len(lower.targets) != 1 ||
				lower.targets[0].Params != "254:2 32768 32 J 2 block_size:4096 fix_padding" || lower.targets[0].Length != dataSectors {
				t.Fatalf("dm-integrity device %+v", lower)
			}
			want := fmt.Sprintf("capi:authenc(hmac(sha256),xts(aes))-plain64 %x 0 %s 0 2 integrity:32:aead sector_size:4096", vol.Key, filepath.Join(e.dir, "dev", "mapper", "data_dif"))
			if upper.name != "data" || len(upper.targets) != 1 || upper.targets[0].Params != want || upper.targets[0].Length != dataSectors {
				t.Fatalf("dm-crypt device %+v\nwant params %q", upper, want)
			}
			if len(e.zeros) != 0 || len(e.runs) != 0 {
				t.Fatalf("an existing volume was wiped %v or formatted %v", e.zeros, e.runs)
			}
			if len(e.mounts) != 1 || e.mounts[0].source != filepath.Join(e.dir, "dev", "mapper", "data") {
				t.Fatalf("mounts %+v", e.mounts)
			}
			e.noLeak(nil, []byte(hex.EncodeToString(vol.Key)))
			if err := e.svc.Unmount(context.Background(), e.mp()); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(e.mapper.removes, []string{"data", "data_dif"}) {
				t.Fatalf("removes %v, want the crypt device, then the integrity device", e.mapper.removes)
			}
		})
	}

	failures := []struct {
		name      string
		integrity string
		sb        []byte
		asked     string
		failDev   string
		is        func(error) bool
		text      string
		removes   []string
	}{
		{"integrity asked, plain header", "", nil, "true", "", errdefs.IsFailedPrecondition, "has no integrity", nil},
		{"no superblock", luks2.IntegrityHMACSHA256, nil, "true", "", errdefs.IsNotFound, "no dm-integrity superblock", nil},
		{"48-byte tags", luks2.IntegrityHMACSHA256, integritySuperblock(48, dataSectors), "true", "", errdefs.IsInvalidArgument, "48-byte tags", nil},
		{"more data than the disk", luks2.IntegrityHMACSHA256, integritySuperblock(32, 9000), "true", "", errdefs.IsInvalidArgument, "offers 9000 data sectors", nil},
		{"crypt device fails", luks2.IntegrityHMACSHA256, integritySuperblock(32, dataSectors), "true", "data", func(err error) bool { return errors.Is(err, unix.EINVAL) }, "creating dm-crypt device data", []string{"data_dif"}},
		{"integrity device fails", luks2.IntegrityHMACSHA256, integritySuperblock(32, dataSectors), "true", "data_dif", func(err error) bool { return errors.Is(err, unix.EINVAL) }, "creating dm-integrity device data_dif", nil},
	}
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			vol := newImage(t, e, tc.integrity, tc.sb)
			e.mapper.failCreate = tc.failDev
			_, err := e.svc.SecureMount(context.Background(), VolumeBlockDevice, opts(tc.asked), nil, e.mp())
			if !tc.is(err) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("got %v, want %q", err, tc.text)
			}
			if !slices.Equal(e.mapper.removes, tc.removes) || len(e.mounts) != 0 {
				t.Fatalf("removes %v (want %v), mounts %v", e.mapper.removes, tc.removes, e.mounts)
			}
			e.noLeak(err, []byte(hex.EncodeToString(vol.Key)))
		})
	}
}
