package unpack

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

func unpackDir(t *testing.T, archive []byte, opts Options) (string, Stats, error) {
	t.Helper()
	root := t.TempDir()
	if opts.OpaqueXattr == "" && !isRoot() {
		opts.OpaqueXattr = OpaqueXattrUser
	}
	if !isRoot() {
		// Read-only directories from the layer would stop TempDir's cleanup.
		t.Cleanup(func() {
			filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					os.Chmod(p, 0o700)
				}
				return nil
			})
		})
	}
	st, err := Unpack(context.Background(), bytes.NewReader(archive), root, opts)
	return root, st, err
}

func TestUnpackContent(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10) // 1 MiB, several buffers
	sparse := make([]byte, 3<<20)
	copy(sparse[1<<20:], "middle")
	capXattr := string([]byte{1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	archive := tarOf(t,
		dir("./", 0o755),
		dir("etc", 0o755),
		file("etc/hosts", "127.0.0.1 localhost\n", 0o644),
		hardlink("etc/hosts", "etc/hosts.allow"),
		dir("usr/local/lib", 0o755),
		file("usr/local/lib/libnothing.so", "\x00\x00", 0o755),
		symlink("libnothing.so", "usr/local/lib/libnothing.so.2"),
		dir("home/derek", 0o700),
		dir("ro", 0o555),
		file("ro/inside", "x", 0o444),
		dir("sticky", 0o1777),
		file("big", string(big), 0o600),
		file("sparse", string(sparse), 0o644),
		ent{typ: tar.TypeFifo, name: "fifo", mode: 0o640},
		ent{typ: tar.TypeReg, name: "owned", mode: 0o640, uid: 1234, gid: 5678},
		ent{typ: tar.TypeReg, name: "xattrs", mode: 0o644, pax: map[string]string{
			"SCHILY.xattr.user.mime": "text/plain", "SCHILY.xattr.security.capability": capXattr}},
		file("replace", "first", 0o644),
		file("replace", "second", 0o600),
		file("dir2file/x", "gone", 0o644),
		file("dir2file", "now a file", 0o644),
		file("file2dir", "gone", 0o644),
		dir("file2dir", 0o750),
		file("file2dir/y", "kept", 0o644),
		whiteout("etc/.wh.shadow"),
		whiteout("opq/.wh..wh..opq"),
		file("opq/new", "n", 0o644),
		whiteout(".wh..wh.plnk"),
	)
	root, st, err := unpackDir(t, archive, Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkMode := func(rel string, want uint32) {
		t.Helper()
		var s unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, rel), &s); err != nil {
			t.Fatal(err)
		}
		if s.Mode&0o7777 != want {
			t.Errorf("%s: mode %o, want %o", rel, s.Mode&0o7777, want)
		}
		if s.Mtim.Sec != epoch.Unix() && s.Mode&unix.S_IFMT != unix.S_IFLNK {
			t.Errorf("%s: mtime %d, want %d", rel, s.Mtim.Sec, epoch.Unix())
		}
	}
	for rel, mode := range map[string]uint32{
		".": 0o755, "etc": 0o755, "etc/hosts": 0o644, "usr/local/lib/libnothing.so": 0o755,
		"home/derek": 0o700, "ro": 0o555, "ro/inside": 0o444, "sticky": 0o1777, "big": 0o600,
		"fifo": 0o640, "replace": 0o600, "file2dir": 0o750,
	} {
		checkMode(rel, mode)
	}
	for _, c := range []func(string) error{
		fileValue("etc/hosts", "127.0.0.1 localhost\n"),
		sameFile("etc/hosts", "etc/hosts.allow"),
		isSymlink("usr/local/lib/libnothing.so.2", "libnothing.so"),
		fileValue("big", string(big)),
		fileValue("sparse", string(sparse)),
		fileValue("replace", "second"),
		fileValue("dir2file", "now a file"),
		fileValue("file2dir/y", "kept"),
		isWhiteout("etc/shadow"),
		fileValue("opq/new", "n"),
		notExists(".wh..wh.plnk"),
		notExists("etc/.wh.shadow"),
	} {
		if err := c(root); err != nil {
			t.Error(err)
		}
	}
	var s unix.Stat_t
	if err := unix.Stat(filepath.Join(root, "sparse"), &s); err != nil {
		t.Fatal(err)
	}
	if s.Blocks*512 >= int64(len(sparse)) {
		t.Errorf("sparse file uses %d bytes on disk, want holes", s.Blocks*512)
	}
	if err := unix.Stat(filepath.Join(root, "fifo"), &s); err != nil || s.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("fifo: %v mode %o", err, s.Mode)
	}
	opaque := OpaqueXattrTrusted
	if !isRoot() {
		opaque = OpaqueXattrUser
	}
	if got := listXattrs(filepath.Join(root, "opq")); got != fmt.Sprintf("%s=%q;", opaque, "y") {
		t.Errorf("opq xattrs %q", got)
	}
	if got := listXattrs(filepath.Join(root, "xattrs")); got != `user.mime="text/plain";` {
		t.Errorf("xattrs: %q (security.capability must be dropped without AllowSetuid)", got)
	}
	if isRoot() {
		if err := unix.Lstat(filepath.Join(root, "owned"), &s); err != nil || s.Uid != 1234 || s.Gid != 5678 {
			t.Errorf("owned: %v uid %d gid %d", err, s.Uid, s.Gid)
		}
	}
	if st.Files == 0 || st.Whiteouts != 1 || st.Opaques != 1 || st.Hardlinks != 1 || st.Symlinks != 1 || st.Fifos != 1 {
		t.Errorf("stats %+v", st)
	}

	// With AllowSetuid the capability survives.
	if isRoot() {
		root, _, err := unpackDir(t, tarOf(t, ent{typ: tar.TypeReg, name: "ping", mode: 0o755, pax: map[string]string{
			"SCHILY.xattr.security.capability": capXattr}}), Options{AllowSetuid: true})
		if err != nil {
			t.Fatal(err)
		}
		if got := listXattrs(filepath.Join(root, "ping")); !strings.Contains(got, "security.capability") {
			t.Errorf("capability dropped under AllowSetuid: %q", got)
		}
	}
}

// zeroReader yields n bytes of value b.
type zeroReader struct {
	n int64
	b byte
}

func (z *zeroReader) Read(p []byte) (int, error) {
	if z.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > z.n {
		p = p[:z.n]
	}
	for i := range p {
		p[i] = z.b
	}
	z.n -= int64(len(p))
	return len(p), nil
}

// streamTar writes a tar with one huge file without holding it in memory.
func streamTar(name string, size int64) io.Reader { return streamTarOf(name, size, 0) }

// streamTarOf is streamTar with content bytes of value b (non-zero data
// cannot become holes).
func streamTarOf(name string, size int64, b byte) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644}); err != nil {
			pw.CloseWithError(err)
			return
		}
		if _, err := io.Copy(tw, &zeroReader{size, b}); err != nil {
			pw.CloseWithError(err)
			return
		}
		pw.CloseWithError(tw.Close())
	}()
	return pr
}

func TestLimits(t *testing.T) {
	many := func(n int) []ent {
		var es []ent
		for i := 0; i < n; i++ {
			es = append(es, file(fmt.Sprintf("f%d", i), "", 0o644))
		}
		return es
	}
	tests := []struct {
		name string
		r    func(t *testing.T) io.Reader
		opts Options
	}{
		{"entries", func(t *testing.T) io.Reader { return bytes.NewReader(tarOf(t, many(101)...)) }, Options{MaxEntries: 100}},
		{"bytes in one file", func(t *testing.T) io.Reader { return streamTar("bomb", 1<<30) }, Options{MaxBytes: 1 << 20}},
		{"bytes over files", func(t *testing.T) io.Reader {
			return bytes.NewReader(tarOf(t, file("a", strings.Repeat("a", 600), 0o644), file("b", strings.Repeat("b", 600), 0o644)))
		}, Options{MaxBytes: 1000}},
		{"name length", func(t *testing.T) io.Reader {
			return bytes.NewReader(tarOf(t, file(strings.Repeat("n", 200), "", 0o644)))
		}, Options{MaxNameLen: 100}},
		{"symlink target length", func(t *testing.T) io.Reader {
			return bytes.NewReader(tarOf(t, symlink(strings.Repeat("t", 200), "l")))
		}, Options{MaxNameLen: 100}},
		{"PAX header size", func(t *testing.T) io.Reader {
			return bytes.NewReader(tarOf(t, ent{typ: tar.TypeReg, name: "f", mode: 0o644, pax: map[string]string{"comment": strings.Repeat("c", 200<<10)}}))
		}, Options{MaxHeaderBytes: 64 << 10}},
		{"truncated archive", func(t *testing.T) io.Reader {
			b := tarOf(t, file("f", strings.Repeat("x", 4096), 0o644))
			return bytes.NewReader(b[:1024])
		}, Options{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			_, err := Unpack(context.Background(), tc.r(t), root, tc.opts)
			if !errors.Is(err, ErrInvalidArchive) {
				t.Fatalf("got %v, want ErrInvalidArchive", err)
			}
		})
	}
}

// rawHeader builds one ustar header block by hand (for archives Go's
// writer refuses to produce).
func rawHeader(name string, typ byte, size int64) []byte {
	h := make([]byte, 512)
	copy(h[0:100], name)
	copy(h[100:108], "0000644\x00")
	copy(h[108:116], "0000000\x00")
	copy(h[116:124], "0000000\x00")
	copy(h[124:136], fmt.Sprintf("%011o\x00", size))
	copy(h[136:148], fmt.Sprintf("%011o\x00", epoch.Unix()))
	h[156] = typ
	copy(h[257:265], "ustar\x0000")
	copy(h[148:156], "        ")
	var sum int
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	return h
}

func pad(b []byte) []byte {
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

// paxRecord formats one "LEN key=value\n" record.
func paxRecord(k, v string) string {
	body := " " + k + "=" + v + "\n"
	n := len(body)
	for {
		s := fmt.Sprintf("%d%s", n, body)
		if len(s) == n {
			return s
		}
		n = len(s)
	}
}

// rawArchive concatenates blocks and the end-of-archive marker.
func rawArchive(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, pad(p)...)
	}
	return append(b, make([]byte, 1024)...)
}

// TestPAXSizeConflict is the TARmageddon shape: the ustar size says 0, the
// PAX size says N, and the N bytes look like another tar entry. Go's reader
// (like GNU tar) honours PAX, so the hidden entry stays file content.
func TestPAXSizeConflict(t *testing.T) {
	inner := tarOf(t, file("hidden", "surprise", 0o644))
	inner = inner[:len(inner)-1024] // drop the end-of-archive blocks
	rec := paxRecord("size", fmt.Sprint(len(inner)))
	b := rawArchive(rawHeader("PaxHeaders/outer", 'x', int64(len(rec))), []byte(rec), rawHeader("outer", '0', 0), inner)
	root, st, err := unpackDir(t, b, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := notExists("hidden")(root); err != nil {
		t.Fatal(err)
	}
	if err := fileValue("outer", string(inner))(root); err != nil {
		t.Fatal(err)
	}
	if st.Files != 1 {
		t.Fatalf("%d files", st.Files)
	}
}

// TestHugePAX: a multi-megabyte PAX header is refused with a bounded error
// (Go caps special headers at 1 MiB).
func TestHugePAX(t *testing.T) {
	rec := paxRecord("comment", strings.Repeat("c", 3<<20))
	b := rawArchive(rawHeader("PaxHeaders/f", 'x', int64(len(rec))), []byte(rec), rawHeader("f", '0', 0))
	_, _, err := unpackDir(t, b, Options{})
	if !errors.Is(err, ErrInvalidArchive) {
		t.Fatalf("got %v, want ErrInvalidArchive", err)
	}
	// A NUL inside a PAX path is refused by the reader.
	rec = paxRecord("path", "a\x00b")
	b = rawArchive(rawHeader("PaxHeaders/f", 'x', int64(len(rec))), []byte(rec), rawHeader("f", '0', 0))
	if _, _, err := unpackDir(t, b, Options{}); !errors.Is(err, ErrInvalidArchive) {
		t.Fatalf("NUL path: got %v, want ErrInvalidArchive", err)
	}
}

func TestCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Unpack(ctx, bytes.NewReader(tarOf(t, file("a", "x", 0o644))), t.TempDir(), Options{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
}

func TestRootMustExist(t *testing.T) {
	_, err := Unpack(context.Background(), bytes.NewReader(nil), filepath.Join(t.TempDir(), "nope"), Options{})
	if err == nil {
		t.Fatal("no error for a missing root")
	}
	_ = os.Remove
}

// TestNoSpace fills a 1 MiB tmpfs (mounted in a private mount namespace)
// and expects a clean ErrResourceExhausted, the C4 "ENOSPC before OOM" case.
func TestNoSpace(t *testing.T) {
	if !isRoot() {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root to mount a tmpfs")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the namespace dies with the thread
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			ch <- err
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			ch <- err
			return
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
			ch <- err
			return
		}
		_, err := Unpack(context.Background(), streamTarOf("big", 4<<20, 0xaa), dir, Options{})
		ch <- err
	}()
	err := <-ch
	if !errdefs.IsResourceExhausted(err) {
		t.Fatalf("got %v, want ErrResourceExhausted", err)
	}
}
