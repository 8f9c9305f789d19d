package dm

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/rootfs/verity"
)

// fakeKernel answers dm ioctls the way drivers/md/dm-ioctl.c does for the
// commands this package sends, and records them.
type fakeKernel struct {
	t        *testing.T
	devices  map[string]*fakeDev
	calls    []fakeCall
	fail     map[uint]error // per command
	minor    uint32
	status   map[string][]TargetStatus
	closed   int
	opened   int
	maxFlags uint32
}

type fakeDev struct {
	minor    uint32
	uuid     string
	inactive []TargetStatus
	active   []TargetStatus
	ro       bool
	open     int32
}

type fakeCall struct {
	cmd     uint
	name    string
	flags   uint32
	targets []TargetStatus // parsed DM_TABLE_LOAD targets
	size    int
}

func newFakeKernel(t *testing.T) *fakeKernel {
	return &fakeKernel{t: t, devices: map[string]*fakeDev{}, fail: map[uint]error{}, status: map[string][]TargetStatus{}}
}

func (k *fakeKernel) open(path string) (Control, error) {
	k.opened++
	return k, nil
}

func (k *fakeKernel) Close() error { k.closed++; return nil }

func (k *fakeKernel) cmds() []uint {
	var out []uint
	for _, c := range k.calls {
		out = append(out, c.cmd)
	}
	return out
}

// parseLoad reads targets like populate_table: the first spec at
// data_start, each next counted from the current spec, params
// NUL-terminated before data_size.
func (k *fakeKernel) parseLoad(buf []byte, h header) ([]TargetStatus, error) {
	end := int(h.DataSize)
	pos := int(h.DataStart)
	next := 0
	var out []TargetStatus
	for i := uint32(0); i < h.TargetCount; i++ {
		pos += next
		if pos%8 != 0 {
			return nil, fmt.Errorf("target %d not 8-byte aligned: %w", i, unix.EINVAL)
		}
		if pos+specSize > end {
			return nil, unix.EINVAL
		}
		s := buf[pos:end]
		nul := bytes.IndexByte(s[specSize:], 0)
		if nul < 0 {
			return nil, fmt.Errorf("unterminated params: %w", unix.EINVAL)
		}
		out = append(out, TargetStatus{
			Start: binary.LittleEndian.Uint64(s[0:]), Length: binary.LittleEndian.Uint64(s[8:]),
			Type: cString(s[24:40]), Params: string(s[specSize : specSize+nul]),
		})
		next = int(binary.LittleEndian.Uint32(s[20:]))
		if i+1 < h.TargetCount && next < specSize {
			return nil, unix.EINVAL
		}
	}
	return out, nil
}

func (k *fakeKernel) Ioctl(req uint, buf []byte) error {
	cmd := req & 0xff
	if req != ioctlRequest(cmd) {
		k.t.Errorf("request %#x is not _IOWR(0xfd, %d, struct dm_ioctl)", req, cmd)
		return unix.ENOTTY
	}
	h, err := unmarshalHeader(buf)
	if err != nil {
		return unix.EFAULT
	}
	if h.Version[0] != 4 {
		return unix.EINVAL
	}
	if int(h.DataSize) > len(buf) || h.DataSize < offData || h.DataStart < ioctlSize {
		k.t.Errorf("cmd %d: data_size %d / data_start %d against a %d-byte buffer", cmd, h.DataSize, h.DataStart, len(buf))
		return unix.EINVAL
	}
	call := fakeCall{cmd: cmd, name: h.Name, flags: h.Flags, size: len(buf)}
	k.maxFlags |= h.Flags
	defer func() { k.calls = append(k.calls, call) }()
	if err := k.fail[cmd]; err != nil {
		if cmd == cmdTableLoad {
			call.targets, _ = k.parseLoad(buf, h)
		}
		return err
	}
	setVersion := func() {
		binary.LittleEndian.PutUint32(buf[0:], 4)
		binary.LittleEndian.PutUint32(buf[4:], 48)
		binary.LittleEndian.PutUint32(buf[8:], 0)
	}
	devStatus := func(d *fakeDev) {
		setVersion()
		binary.LittleEndian.PutUint64(buf[offDev:], unix.Mkdev(254, d.minor))
		binary.LittleEndian.PutUint32(buf[offOpenCount:], uint32(d.open))
		flags := h.Flags &^ (flagReadOnly | flagActivePresent | flagInactivePresent)
		if d.ro {
			flags |= flagReadOnly
		}
		if d.active != nil {
			flags |= flagActivePresent
		}
		if d.inactive != nil {
			flags |= flagInactivePresent
		}
		binary.LittleEndian.PutUint32(buf[offFlags:], flags)
		binary.LittleEndian.PutUint32(buf[offTargetCount:], uint32(len(d.active)))
		copy(buf[offUUID:offUUID+uuidLen], d.uuid)
	}
	switch cmd {
	case cmdVersion:
		setVersion()
		return nil
	case cmdDevCreate:
		if _, ok := k.devices[h.Name]; ok {
			return unix.EBUSY
		}
		d := &fakeDev{minor: k.minor, uuid: h.UUID}
		k.minor++
		k.devices[h.Name] = d
		devStatus(d)
		return nil
	}
	d, ok := k.devices[h.Name]
	if !ok {
		return unix.ENXIO
	}
	switch cmd {
	case cmdTableLoad:
		ts, err := k.parseLoad(buf, h)
		call.targets = ts
		if err != nil {
			return err
		}
		d.inactive = ts
		d.ro = h.Flags&flagReadOnly != 0
		devStatus(d)
	case cmdDevSuspend:
		if h.Flags&flagSuspend == 0 && d.inactive != nil {
			d.active, d.inactive = d.inactive, nil
		}
		devStatus(d)
	case cmdDevRemove:
		if d.open > 0 {
			return unix.EBUSY
		}
		delete(k.devices, h.Name)
	case cmdDevStatus:
		devStatus(d)
	case cmdTableStatus:
		devStatus(d)
		lines := k.status[h.Name]
		if h.Flags&flagStatusTable != 0 {
			lines = d.active
		}
		kernelStatusAnswer(buf, lines)
	default:
		return unix.ENOTTY
	}
	return nil
}

type mknodCall struct {
	path string
	mode uint32
	dev  int
}

func newTestClient(t *testing.T, k *fakeKernel, log *slog.Logger) (*Client, *[]mknodCall, string) {
	devDir := t.TempDir()
	var nodes []mknodCall
	c := New(log, WithControlPath("/nonexistent/control"), WithDevDir(devDir), WithOpener(k.open),
		WithMknod(func(p string, mode uint32, dev int) error {
			nodes = append(nodes, mknodCall{p, mode, dev})
			return os.WriteFile(p, nil, 0o600) // a regular stand-in for the node
		}))
	return c, &nodes, devDir
}

func TestCreateDevice(t *testing.T) {
	k := newFakeKernel(t)
	var logs bytes.Buffer
	c, nodes, devDir := newTestClient(t, k, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	k.minor = 3
	targets := []Target{{0, 8, "zero", "", false}, {8, 8, "error", "", false}}
	path, err := c.CreateDevice(context.Background(), "cova-test", "COVA-uuid-1", targets, true)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(devDir, "mapper", "cova-test"); path != want {
		t.Errorf("path %q, want %q", path, want)
	}
	if got, want := fmt.Sprint(k.cmds()), fmt.Sprint([]uint{cmdDevCreate, cmdTableLoad, cmdDevSuspend}); got != want {
		t.Errorf("ioctls %s, want %s (create, load, resume)", got, want)
	}
	if k.opened != 1 || k.closed != 1 {
		t.Errorf("control opened %d closed %d times, want 1/1", k.opened, k.closed)
	}
	load := k.calls[1]
	if load.flags&flagReadOnly == 0 || load.flags&flagSecureData != 0 {
		t.Errorf("load flags %#x: want read-only and no secure-data for public targets", load.flags)
	}
	if got := fmt.Sprint(load.targets); got != "[{0 8 zero } {8 8 error }]" {
		t.Errorf("kernel parsed targets %s", got)
	}
	if k.calls[2].flags&flagSuspend != 0 {
		t.Errorf("resume sent DM_SUSPEND_FLAG")
	}
	if k.devices["cova-test"].uuid != "COVA-uuid-1" || k.devices["cova-test"].active == nil {
		t.Errorf("device %+v: uuid or active table missing", k.devices["cova-test"])
	}
	if len(*nodes) != 1 || (*nodes)[0].mode != unix.S_IFBLK|0o600 || (*nodes)[0].dev != int(unix.Mkdev(254, 3)) {
		t.Errorf("mknod calls %+v, want one block node 254:3", *nodes)
	}

	info, err := c.Info(context.Background(), "cova-test")
	if err != nil {
		t.Fatal(err)
	}
	if info.Major != 254 || info.Minor != 3 || !info.ReadOnly || !info.ActiveTable || info.InactiveTable || info.TargetCount != 2 || info.UUID != "COVA-uuid-1" {
		t.Errorf("info %+v", info)
	}
	k.status["cova-test"] = []TargetStatus{{0, 8, "zero", ""}, {8, 8, "error", "x"}}
	_, st, err := c.Status(context.Background(), "cova-test")
	if err != nil || fmt.Sprint(st) != "[{0 8 zero } {8 8 error x}]" {
		t.Errorf("status %v, %v", st, err)
	}
	_, table, err := c.Table(context.Background(), "cova-test")
	if err != nil || fmt.Sprint(table) != "[{0 8 zero } {8 8 error }]" {
		t.Errorf("table %v, %v", table, err)
	}
	if last := k.calls[len(k.calls)-1]; last.flags&flagStatusTable == 0 {
		t.Errorf("Table did not ask for the table (flags %#x)", last.flags)
	}

	if err := c.RemoveDevice(context.Background(), "cova-test"); err != nil {
		t.Fatal(err)
	}
	if _, ok := k.devices["cova-test"]; ok {
		t.Error("device still in the kernel after RemoveDevice")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("node %s still there: %v", path, err)
	}
	if err := c.RemoveDevice(context.Background(), "cova-test"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("second remove: %v, want not found", err)
	}
	if !strings.Contains(logs.String(), "dm device active") {
		t.Errorf("no activation log:\n%s", logs.String())
	}
}

func TestStatusGrowsBuffer(t *testing.T) {
	k := newFakeKernel(t)
	c, _, _ := newTestClient(t, k, nil)
	if _, err := c.CreateDevice(context.Background(), "big", "", []Target{{0, 8, "zero", "", false}}, false); err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("s", 20000)
	k.status["big"] = []TargetStatus{{0, 8, "zero", long}}
	_, st, err := c.Status(context.Background(), "big")
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].Params != long {
		t.Fatalf("status lost the long line (%d targets)", len(st))
	}
	var sizes []int
	for _, call := range k.calls {
		if call.cmd == cmdTableStatus {
			sizes = append(sizes, call.size)
		}
	}
	if fmt.Sprint(sizes) != "[16384 32768]" {
		t.Errorf("status buffers %v, want a retry with a doubled buffer", sizes)
	}
}

func TestCreateDeviceFailuresCleanUp(t *testing.T) {
	key := bytes.Repeat([]byte{0x5e}, 64)
	marker := hex.EncodeToString(key)
	tests := []struct {
		name    string
		failCmd uint
		errno   error
		class   error
		removed bool
	}{
		{"create busy", cmdDevCreate, unix.EBUSY, errdefs.ErrAlreadyExists, false},
		{"load rejected", cmdTableLoad, unix.EINVAL, errdefs.ErrInvalidArgument, true},
		{"resume fails", cmdDevSuspend, unix.EIO, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeKernel(t)
			k.fail[tc.failCmd] = tc.errno
			var logs bytes.Buffer
			c, nodes, _ := newTestClient(t, k, slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
			tgt, err := CryptTarget(CryptParams{Key: key, Device: "/dev/vdb", Length: 2048})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.CreateDevice(context.Background(), "cova-crypt", "", []Target{tgt}, false)
			if !errors.Is(err, tc.errno) || (tc.class != nil && !errors.Is(err, tc.class)) {
				t.Fatalf("error %v, want %v / %v", err, tc.errno, tc.class)
			}
			if strings.Contains(err.Error(), marker) || strings.Contains(logs.String(), marker) {
				t.Fatalf("key material leaked:\nerror: %v\nlogs: %s", err, logs.String())
			}
			if tc.removed {
				if last := k.calls[len(k.calls)-1]; last.cmd != cmdDevRemove {
					t.Errorf("last ioctl %d, want DM_DEV_REMOVE after a failure", last.cmd)
				}
				if len(k.devices) != 0 {
					t.Errorf("devices left: %v", k.devices)
				}
			}
			if len(*nodes) != 0 {
				t.Errorf("a node was made for a failed device: %v", *nodes)
			}
		})
	}
	t.Run("secure flag on load", func(t *testing.T) {
		k := newFakeKernel(t)
		var logs bytes.Buffer
		c, _, _ := newTestClient(t, k, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
		tgt, _ := CryptTarget(CryptParams{Key: key, Device: "/dev/vdb", Length: 2048})
		if _, err := c.CreateDevice(context.Background(), "cova-crypt", "", []Target{tgt}, false); err != nil {
			t.Fatal(err)
		}
		load := k.calls[1]
		if load.cmd != cmdTableLoad || load.flags&flagSecureData == 0 || load.flags&flagReadOnly != 0 {
			t.Fatalf("load %+v: want DM_SECURE_DATA_FLAG and read-write", load)
		}
		if !strings.Contains(load.targets[0].Params, marker) {
			t.Fatalf("the kernel did not get the key")
		}
		if strings.Contains(logs.String(), marker) || !strings.Contains(logs.String(), "<redacted>") {
			t.Fatalf("logs leak or lack the redacted table:\n%s", logs.String())
		}
	})
}

func TestValidation(t *testing.T) {
	k := newFakeKernel(t)
	c, _, _ := newTestClient(t, k, nil)
	ok := []Target{{0, 8, "zero", "", false}}
	tests := []struct {
		name, dev, uuid string
		targets         []Target
		field           string
	}{
		{"empty name", "", "", ok, "name"},
		{"slash", "a/b", "", ok, "name"},
		{"dotdot", "..", "", ok, "name"},
		{"long name", strings.Repeat("n", 128), "", ok, "name"},
		{"space uuid", "n", "a b", ok, "uuid"},
		{"no targets", "n", "", nil, "targets"},
		{"gap", "n", "", []Target{{0, 8, "zero", "", false}, {9, 8, "zero", "", false}}, "start"},
		{"zero length", "n", "", []Target{{0, 0, "zero", "", false}}, "length"},
		{"long type", "n", "", []Target{{0, 8, strings.Repeat("t", 16), "", false}}, "type"},
		{"newline params", "n", "", []Target{{0, 8, "linear", "/dev/a 0\n", false}}, "params"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.CreateDevice(context.Background(), tc.dev, tc.uuid, tc.targets, false)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v, want invalid argument naming %q", err, tc.field)
			}
		})
	}
	if len(k.calls) != 0 {
		t.Errorf("invalid requests reached the kernel: %v", k.cmds())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.CreateDevice(ctx, "n", "", ok, false); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: %v", err)
	}
}

func TestMissingControlNode(t *testing.T) {
	c := New(nil, WithControlPath(filepath.Join(t.TempDir(), "control")))
	_, err := c.Version(context.Background())
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "dm-mod") {
		t.Fatalf("error %v, want not found with a dm-mod hint", err)
	}
}

func TestVersion(t *testing.T) {
	k := newFakeKernel(t)
	c, _, _ := newTestClient(t, k, nil)
	v, err := c.Version(context.Background())
	if err != nil || v != [3]uint32{4, 48, 0} {
		t.Fatalf("version %v, %v", v, err)
	}
}

func TestMakeNodeReplacesStale(t *testing.T) {
	k := newFakeKernel(t)
	c, nodes, devDir := newTestClient(t, k, nil)
	stale := filepath.Join(devDir, "mapper", "n")
	if err := os.MkdirAll(filepath.Dir(stale), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateDevice(context.Background(), "n", "", []Target{{0, 8, "zero", "", false}}, false); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(stale); len(b) != 0 || len(*nodes) != 1 {
		t.Fatalf("stale file not replaced (content %q, %d mknods)", b, len(*nodes))
	}
}

func TestVerityTarget(t *testing.T) {
	p := verity.Params{DataBlocks: 256, Superblock: true, Salt: []byte{1, 2}, RootHash: bytes.Repeat([]byte{0xcd}, 32), HashBlocks: 2}
	tgt, err := VerityTarget(p, "/dev/vda", "/dev/vdb", "panic_on_corruption")
	if err != nil {
		t.Fatal(err)
	}
	want := "0 2048 verity 1 /dev/vda /dev/vdb 4096 4096 256 1 sha256 " + strings.Repeat("cd", 32) + " 0102 1 panic_on_corruption"
	if tgt.String() != want || tgt.Secret {
		t.Fatalf("target %q (secret %v)\nwant   %q", tgt.String(), tgt.Secret, want)
	}
	for name, f := range map[string]func() error{
		"short root": func() error {
			q := p
			q.RootHash = q.RootHash[:31]
			_, err := VerityTarget(q, "/dev/a", "/dev/b")
			return err
		},
		"no blocks": func() error { q := p; q.DataBlocks = 0; _, err := VerityTarget(q, "/dev/a", "/dev/b"); return err },
		"data dev":  func() error { _, err := VerityTarget(p, "/dev/a b", "/dev/b"); return err },
		"hash dev":  func() error { _, err := VerityTarget(p, "/dev/a", ""); return err },
		"option":    func() error { _, err := VerityTarget(p, "/dev/a", "/dev/b", "1 x"); return err },
	} {
		if err := f(); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
}

func TestCryptTarget(t *testing.T) {
	key := make([]byte, 64)
	for i := range key {
		key[i] = byte(i)
	}
	hexKey := hex.EncodeToString(key)
	tests := []struct {
		name   string
		p      CryptParams
		want   string
		secret bool
	}{
		{"defaults", CryptParams{Key: key, Device: "/dev/vdb", Length: 4096},
			"0 4096 crypt aes-xts-plain64 " + hexKey + " 0 /dev/vdb 0", true},
		{"options", CryptParams{Key: key[:32], Device: "254:1", Offset: 32768, IVOffset: 8, Length: 4096, SectorSize: 4096, AllowDiscards: true, NoReadWorkqueue: true, NoWriteWorkqueue: true},
			"0 4096 crypt aes-xts-plain64 " + hexKey[:64] + " 8 254:1 32768 4 allow_discards no_read_workqueue no_write_workqueue sector_size:4096", true},
		{"keyring", CryptParams{Keyring: &KeyringKey{Size: 64, Type: "logon", Description: "cova:vol1"}, Device: "/dev/vdb", Length: 8},
			"0 8 crypt aes-xts-plain64 :64:logon:cova:vol1 0 /dev/vdb 0", false},
		{"other cipher", CryptParams{Cipher: "aes-cbc-essiv:sha256", Key: key[:16], Device: "/dev/vdb", Length: 8},
			"0 8 crypt aes-cbc-essiv:sha256 " + hexKey[:32] + " 0 /dev/vdb 0", true},
		// What cryptsetup loads for luksFormat --integrity hmac-sha256
		// --sector-size 4096 (key: 64 bytes XTS, then 32 bytes HMAC).
		{"authenticated", CryptParams{Cipher: AuthencHMACSHA256XTS, Key: append(append([]byte(nil), key...), key[:32]...), Device: "/dev/mapper/v_dif", Length: 4096, SectorSize: 4096, IntegrityTagSize: HMACSHA256TagSize + RandomIVSize, IntegrityType: "aead"},
			"0 4096 crypt capi:authenc(hmac(sha256),xts(aes))-random " + hexKey + hexKey[:64] + " 0 /dev/mapper/v_dif 0 2 integrity:48:aead sector_size:4096", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tgt, err := CryptTarget(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			got := fmt.Sprintf("%d %d %s %s", tgt.Start, tgt.Length, tgt.Type, tgt.Params)
			if got != tc.want || tgt.Secret != tc.secret {
				t.Fatalf("target %q secret %v\nwant   %q secret %v", got, tgt.Secret, tc.want, tc.secret)
			}
			if tc.secret && (strings.Contains(tgt.String(), hexKey[:32]) || strings.Contains(tgt.LogValue().String(), hexKey[:32])) {
				t.Fatalf("String/LogValue show the key: %s", tgt)
			}
		})
	}
	bad := []struct {
		name  string
		p     CryptParams
		field string
	}{
		{"no key", CryptParams{Device: "/dev/vdb", Length: 8}, "key"},
		{"both keys", CryptParams{Key: key, Keyring: &KeyringKey{64, "logon", "x"}, Device: "/dev/vdb", Length: 8}, "key"},
		{"xts key size", CryptParams{Key: key[:48], Device: "/dev/vdb", Length: 8}, "key"},
		{"keyring type", CryptParams{Keyring: &KeyringKey{64, "trusted", "x"}, Device: "/dev/vdb", Length: 8}, "type"},
		{"keyring desc", CryptParams{Keyring: &KeyringKey{64, "logon", "a b"}, Device: "/dev/vdb", Length: 8}, "description"},
		{"cipher", CryptParams{Cipher: "aes xts", Key: key, Device: "/dev/vdb", Length: 8}, "cipher"},
		{"device", CryptParams{Key: key, Device: "", Length: 8}, "device"},
		{"length", CryptParams{Key: key, Device: "/dev/vdb"}, "length"},
		{"sector size", CryptParams{Key: key, Device: "/dev/vdb", Length: 8, SectorSize: 1000}, "sector size"},
		{"sector multiple", CryptParams{Key: key, Device: "/dev/vdb", Length: 12, SectorSize: 4096}, "sector size"},
		{"integrity type", CryptParams{Cipher: AuthencHMACSHA256XTS, Key: key, Device: "/dev/vdb", Length: 8, IntegrityTagSize: 32, IntegrityType: "hmac"}, "integrity type"},
		{"integrity size", CryptParams{Cipher: AuthencHMACSHA256XTS, Key: key, Device: "/dev/vdb", Length: 8, IntegrityType: "aead"}, "integrity tag size"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CryptTarget(tc.p)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v, want invalid argument naming %q", err, tc.field)
			}
			if strings.Contains(err.Error(), hexKey[:16]) {
				t.Fatalf("error shows the key: %v", err)
			}
		})
	}
}

func TestIntegrityTarget(t *testing.T) {
	tests := []struct {
		name string
		p    IntegrityParams
		want string
	}{
		{"defaults", IntegrityParams{Device: "/dev/vdb", Length: 1000, TagSize: 48},
			"0 1000 integrity /dev/vdb 0 48 J 0"},
		// The tag store of an authenticated dm-crypt volume with 4096-byte
		// sectors and no journal (an ephemeral volume).
		{"aead 4k direct", IntegrityParams{Device: "254:16", Length: 57344, TagSize: HMACSHA256TagSize + RandomIVSize, Mode: 'D', BlockSize: 4096},
			"0 57344 integrity 254:16 0 48 D 1 block_size:4096"},
		{"offset bitmap", IntegrityParams{Device: "/dev/vdb", Offset: 2048, Length: 8, TagSize: 4, Mode: 'B', BlockSize: 512},
			"0 8 integrity /dev/vdb 2048 4 B 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tgt, err := IntegrityTarget(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if got := tgt.String(); got != tc.want || tgt.Secret {
				t.Fatalf("target %q secret %v, want %q not secret", got, tgt.Secret, tc.want)
			}
		})
	}
	bad := []struct {
		name  string
		p     IntegrityParams
		field string
	}{
		{"device", IntegrityParams{Device: "a b", Length: 8, TagSize: 48}, "device"},
		{"length", IntegrityParams{Device: "/dev/vdb", TagSize: 48}, "length"},
		{"tag size", IntegrityParams{Device: "/dev/vdb", Length: 8}, "tag size"},
		{"mode", IntegrityParams{Device: "/dev/vdb", Length: 8, TagSize: 48, Mode: 'X'}, "mode"},
		{"block size", IntegrityParams{Device: "/dev/vdb", Length: 8, TagSize: 48, BlockSize: 3000}, "block size"},
		{"block multiple", IntegrityParams{Device: "/dev/vdb", Length: 12, TagSize: 48, BlockSize: 4096}, "block size"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := IntegrityTarget(tc.p)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v, want invalid argument naming %q", err, tc.field)
			}
		})
	}
}

func TestIntegrityStatus(t *testing.T) {
	tests := []struct {
		status           string
		mismatches, prov uint64
		ok               bool
	}{
		{"0 59904 -", 0, 59904, true},
		{"3 1024 512", 3, 1024, true},
		{"0", 0, 0, false},
		{"x 10 -", 0, 10, false},
		{"0 ten -", 0, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.status, func(t *testing.T) {
			p, err := IntegrityProvidedSectors(tc.status)
			m, merr := IntegrityMismatches(tc.status)
			if tc.ok {
				if err != nil || merr != nil || p != tc.prov || m != tc.mismatches {
					t.Fatalf("provided %d (%v) mismatches %d (%v); want %d and %d", p, err, m, merr, tc.prov, tc.mismatches)
				}
				return
			}
			if err == nil && merr == nil {
				t.Fatalf("status %q accepted", tc.status)
			}
		})
	}
}

// TestGuestDeviceMapper talks to the real kernel. It runs only inside the
// test VM (as PID 1, or with COVA_DM_GUEST_TEST=1 set by the guest harness);
// hosts have no device-mapper and a shared machine must not be touched. The
// guest needs dm-mod, dm-zero, dm-crypt, ecb and xts loaded and a writable
// TMPDIR.
func TestGuestDeviceMapper(t *testing.T) {
	if os.Getpid() != 1 && os.Getenv("COVA_DM_GUEST_TEST") != "1" {
		t.Skip("real device-mapper only inside the test VM (PID 1 or COVA_DM_GUEST_TEST=1)")
	}
	ctx := context.Background()
	devDir := t.TempDir()
	c := New(slog.New(slog.NewTextHandler(os.Stderr, nil)), WithDevDir(devDir))
	v, err := c.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v[0] != 4 {
		t.Fatalf("kernel dm interface %v", v)
	}
	zero, err := c.CreateDevice(ctx, "cova-test-zero", "COVA-TEST-zero", []Target{{0, 2048, "zero", "", false}}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer c.RemoveDevice(ctx, "cova-test-zero")
	key := make([]byte, 64)
	key[0] = 1
	zinfo, err := c.Info(ctx, "cova-test-zero")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(zero); err != nil {
		t.Fatalf("node %s: %v", zero, err)
	}
	ct, err := CryptTarget(CryptParams{Key: key, Device: fmt.Sprintf("%d:%d", zinfo.Major, zinfo.Minor), Length: 2048, SectorSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	crypt, err := c.CreateDevice(ctx, "cova-test-crypt", "", []Target{ct}, true)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(crypt)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4096)
	_, err = f.ReadAt(b, 0)
	f.Close()
	if err != nil {
		t.Fatalf("reading through dm-crypt: %v", err)
	}
	if bytes.Equal(b, make([]byte, 4096)) {
		t.Fatal("dm-crypt over zeros returned zeros (no decryption?)")
	}
	info, err := c.Info(ctx, "cova-test-crypt")
	if err != nil || !info.ReadOnly || !info.ActiveTable {
		t.Fatalf("info %+v, %v", info, err)
	}
	if _, table, err := c.Table(ctx, "cova-test-crypt"); err != nil || len(table) != 1 || table[0].Type != "crypt" {
		t.Fatalf("table %d lines, %v", len(table), err)
	}
	if err := c.RemoveDevice(ctx, "cova-test-zero"); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Fatalf("removing a device in use: %v, want failed precondition", err)
	}
	if err := c.RemoveDevice(ctx, "cova-test-crypt"); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveDevice(ctx, "cova-test-zero"); err != nil {
		t.Fatal(err)
	}
}

// kernelIntegritySuperblock is the first 32 bytes of a superblock the
// kernel (Debian 6.1) wrote for cryptsetup 2.6.1's luksFormat --integrity
// hmac-sha256 --sector-size 4096 on a 32 MiB disk (16 MiB of LUKS2
// header): version 4, interleave 2^15, tag 32, 1 journal section, 32240
// data sectors, fixed padding, 4096-byte blocks.
var kernelIntegritySuperblock = []byte{
	'i', 'n', 't', 'e', 'g', 'r', 't', 0, 0x04, 0x0f, 0x20, 0x00, 0x01, 0x00, 0x00, 0x00,
	0xf0, 0x7d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x03, 0x0c, 0x00, 0x00,
}

func TestReadIntegritySuperblock(t *testing.T) {
	at := func(b []byte, off int) *bytes.Reader {
		img := make([]byte, off+64)
		copy(img[off:], b)
		return bytes.NewReader(img)
	}
	sb, err := ReadIntegritySuperblock(at(kernelIntegritySuperblock, 4096), 4096)
	if err != nil {
		t.Fatal(err)
	}
	want := IntegritySuperblock{Version: 4, LogInterleaveSectors: 15, TagSize: 32, JournalSections: 1, ProvidedDataSectors: 32240, Flags: IntegrityFlagFixedPadding, LogSectorsPerBlock: 3, LogBlocksPerBitmapBit: 12}
	if sb != want || sb.BlockSize() != 4096 {
		t.Fatalf("got %+v (block %d), want %+v", sb, sb.BlockSize(), want)
	}
	mod := func(i int, v byte) []byte {
		b := append([]byte(nil), kernelIntegritySuperblock...)
		b[i] = v
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		is   func(error) bool
		text string
	}{
		{"no magic", make([]byte, 32), errdefs.IsNotFound, "no dm-integrity superblock"},
		{"version 0", mod(8, 0), errdefs.IsInvalidArgument, "version"},
		{"tag size 0", mod(10, 0), errdefs.IsInvalidArgument, "tag size"},
		{"block 2^4 sectors", mod(28, 4), errdefs.IsInvalidArgument, "sectors per block"},
		{"no data", append(append(append([]byte(nil), kernelIntegritySuperblock[:16]...), make([]byte, 8)...), kernelIntegritySuperblock[24:]...), errdefs.IsInvalidArgument, "provided data sectors"},
		{"data not whole blocks", mod(16, 0xf1), errdefs.IsInvalidArgument, "provided data sectors"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadIntegritySuperblock(at(tc.b, 0), 0)
			if !tc.is(err) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("got %v, want %q", err, tc.text)
			}
		})
	}
	if _, err := ReadIntegritySuperblock(bytes.NewReader(kernelIntegritySuperblock[:20]), 0); err == nil {
		t.Fatal("a short read was accepted")
	}
}
