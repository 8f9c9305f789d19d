package sysinit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

const fakeRelease = "6.1.0-test"

const fakeModulesDep = `kernel/net/core/failover.ko:
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/overlayfs/overlay.ko.xz:
kernel/drivers/md/dm-mod.ko.zst:
kernel/drivers/md/dm-crypt.ko.zst: kernel/drivers/md/dm-mod.ko.zst
kernel/cyc/cyc_a.ko: kernel/cyc/cyc_b.ko
kernel/cyc/cyc_b.ko: kernel/cyc/cyc_a.ko
kernel/bad/evil.ko: ../../../../etc/evil.ko
kernel/gone/missing_file.ko:
kernel/extra/uses_unlisted.ko: kernel/extra/unlisted.ko
this line has no colon
`

// fakeModuleRoot builds root/lib/modules/<release> with modules.dep,
// modules.builtin and a file for every module but missing_file.
func fakeModuleRoot(t *testing.T, withDep bool) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "lib/modules", fakeRelease)
	files := []string{
		"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
		"kernel/drivers/virtio/virtio_ring.ko", "kernel/drivers/virtio/virtio.ko",
		"kernel/drivers/virtio/virtio_pci_modern_dev.ko", "kernel/drivers/virtio/virtio_pci.ko",
		"kernel/fs/overlayfs/overlay.ko.xz", "kernel/drivers/md/dm-mod.ko.zst", "kernel/drivers/md/dm-crypt.ko.zst",
		"kernel/cyc/cyc_a.ko", "kernel/cyc/cyc_b.ko", "kernel/bad/evil.ko",
		"kernel/extra/uses_unlisted.ko", "kernel/extra/unlisted.ko",
	}
	for _, f := range files {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("not really ELF"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if withDep {
		if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(fakeModulesDep), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/block/loop.ko\nkernel/fs/ext4/ext4.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "opt"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "opt/custom-mod.ko"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return root
}

// fakeFinit records loads as "file|params|flags" and fails per file name.
type fakeFinit struct {
	loads []string
	fail  map[string]func(flags int) error
}

func (f *fakeFinit) finit(file *os.File, params string, flags int) error {
	base := filepath.Base(file.Name())
	if fn := f.fail[base]; fn != nil {
		if err := fn(flags); err != nil {
			return err
		}
	}
	f.loads = append(f.loads, fmt.Sprintf("%s|%s|%d", base, params, flags))
	return nil
}

func TestLoadModules(t *testing.T) {
	tests := []struct {
		name      string
		noDep     bool
		mods      []string // $DIR is the module dir, $ROOT the root
		loaded    []string
		fail      map[string]func(flags int) error
		wantLoads []string
		wantErr   error  // errors.Is target
		wantMsg   string // substring of the error
	}{
		{
			name:      "dependencies first",
			mods:      []string{"virtio_net"},
			wantLoads: []string{"failover.ko||0", "net_failover.ko||0", "virtio_net.ko||0"},
		},
		{
			name:      "params go to the requested module only, dashes match underscores",
			mods:      []string{"virtio-net csum=0 gso=0"},
			wantLoads: []string{"failover.ko||0", "net_failover.ko||0", "virtio_net.ko|csum=0 gso=0|0"},
		},
		{
			name:      "shared dependencies load once",
			mods:      []string{"virtio_net", "net_failover", "failover"},
			wantLoads: []string{"failover.ko||0", "net_failover.ko||0", "virtio_net.ko||0"},
		},
		{
			name:      "transitive order",
			mods:      []string{"virtio_pci"},
			wantLoads: []string{"virtio_ring.ko||0", "virtio.ko||0", "virtio_pci_modern_dev.ko||0", "virtio_pci.ko||0"},
		},
		{
			name:      "already loaded dependencies skipped",
			mods:      []string{"virtio_net"},
			loaded:    []string{"failover", "net_failover"},
			wantLoads: []string{"virtio_net.ko||0"},
		},
		{
			name:   "already loaded module skipped",
			mods:   []string{"virtio_net"},
			loaded: []string{"virtio_net"},
		},
		{
			name: "built in module skipped",
			mods: []string{"loop", "ext4"},
		},
		{
			name:      "absolute path in the tree gets its dependencies",
			mods:      []string{"$DIR/kernel/drivers/net/virtio_net.ko"},
			wantLoads: []string{"failover.ko||0", "net_failover.ko||0", "virtio_net.ko||0"},
		},
		{
			name:      "absolute path outside the tree",
			mods:      []string{"$ROOT/opt/custom-mod.ko debug=1"},
			wantLoads: []string{"custom-mod.ko|debug=1|0"},
		},
		{
			name:      "dependency missing from the index is loaded by path",
			mods:      []string{"uses_unlisted"},
			wantLoads: []string{"unlisted.ko||0", "uses_unlisted.ko||0"},
		},
		{
			name:      "compressed modules use MODULE_INIT_COMPRESSED_FILE",
			mods:      []string{"overlay", "dm_crypt"},
			wantLoads: []string{"overlay.ko.xz||4", "dm-mod.ko.zst||4", "dm-crypt.ko.zst||4"},
		},
		{
			name: "compressed module on a kernel without support",
			mods: []string{"overlay"},
			fail: map[string]func(int) error{"overlay.ko.xz": func(flags int) error {
				if flags&moduleInitCompressedFile != 0 {
					return unix.EINVAL
				}
				return nil
			}},
			wantErr: errdefs.ErrNotImplemented,
			wantMsg: "module overlay: ",
		},
		{
			name:      "EEXIST counts as success",
			mods:      []string{"virtio_net"},
			fail:      map[string]func(int) error{"net_failover.ko": func(int) error { return unix.EEXIST }},
			wantLoads: []string{"failover.ko||0", "virtio_net.ko||0"},
		},
		{
			name:      "load failure names the module and stops",
			mods:      []string{"virtio_net"},
			fail:      map[string]func(int) error{"net_failover.ko": func(int) error { return unix.ENOEXEC }},
			wantLoads: []string{"failover.ko||0"},
			wantErr:   unix.ENOEXEC,
			wantMsg:   "module net_failover: ",
		},
		{
			name:    "unknown module",
			mods:    []string{"no_such_mod"},
			wantErr: errdefs.ErrNotFound,
			wantMsg: "module no_such_mod: ",
		},
		{
			name:    "missing module file",
			mods:    []string{"missing_file"},
			wantErr: errdefs.ErrNotFound,
			wantMsg: "module missing_file: ",
		},
		{
			name:    "dependency cycle",
			mods:    []string{"cyc_a"},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: "cycle",
		},
		{
			name:    "dependency path escapes the tree",
			mods:    []string{"evil"},
			wantErr: errdefs.ErrInvalidArgument,
			wantMsg: "module evil: ",
		},
		{
			name:    "no modules.dep",
			noDep:   true,
			mods:    []string{"virtio_net"},
			wantErr: errdefs.ErrNotFound,
			wantMsg: "module virtio_net: ",
		},
		{
			name:      "no modules.dep, absolute path still loads",
			noDep:     true,
			mods:      []string{"$ROOT/opt/custom-mod.ko"},
			wantLoads: []string{"custom-mod.ko||0"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := fakeModuleRoot(t, !tc.noDep)
			l, err := newModuleLoader(orDiscard(nil), root, fakeRelease)
			if err != nil {
				t.Fatal(err)
			}
			ff := &fakeFinit{fail: tc.fail}
			l.finit = ff.finit
			loaded := map[string]bool{}
			for _, n := range tc.loaded {
				loaded[n] = true
			}
			l.loaded = func(n string) bool { return loaded[n] }
			mods := make([]string, len(tc.mods))
			for i, m := range tc.mods {
				m = strings.ReplaceAll(m, "$DIR", l.dir)
				mods[i] = strings.ReplaceAll(m, "$ROOT", root)
			}
			err = l.load(context.Background(), mods)
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("load: %v", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("load = %v, want an error matching %v", err, tc.wantErr)
			case tc.wantMsg != "" && !strings.Contains(err.Error(), tc.wantMsg):
				t.Fatalf("error %q does not contain %q", err, tc.wantMsg)
			}
			if !reflect.DeepEqual(ff.loads, tc.wantLoads) {
				t.Fatalf("loads = %q, want %q", ff.loads, tc.wantLoads)
			}
		})
	}
}

func TestLoadModulesBadEntries(t *testing.T) {
	tests := []struct {
		name  string
		entry string
	}{
		{"empty", ""},
		{"blank", "   "},
		{"relative path", "../evil"},
		{"unclean path", "/lib/modules/../x.ko"},
		{"not a module file", "/tmp/notamodule.txt"},
		{"bad characters", "bad!name"},
		{"too long", strings.Repeat("a", 56)},
		{"NUL", "virtio_net p=\x00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := fakeModuleRoot(t, true)
			l, err := newModuleLoader(orDiscard(nil), root, fakeRelease)
			if err != nil {
				t.Fatal(err)
			}
			ff := &fakeFinit{}
			l.finit = ff.finit
			l.loaded = func(string) bool { return false }
			err = l.load(context.Background(), []string{"failover", tc.entry})
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "mods[1]") {
				t.Fatalf("load = %v, want ErrInvalidArgument naming mods[1]", err)
			}
			if len(ff.loads) != 0 {
				t.Fatalf("loaded %q before validating every entry", ff.loads)
			}
		})
	}
}

func TestNewModuleLoaderValidates(t *testing.T) {
	tests := []struct {
		name, root, release string
	}{
		{"relative root", "rel", fakeRelease},
		{"empty release", "/", ""},
		{"release with slash", "/", "6.1/../../etc"},
		{"dotdot release", "/", ".."},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := newModuleLoader(orDiscard(nil), tc.root, tc.release); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("newModuleLoader = %v, want ErrInvalidArgument", err)
			}
		})
	}
}

func TestModuleNameFromPath(t *testing.T) {
	tests := []struct {
		path, want string
		ok         bool
	}{
		{"kernel/drivers/net/virtio_net.ko", "virtio_net", true},
		{"kernel/drivers/md/dm-crypt.ko.zst", "dm_crypt", true},
		{"/x/overlay.ko.xz", "overlay", true},
		{"a.ko.gz", "a", true},
		{".ko", "", false},
		{"readme.txt", "", false},
		{"bad name.ko", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			got, ok := moduleNameFromPath(tc.path)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("= (%q, %v), want (%q, %v)", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestLoadModulesGuard(t *testing.T) {
	if IsPID1() {
		t.Skip("running as PID 1")
	}
	tests := []struct {
		name    string
		mods    []string
		wantErr error
	}{
		{"nothing to load", nil, nil},
		{"refused when not PID 1", []string{"virtio_net"}, errdefs.ErrFailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := LoadModules(context.Background(), nil, t.TempDir(), tc.mods)
			if (tc.wantErr == nil) != (err == nil) || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
				t.Fatalf("LoadModules = %v, want %v", err, tc.wantErr)
			}
		})
	}
}
