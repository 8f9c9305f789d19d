package rootfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func inCI() bool { return os.Getenv("CI") == "true" }

func unavailable(t *testing.T, why string) {
	t.Helper()
	if inCI() {
		t.Fatalf("%s (CI=true: .ci/run must install it, see test/vm/deps.sh)", why)
	}
	t.Skip(why)
}

// staticBinary returns a static executable to stand in for the agent.
func staticBinary(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if checkStatic(p) == nil {
			return p
		}
	}
	unavailable(t, "no static busybox to stand in for the agent (apt-get install busybox-static)")
	return ""
}

// newcEntry is one parsed archive entry (a minimal reader for the tests).
type newcEntry struct {
	name                              string
	ino, mode, uid, gid, nlink, mtime uint32
	rmajor, rminor                    uint32
	data                              []byte
}

func parseNewc(t *testing.T, b []byte) []newcEntry {
	t.Helper()
	var out []newcEntry
	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		var f [13]uint32
		for i := range f {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("bad field at %d: %v", off, err)
			}
			f[i] = uint32(v)
		}
		nameEnd := off + 110 + int(f[11])
		name := string(b[off+110 : nameEnd-1])
		dataOff := align(nameEnd)
		e := newcEntry{name: name, ino: f[0], mode: f[1], uid: f[2], gid: f[3], nlink: f[4], mtime: f[5],
			rmajor: f[9], rminor: f[10], data: b[dataOff : dataOff+int(f[6])]}
		off = align(dataOff + int(f[6]))
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return out
		}
		out = append(out, e)
	}
}

// fakeKernel writes a module tree for release 9.9.9-test: c depends on b
// and a (load a, b, c), d is alone, e has a dash in its file name, and
// ext4 is built in.
func fakeKernel(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "lib/modules/9.9.9-test")
	files := map[string]string{
		"kernel/x/a.ko":      "module a",
		"kernel/x/b.ko":      "module b",
		"kernel/y/c.ko":      "module c",
		"kernel/y/d.ko.xz":   "module d",
		"kernel/z/e-dash.ko": "module e",
		"kernel/z/unused.ko": "module unused",
		"modules.dep": "kernel/x/a.ko:\nkernel/x/b.ko: kernel/x/a.ko\nkernel/y/c.ko: kernel/x/b.ko kernel/x/a.ko\n" +
			"kernel/y/d.ko.xz:\nkernel/z/e-dash.ko: kernel/x/a.ko\nkernel/z/unused.ko:\n",
		"modules.alias":   "# Aliases extracted from modules themselves.\nalias pci:v1AF4d* c\nalias fs-foo unused\nalias virtio:d00000003v* e_dash\n",
		"modules.builtin": "kernel/fs/ext4/ext4.ko\n",
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestResolve(t *testing.T) {
	root := fakeKernel(t)
	km, err := OpenKernelModules(root, "")
	if err != nil {
		t.Fatal(err)
	}
	if km.Release != "9.9.9-test" {
		t.Fatalf("release %q", km.Release)
	}
	tests := []struct {
		name        string
		in          []string
		want        []string
		wantBuiltin []string
		wantErr     error
	}{
		{"deps first", []string{"c"}, []string{"a", "b", "c"}, nil, nil},
		{"no repeats", []string{"b", "c", "a"}, []string{"a", "b", "c"}, nil, nil},
		{"compressed", []string{"d"}, []string{"d"}, nil, nil},
		{"dash or underscore", []string{"e-dash", "e_dash"}, []string{"a", "e_dash"}, nil, nil},
		{"built in", []string{"ext4", "d"}, []string{"d"}, []string{"ext4"}, nil},
		{"unknown", []string{"nope"}, nil, nil, errdefs.ErrNotFound},
		{"bad name", []string{"../a"}, nil, nil, errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mods, builtin, err := km.Resolve(tc.in)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, m := range mods {
				names = append(names, m.Name)
			}
			if !slices.Equal(names, tc.want) || !slices.Equal(builtin, tc.wantBuiltin) {
				t.Fatalf("got %v builtin %v, want %v builtin %v", names, builtin, tc.want, tc.wantBuiltin)
			}
		})
	}
}

func TestOpenKernelModules(t *testing.T) {
	root := fakeKernel(t)
	modDir := filepath.Join(root, "lib/modules/9.9.9-test")
	two := fakeKernel(t)
	if err := os.MkdirAll(filepath.Join(two, "lib/modules/other"), 0o755); err != nil {
		t.Fatal(err)
	}
	escape := fakeKernel(t)
	if err := os.WriteFile(filepath.Join(escape, "lib/modules/9.9.9-test/modules.dep"), []byte("../../../etc/x.ko:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, dir, release string
		wantDir            string
		wantErr            error
	}{
		{"package root", root, "", modDir, nil},
		{"module dir", modDir, "", modDir, nil},
		{"named release", two, "9.9.9-test", filepath.Join(two, "lib/modules/9.9.9-test"), nil},
		{"ambiguous", two, "", "", errdefs.ErrInvalidArgument},
		{"missing release", root, "1.0", "", errdefs.ErrNotFound},
		{"release mismatch", modDir, "1.0", "", errdefs.ErrInvalidArgument},
		{"release with slash", root, "../x", "", errdefs.ErrInvalidArgument},
		{"no modules", t.TempDir(), "", "", errdefs.ErrNotFound},
		{"path escapes", escape, "", "", errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			km, err := OpenKernelModules(tc.dir, tc.release)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || km.Dir != tc.wantDir {
				t.Fatalf("dir %v err %v, want %s", km, err, tc.wantDir)
			}
		})
	}
}

// TestResolveMatchesModprobe compares the load order with modprobe's on the
// kernel the VM tests use (test/vm/fetch-kernel.sh).
func TestResolveMatchesModprobe(t *testing.T) {
	modprobe, err := exec.LookPath("modprobe")
	if err != nil {
		unavailable(t, "modprobe is not installed (apt-get install kmod)")
	}
	cache := os.Getenv("COVA_VM_CACHE")
	if cache == "" {
		cache = "/var/cache/cova-vm"
	}
	marks, _ := filepath.Glob(filepath.Join(cache, "*", ".complete"))
	if len(marks) == 0 {
		unavailable(t, "no kernel in "+cache+" (bash test/vm/fetch-kernel.sh)")
	}
	root := filepath.Dir(marks[len(marks)-1])
	release := filepath.Base(root)
	names := []string{"virtio_pci", "virtio_console", "virtio_blk", "vmw_vsock_virtio_transport", "virtio_net"}
	km, err := OpenKernelModules(root, release)
	if err != nil {
		t.Fatal(err)
	}
	mods, _, err := km.Resolve(names)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range mods {
		got = append(got, "/lib/modules/"+release+"/"+m.Path)
	}
	out, err := exec.Command(modprobe, append([]string{"-d", root, "-S", release, "--show-depends", "-a"}, names...)...).Output()
	if err != nil {
		t.Fatalf("modprobe: %v", err)
	}
	var want []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "insmod" {
			p := strings.TrimPrefix(f[1], root)
			if !slices.Contains(want, p) {
				want = append(want, p)
			}
		}
	}
	if len(want) < len(names) {
		t.Fatalf("modprobe printed %d modules for %d names: %s", len(want), len(names), out)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("load order\n got %v\nwant %v (modprobe)", got, want)
	}
}

func TestImageAdd(t *testing.T) {
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, []byte("x"), 0o640); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		add     func(im *Image) error
		wantErr error
	}{
		{"file", func(im *Image) error { return im.AddFile("/a/b", src, 0) }, nil},
		{"dir twice", func(im *Image) error {
			if err := im.AddDir("d", 0o700); err != nil {
				return err
			}
			return im.AddDir("/d/", 0o755)
		}, nil},
		{"file twice", func(im *Image) error {
			if err := im.AddBytes("a", nil, 0o644); err != nil {
				return err
			}
			return im.AddFile("/a", src, 0)
		}, errdefs.ErrAlreadyExists},
		{"over an implicit dir", func(im *Image) error {
			if err := im.AddBytes("a/b", nil, 0o644); err != nil {
				return err
			}
			return im.AddBytes("a", nil, 0o644)
		}, errdefs.ErrAlreadyExists},
		{"under a file", func(im *Image) error {
			if err := im.AddBytes("a", nil, 0o644); err != nil {
				return err
			}
			return im.AddBytes("a/b", nil, 0o644)
		}, errdefs.ErrInvalidArgument},
		{"dotdot", func(im *Image) error { return im.AddBytes("a/../b", nil, 0o644) }, errdefs.ErrInvalidArgument},
		{"root", func(im *Image) error { return im.AddDir("/", 0o755) }, errdefs.ErrInvalidArgument},
		{"empty", func(im *Image) error { return im.AddDir("", 0o755) }, errdefs.ErrInvalidArgument},
		{"NUL", func(im *Image) error { return im.AddDir("a\x00", 0o755) }, errdefs.ErrInvalidArgument},
		{"type bits in perm", func(im *Image) error { return im.AddDir("a", os.ModeDir|0o755) }, errdefs.ErrInvalidArgument},
		{"source is a dir", func(im *Image) error { return im.AddFile("a", t.TempDir(), 0) }, errdefs.ErrInvalidArgument},
		{"empty link", func(im *Image) error { return im.AddSymlink("a", "") }, errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.add(NewImage())
			if tc.wantErr == nil && err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestCheckStatic(t *testing.T) {
	bb := staticBinary(t)
	if err := checkStatic(bb); err != nil {
		t.Fatalf("%s: %v", bb, err)
	}
	text := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/bin/ls", text} {
		if err := checkStatic(p); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want invalid argument", p, err)
		}
	}
}

// buildInputs makes the extra files of an image: a directory tree with a
// symlink and odd modes, owned (when root) by someone else.
func buildInputs(t *testing.T) (string, string) {
	t.Helper()
	tree := t.TempDir()
	for name, perm := range map[string]os.FileMode{"bin/tool": 0o755, "etc/conf": 0o600, "etc/empty": 0o644} {
		p := filepath.Join(tree, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(name+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, perm); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("tool", filepath.Join(tree, "bin/alias")); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Lchown(filepath.Join(tree, "etc/conf"), 1234, 5678); err != nil {
			t.Fatal(err)
		}
	}
	policy := filepath.Join(t.TempDir(), "policy.rego")
	if err := os.WriteFile(policy, []byte("package agent_policy\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return tree, policy
}

func build(t *testing.T, o Options) []byte {
	t.Helper()
	var buf bytes.Buffer
	res, err := Build(context.Background(), &buf, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != int64(buf.Len()) {
		t.Fatalf("Result.Size %d, wrote %d", res.Size, buf.Len())
	}
	return buf.Bytes()
}

func TestBuild(t *testing.T) {
	agent := staticBinary(t)
	tree, policy := buildInputs(t)
	o := Options{
		Agent:     agent,
		KernelDir: fakeKernel(t),
		Modules:   []string{"c", "ext4"},
		Files:     []FileMapping{{Src: tree, Dst: "/opt/extra"}, {Src: policy, Dst: "/etc/cova/policy.rego"}},
	}
	gz := build(t, o)

	t.Run("reproducible", func(t *testing.T) {
		if again := build(t, o); !bytes.Equal(gz, again) {
			t.Fatal("two builds of the same inputs differ")
		}
		o2 := o
		o2.MTime = 1
		if other := build(t, o2); bytes.Equal(gz, other) {
			t.Fatal("a different mtime gave the same bytes")
		}
	})

	t.Run("gzip header", func(t *testing.T) {
		// ID1 ID2 CM FLG MTIME(4) XFL OS: no name, comment or extra field,
		// no time.
		if gz[0] != 0x1f || gz[1] != 0x8b || gz[2] != 8 || gz[3] != 0 || !bytes.Equal(gz[4:8], []byte{0, 0, 0, 0}) {
			t.Fatalf("gzip header % x", gz[:10])
		}
	})

	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	entries := parseNewc(t, raw)
	byName := map[string]newcEntry{}
	var names []string
	for i, e := range entries {
		byName[e.name] = e
		names = append(names, e.name)
		if e.uid != 0 || e.gid != 0 || e.mtime != 0 || e.ino != uint32(i+1) {
			t.Errorf("%s: uid %d gid %d mtime %d ino %d; want 0 0 0 %d", e.name, e.uid, e.gid, e.mtime, e.ino, i+1)
		}
	}

	t.Run("sorted, parents first", func(t *testing.T) {
		if !sort.StringsAreSorted(names) {
			t.Fatalf("names not sorted: %v", names)
		}
		for _, n := range names {
			if d := filepath.Dir(n); d != "." {
				if _, ok := byName[d]; !ok {
					t.Errorf("%s has no parent entry", n)
				}
			}
		}
	})

	t.Run("contents", func(t *testing.T) {
		agentData, err := os.ReadFile(agent)
		if err != nil {
			t.Fatal(err)
		}
		mods := "lib/modules/9.9.9-test/"
		want := map[string]struct {
			mode uint32
			data string
		}{
			"init":                   {0o100755, string(agentData)},
			"dev/console":            {0o020600, ""},
			"dev/null":               {0o020666, ""},
			"tmp":                    {0o041777, ""},
			"proc":                   {0o040555, ""},
			"run":                    {0o040755, ""},
			"sys":                    {0o040555, ""},
			"etc":                    {0o040755, ""},
			"lib/modules":            {0o040755, ""},
			mods + "kernel/x/a.ko":   {0o100644, "module a"},
			mods + "kernel/x/b.ko":   {0o100644, "module b"},
			mods + "kernel/y/c.ko":   {0o100644, "module c"},
			mods + "modules.dep":     {0o100644, "kernel/x/a.ko:\nkernel/x/b.ko: kernel/x/a.ko\nkernel/y/c.ko: kernel/x/b.ko kernel/x/a.ko\n"},
			mods + "modules.alias":   {0o100644, "alias pci:v1AF4d* c\n"},
			mods + "modules.builtin": {0o100644, "kernel/fs/ext4/ext4.ko\n"},
			"opt/extra":              {0o040000 | dirPerm(t, tree), ""},
			"opt/extra/bin/tool":     {0o100755, "bin/tool\n"},
			"opt/extra/bin/alias":    {0o120777, "tool"},
			"opt/extra/etc/conf":     {0o100600, "etc/conf\n"},
			"opt/extra/etc/empty":    {0o100644, "etc/empty\n"},
			"etc/cova/policy.rego":   {0o100644, "package agent_policy\n"},
		}
		for name, w := range want {
			e, ok := byName[name]
			if !ok {
				t.Errorf("%s: missing", name)
				continue
			}
			if e.mode != w.mode || string(e.data) != w.data {
				t.Errorf("%s: mode %#o, %d bytes; want %#o, %d bytes", name, e.mode, len(e.data), w.mode, len(w.data))
			}
		}
		if c := byName["dev/console"]; c.rmajor != 5 || c.rminor != 1 {
			t.Errorf("dev/console is %d:%d, want 5:1", c.rmajor, c.rminor)
		}
		for _, n := range names {
			if strings.Contains(n, "unused") || strings.Contains(n, "d.ko") {
				t.Errorf("%s: module that was not asked for", n)
			}
		}
	})

	t.Run("cpio reads it", func(t *testing.T) {
		bin, err := exec.LookPath("cpio")
		if err != nil {
			unavailable(t, "cpio is not installed (apt-get install cpio)")
		}
		cmd := exec.Command(bin, "-it", "--quiet")
		cmd.Stdin = bytes.NewReader(raw)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Fields(string(out)); !slices.Equal(got, names) {
			t.Fatalf("cpio -it: %v\nwant %v", got, names)
		}
	})

	t.Run("uncompressed", func(t *testing.T) {
		o2 := o
		o2.Compression = CompressNone
		if plain := build(t, o2); !bytes.Equal(plain, raw) {
			t.Fatal("the uncompressed image is not the gzip image's content")
		}
	})
}

func dirPerm(t *testing.T, p string) uint32 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(fi.Mode().Perm())
}

func TestBuildErrors(t *testing.T) {
	agent := staticBinary(t)
	kernel := fakeKernel(t)
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		o       Options
		wantErr error
	}{
		{"no agent", Options{}, errdefs.ErrInvalidArgument},
		{"dynamic agent", Options{Agent: "/bin/ls"}, errdefs.ErrInvalidArgument},
		{"modules without kernel", Options{Agent: agent, Modules: []string{"a"}}, errdefs.ErrInvalidArgument},
		{"unknown module", Options{Agent: agent, KernelDir: kernel, Modules: []string{"zz"}}, errdefs.ErrNotFound},
		{"file over /init", Options{Agent: agent, Files: []FileMapping{{Src: file, Dst: "/init"}}}, errdefs.ErrAlreadyExists},
		{"missing source", Options{Agent: agent, Files: []FileMapping{{Src: file + ".no", Dst: "/x"}}}, os.ErrNotExist},
		{"bad compression", Options{Agent: agent, Compression: "zstd"}, errdefs.ErrInvalidArgument},
		{"mtime too large", Options{Agent: agent, MTime: 1 << 32}, errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(context.Background(), io.Discard, tc.o)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestParsers(t *testing.T) {
	t.Run("file mapping", func(t *testing.T) {
		for in, want := range map[string]*FileMapping{
			"a:/b":   {Src: "a", Dst: "/b"},
			"a:/b:c": {Src: "a", Dst: "/b:c"},
			"a":      nil,
			":b":     nil,
			"a:":     nil,
		} {
			got, err := ParseFileMapping(in)
			if want == nil {
				if !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Errorf("%q: err = %v, want invalid argument", in, err)
				}
				continue
			}
			if err != nil || got != *want {
				t.Errorf("%q: %+v %v, want %+v", in, got, err, *want)
			}
		}
	})
	t.Run("SOURCE_DATE_EPOCH", func(t *testing.T) {
		for in, want := range map[string]int64{"": 0, "0": 0, "1700000000": 1700000000, "4294967295": 4294967295, "-1": -1, "x": -1, "4294967296": -1} {
			got, err := ParseSourceDateEpoch(in)
			if want < 0 {
				if err == nil {
					t.Errorf("%q: no error", in)
				}
				continue
			}
			if err != nil || got != want {
				t.Errorf("%q: %d %v, want %d", in, got, err, want)
			}
		}
	})
	t.Run("compression", func(t *testing.T) {
		for in, want := range map[string]Compression{"": CompressGzip, "gzip": CompressGzip, "none": CompressNone, "xz": ""} {
			got, err := ParseCompression(in)
			if got != want || (want == "") != (err != nil) {
				t.Errorf("%q: %q %v, want %q", in, got, err, want)
			}
		}
	})
}

func TestDigest(t *testing.T) {
	// FIPS 180-2 test vectors for "abc".
	d, err := DigestReader(strings.NewReader("abc"))
	if err != nil {
		t.Fatal(err)
	}
	if d.SHA256 != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" ||
		d.SHA384 != "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7" {
		t.Fatalf("digests of abc: %+v", d)
	}
	p := filepath.Join(t.TempDir(), "abc")
	if err := os.WriteFile(p, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	if f, err := DigestFile(p); err != nil || f != d {
		t.Fatalf("DigestFile: %+v %v", f, err)
	}
	if _, err := DigestFile(p + ".missing"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}
