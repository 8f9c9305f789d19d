package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ent is one tar entry for tests.
type ent struct {
	typ  byte
	name string
	link string
	body []byte
	mode int64
	uid  int
	gid  int
	pax  map[string]string
	dev  [2]int64
}

var epoch = time.Unix(1700000000, 0)

func dir(name string, mode int64) ent { return ent{typ: tar.TypeDir, name: name, mode: mode} }
func file(name string, body string, mode int64) ent {
	return ent{typ: tar.TypeReg, name: name, body: []byte(body), mode: mode}
}
func symlink(target, name string) ent {
	return ent{typ: tar.TypeSymlink, name: name, link: target, mode: 0o777}
}
func hardlink(target, name string) ent {
	return ent{typ: tar.TypeLink, name: name, link: target, mode: 0o644}
}
func whiteout(name string) ent { return file(name, "", 0o644) }

// tarOf builds a PAX tar archive.
func tarOf(t testing.TB, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{
			Typeflag: e.typ, Name: e.name, Linkname: e.link, Mode: e.mode,
			Uid: e.uid, Gid: e.gid, ModTime: epoch, Format: tar.FormatPAX,
			PAXRecords: e.pax, Devmajor: e.dev[0], Devminor: e.dev[1],
		}
		if e.typ == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("tar header %q: %v", e.name, err)
		}
		if len(e.body) > 0 {
			if _, err := tw.Write(e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// sandbox is a temp directory that stands in for the whole host: when the
// test runs as root, unpacks happen on a thread chrooted into it, so even a
// broken unpacker following "/etc" or "../../.." can only reach the
// sandbox's own sentinel files. Layer roots are /layerN inside it.
type sandbox struct {
	dir string // host path
}

func newSandbox(t testing.TB) *sandbox {
	t.Helper()
	s := &sandbox{dir: t.TempDir()}
	// Sentinels that breakouts would aim at.
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(s.dir, "etc"), 0o755))
	must(os.WriteFile(filepath.Join(s.dir, "etc/passwd"), []byte("host passwd\n"), 0o644))
	must(os.WriteFile(filepath.Join(s.dir, "etc/shadow"), []byte("host shadow\n"), 0o400))
	must(os.MkdirAll(filepath.Join(s.dir, "tmp/x"), 0o755))
	must(os.WriteFile(filepath.Join(s.dir, "perm400"), []byte("..."), 0o400))
	must(os.WriteFile(filepath.Join(s.dir, "also-exists-outside-root"), []byte("..."), 0o640))
	must(os.MkdirAll(filepath.Join(s.dir, "bin"), 0o755))
	must(os.WriteFile(filepath.Join(s.dir, "bin/sh"), []byte("host sh"), 0o755))
	return s
}

// layer returns the host path of layer root n, creating it.
func (s *sandbox) layer(t testing.TB, n int) string {
	p := filepath.Join(s.dir, fmt.Sprintf("layer%d", n))
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// unpack extracts archive into layer n from inside the chroot (as root).
func (s *sandbox) unpack(t testing.TB, n int, archive []byte, opts Options) (Stats, error) {
	t.Helper()
	s.layer(t, n)
	type result struct {
		st  Stats
		err error
	}
	ch := make(chan result, 1)
	go func() {
		// This thread is never unlocked, so the runtime discards it (and its
		// private root) when the goroutine ends.
		runtime.LockOSThread()
		root := filepath.Join(s.dir, fmt.Sprintf("layer%d", n))
		if os.Geteuid() == 0 {
			if err := unix.Unshare(unix.CLONE_FS); err != nil {
				ch <- result{err: fmt.Errorf("unshare fs: %w", err)}
				return
			}
			if err := unix.Chroot(s.dir); err != nil {
				ch <- result{err: fmt.Errorf("chroot: %w", err)}
				return
			}
			if err := unix.Chdir("/"); err != nil {
				ch <- result{err: err}
				return
			}
			root = fmt.Sprintf("/layer%d", n)
		}
		st, err := Unpack(context.Background(), bytes.NewReader(archive), root, opts)
		ch <- result{st, err}
	}()
	r := <-ch
	return r.st, r.err
}

// fsEntry is what the snapshot records per path.
type fsEntry struct {
	mode       fs.FileMode
	uid, gid   uint32
	size       int64
	sum        [32]byte
	link       string
	xattrs     string
	ino        uint64
	nlink      uint64
	mtimeNanos int64
}

// snapshot records everything under dir except the layer roots.
func snapshot(t testing.TB, dir string) map[string]fsEntry {
	t.Helper()
	out := map[string]fsEntry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if strings.HasPrefix(rel, "layer") {
			if d.IsDir() {
				return filepath.SkipDir
			}
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := fsEntry{mode: fs.FileMode(st.Mode), uid: st.Uid, gid: st.Gid, size: st.Size, ino: st.Ino, nlink: st.Nlink, mtimeNanos: st.Mtim.Nano()}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			e.sum = sha256.Sum256(b)
		}
		if d.Type()&fs.ModeSymlink != 0 {
			e.link, _ = os.Readlink(p)
		}
		e.xattrs = listXattrs(p)
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func listXattrs(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	names := strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00")
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		v := make([]byte, 64<<10)
		m, _ := unix.Lgetxattr(p, name, v)
		if m < 0 {
			m = 0
		}
		fmt.Fprintf(&b, "%s=%q;", name, v[:m])
	}
	return b.String()
}

// diffSnapshots describes what changed outside the layer roots.
func diffSnapshots(before, after map[string]fsEntry) []string {
	var d []string
	for k, a := range after {
		b, ok := before[k]
		if !ok {
			d = append(d, "created "+k)
			continue
		}
		// The sandbox root and layer parents change mtime when layers are
		// made; compare everything else.
		if k == "." {
			a.mtimeNanos, b.mtimeNanos, a.nlink, b.nlink = 0, 0, 0, 0
		}
		if a != b {
			d = append(d, fmt.Sprintf("changed %s: %+v -> %+v", k, b, a))
		}
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			d = append(d, "removed "+k)
		}
	}
	sort.Strings(d)
	return d
}

// inRoot resolves rel inside root (symlinks clamped to root) and stats it.
func inRoot(root, rel string) (unix.Stat_t, error) {
	var st unix.Stat_t
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return st, err
	}
	defer unix.Close(rfd)
	fd, err := unix.Openat2(rfd, strings.TrimPrefix(rel, "/"), &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT})
	if err != nil {
		return st, err
	}
	defer unix.Close(fd)
	err = unix.Fstat(fd, &st)
	return st, err
}

func sameFile(a, b string) func(root string) error {
	return func(root string) error {
		sa, err := inRoot(root, a)
		if err != nil {
			return fmt.Errorf("%s: %w", a, err)
		}
		sb, err := inRoot(root, b)
		if err != nil {
			return fmt.Errorf("%s: %w", b, err)
		}
		if sa.Ino != sb.Ino || sa.Dev != sb.Dev {
			return fmt.Errorf("%s and %s are different files", a, b)
		}
		return nil
	}
}

func notSameFile(a, b string) func(root string) error {
	return func(root string) error {
		if sameFile(a, b)(root) == nil {
			return fmt.Errorf("%s and %s are the same file", a, b)
		}
		return nil
	}
}

func fileValue(rel, want string) func(root string) error {
	return func(root string) error {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return err
		}
		if string(b) != want {
			return fmt.Errorf("%s = %q, want %q", rel, b, want)
		}
		return nil
	}
}

func isWhiteout(rel string) func(root string) error {
	return func(root string) error {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, rel), &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
			return fmt.Errorf("%s is not a 0/0 whiteout (mode %o rdev %d)", rel, st.Mode, st.Rdev)
		}
		return nil
	}
}

func notExists(rel string) func(root string) error {
	return func(root string) error {
		if _, err := os.Lstat(filepath.Join(root, rel)); !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
			return fmt.Errorf("%s exists (%v)", rel, err)
		}
		return nil
	}
}

func isSymlink(rel, target string) func(root string) error {
	return func(root string) error {
		got, err := os.Readlink(filepath.Join(root, rel))
		if err != nil {
			return err
		}
		if got != target {
			return fmt.Errorf("%s -> %q, want %q", rel, got, target)
		}
		return nil
	}
}

func all(fns ...func(string) error) func(string) error {
	return func(root string) error {
		for _, f := range fns {
			if err := f(root); err != nil {
				return err
			}
		}
		return nil
	}
}

func isRoot() bool { return os.Geteuid() == 0 }

func sprintf(f string, a ...any) string { return fmt.Sprintf(f, a...) }
