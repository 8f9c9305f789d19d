package copyfile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// env is a root to copy into plus a sibling directory that must never change.
type env struct {
	c        *Copier
	root     string
	outside  string
	sentinel string
}

const sentinelContent = "unbroken"

func newEnv(t *testing.T) *env {
	t.Helper()
	parent := t.TempDir()
	e := &env{
		root:     filepath.Join(parent, "root"),
		outside:  filepath.Join(parent, "outside"),
		sentinel: filepath.Join(parent, "outside", "sentinel"),
	}
	for _, d := range []string{e.root, e.outside} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(e.sentinel, []byte(sentinelContent), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := New(e.root, nil)
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	return e
}

// checkOutside fails if anything outside the root changed.
func (e *env) checkOutside(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(e.outside)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "sentinel" {
		var names []string
		for _, en := range entries {
			names = append(names, en.Name())
		}
		t.Fatalf("outside directory changed: %v", names)
	}
	fi, err := os.Lstat(e.sentinel)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
		t.Fatalf("sentinel mode changed: %v", fi.Mode())
	}
	b, err := os.ReadFile(e.sentinel)
	if err != nil || string(b) != sentinelContent {
		t.Fatalf("sentinel content changed: %q, %v", b, err)
	}
	parentEntries, err := os.ReadDir(filepath.Dir(e.root))
	if err != nil {
		t.Fatal(err)
	}
	if len(parentEntries) != 2 {
		t.Fatalf("entries appeared next to the root: %d", len(parentEntries))
	}
}

func (e *env) p(rel string) string { return filepath.Join(e.root, rel) }

func owner() (int32, int32) { return int32(os.Getuid()), int32(os.Getgid()) }

func fileReq(path string, mode uint32, data []byte) Request {
	uid, gid := owner()
	return Request{Path: path, FileSize: int64(len(data)), FileMode: unix.S_IFREG | mode, DirMode: 0o750, UID: uid, GID: gid, Data: data}
}

func dirReq(path string, mode uint32) Request {
	uid, gid := owner()
	return Request{Path: path, FileMode: unix.S_IFDIR | mode, DirMode: 0o750, UID: uid, GID: gid}
}

func linkReq(path, target string) Request {
	uid, gid := owner()
	return Request{Path: path, FileMode: unix.S_IFLNK | 0o777, DirMode: 0o750, UID: uid, GID: gid, Data: []byte(target)}
}

func TestValidate(t *testing.T) {
	root := "/run/kata-containers/shared/containers"
	c, err := New(root, nil)
	if err != nil {
		t.Fatal(err)
	}
	in := func(rel string) string { return root + "/" + rel }
	big := make([]byte, MaxChunkSize+1)

	tests := []struct {
		name  string
		req   Request
		field string // "" = valid
	}{
		{"regular", fileReq(in("sb-1-hosts"), 0o644, []byte("x")), ""},
		{"empty regular", fileReq(in("sb-1-hosts"), 0o644, nil), ""},
		{"directory", dirReq(in("sb-1-cm"), 0o755), ""},
		{"nested symlink", linkReq(in("sb-1-cm/key"), "..data/key"), ""},
		{"go shim dir_mode carries os.ModeDir", func() Request {
			r := fileReq(in("a/b"), 0o644, nil)
			r.DirMode = 1<<31 | 0o750
			return r
		}(), ""},
		{"runtime-rs symlink size", func() Request {
			r := linkReq(in("a/b"), "c")
			r.FileSize = 1
			return r
		}(), ""},
		{"empty path", fileReq("", 0o644, nil), "path"},
		{"relative path", fileReq("run/kata-containers/shared/containers/x", 0o644, nil), "path"},
		{"absolute path outside root", fileReq("/etc/passwd", 0o644, nil), "path"},
		{"root itself", dirReq(root, 0o755), "path"},
		{"root with slash", dirReq(root+"/", 0o755), "path"},
		{"sibling with root prefix", fileReq(root+"-evil/x", 0o644, nil), "path"},
		{"dotdot escape", fileReq(in("../../../etc/passwd"), 0o644, nil), "path"},
		{"dotdot inside", fileReq(in("a/../b"), 0o644, nil), "path"},
		{"dotdot last", dirReq(in("a/.."), 0o755), "path"},
		{"double slash", fileReq(in("a//b"), 0o644, nil), "path"},
		{"dot component", fileReq(in("a/./b"), 0o644, nil), "path"},
		{"trailing slash", fileReq(in("a/b/"), 0o644, nil), "path"},
		{"nul in path", fileReq(in("a\x00/etc/passwd"), 0o644, nil), "path"},
		{"invalid utf8 path", fileReq(in("a\xff"), 0o644, nil), "path"},
		{"path too long", fileReq(in(strings.Repeat("a/", 2100)+"x"), 0o644, nil), "path"},
		{"component too long", fileReq(in(strings.Repeat("a", 256)), 0o644, nil), "path"},
		{"negative offset", func() Request {
			r := fileReq(in("f"), 0o644, []byte("x"))
			r.Offset = -1
			return r
		}(), "offset"},
		{"offset beyond size", func() Request {
			r := fileReq(in("f"), 0o644, []byte("x"))
			r.Offset = 5
			return r
		}(), "offset"},
		{"chunk past end", func() Request {
			r := fileReq(in("f"), 0o644, []byte("xyz"))
			r.FileSize = 2
			return r
		}(), "offset"},
		{"overflowing offset", func() Request {
			r := fileReq(in("f"), 0o644, []byte("xy"))
			r.Offset = math.MaxInt64 - 1
			r.FileSize = math.MaxInt64
			return r
		}(), "offset"},
		{"negative size", func() Request {
			r := fileReq(in("f"), 0o644, nil)
			r.FileSize = -1
			return r
		}(), "file_size"},
		{"huge chunk", Request{Path: in("f"), FileMode: unix.S_IFREG | 0o644, FileSize: int64(len(big)), Data: big}, "data"},
		{"no type bits", Request{Path: in("f"), FileMode: 0o644}, "file_mode"},
		{"socket", Request{Path: in("f"), FileMode: unix.S_IFSOCK | 0o644}, "file_mode"},
		{"block device", Request{Path: in("f"), FileMode: unix.S_IFBLK | 0o644}, "file_mode"},
		{"fifo", Request{Path: in("f"), FileMode: unix.S_IFIFO | 0o644}, "file_mode"},
		{"unknown mode bits", Request{Path: in("f"), FileMode: 1<<20 | unix.S_IFREG}, "file_mode"},
		{"negative uid", func() Request {
			r := fileReq(in("f"), 0o644, nil)
			r.UID = -1
			return r
		}(), "uid"},
		{"negative gid", func() Request {
			r := fileReq(in("f"), 0o644, nil)
			r.GID = -5
			return r
		}(), "gid"},
		{"directory with data", func() Request {
			r := dirReq(in("d"), 0o755)
			r.Data = []byte("x")
			return r
		}(), "data"},
		{"directory with offset", func() Request {
			r := dirReq(in("d"), 0o755)
			r.Offset = 1
			return r
		}(), "offset"},
		{"top-level symlink", linkReq(in("link"), "target"), "path"},
		{"absolute symlink target", linkReq(in("a/link"), "/etc/passwd"), "data"},
		{"up and out symlink target", linkReq(in("a/link"), "../../etc"), "data"},
		{"dotdot symlink target", linkReq(in("a/link"), ".."), "data"},
		{"dotdot cancelling symlink target", linkReq(in("a/link"), "b/../c"), "data"},
		{"empty symlink target", linkReq(in("a/link"), ""), "data"},
		{"nul symlink target", linkReq(in("a/link"), "a\x00b"), "data"},
		{"invalid utf8 symlink target", linkReq(in("a/link"), "\xff\xfe"), "data"},
		{"symlink with offset", func() Request {
			r := linkReq(in("a/link"), "b")
			r.Offset = 1
			return r
		}(), "offset"},
		{"symlink with odd size", func() Request {
			r := linkReq(in("a/link"), "b")
			r.FileSize = 7
			return r
		}(), "file_size"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := c.Validate(tc.req)
			if tc.field == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Validate = %v, want invalid argument", err)
			}
			if !strings.HasPrefix(err.Error(), tc.field+":") {
				t.Fatalf("error %q does not name field %q", err, tc.field)
			}
			// Copy refuses the same request before touching anything.
			if err := c.Copy(context.Background(), tc.req); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Copy = %v, want invalid argument", err)
			}
		})
	}
}

func TestNewRejectsBadRoot(t *testing.T) {
	for _, root := range []string{"", "/", "relative", "/a/../b", "/a/"} {
		t.Run(root, func(t *testing.T) {
			if _, err := New(root, nil); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("New(%q) = %v, want invalid argument", root, err)
			}
		})
	}
}

// TestAttacks plants hostile file system state inside the root and checks
// that no request writes outside it.
func TestAttacks(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		setup   func(t *testing.T, e *env)
		req     func(e *env) Request
		wantErr bool
		check   func(t *testing.T, e *env)
	}{
		{
			name: "symlinked parent to an absolute outside dir",
			setup: func(t *testing.T, e *env) {
				mustSymlink(t, e.outside, e.p("evil"))
				// The same path exists inside the root.
				mustMkdir(t, filepath.Join(e.root, e.outside))
			},
			req: func(e *env) Request { return fileReq(e.p("evil/passwd"), 0o644, []byte("pwned")) },
			check: func(t *testing.T, e *env) {
				// Scoped resolution: the link's target is taken relative to
				// the root, so the file lands inside it.
				if _, err := os.Stat(filepath.Join(e.root, e.outside, "passwd")); err != nil {
					t.Fatalf("file not created inside the root: %v", err)
				}
			},
		},
		{
			name: "symlinked parent to an absolute outside dir, dangling inside",
			setup: func(t *testing.T, e *env) {
				mustSymlink(t, e.outside, e.p("evil"))
			},
			req:     func(e *env) Request { return fileReq(e.p("evil/passwd"), 0o644, []byte("pwned")) },
			wantErr: true,
		},
		{
			name: "symlinked parent named like /etc",
			setup: func(t *testing.T, e *env) {
				mustSymlink(t, "/etc", e.p("etc"))
			},
			req: func(e *env) Request { return fileReq(e.p("etc/cova-copyfile-test"), 0o644, []byte("pwned")) },
			check: func(t *testing.T, e *env) {
				if _, err := os.Lstat("/etc/cova-copyfile-test"); err == nil {
					t.Fatal("file written to the host's /etc")
				}
			},
			wantErr: true,
		},
		{
			name: "symlinked parent climbing out",
			setup: func(t *testing.T, e *env) {
				mustSymlink(t, "../outside", e.p("up"))
			},
			req:     func(e *env) Request { return fileReq(e.p("up/sentinel"), 0o644, []byte("pwned")) },
			wantErr: true,
		},
		{
			name: "deep symlink chain climbing out",
			setup: func(t *testing.T, e *env) {
				mustMkdir(t, e.p("a/b"))
				mustSymlink(t, "../../../outside", e.p("a/b/c"))
			},
			req:     func(e *env) Request { return dirReq(e.p("a/b/c/newdir"), 0o777) },
			wantErr: true,
		},
		{
			name: "final component is a symlink to an outside file",
			setup: func(t *testing.T, e *env) {
				mustMkdir(t, e.p("d"))
				mustSymlink(t, e.sentinel, e.p("d/f"))
			},
			req: func(e *env) Request { return fileReq(e.p("d/f"), 0o666, []byte("pwned")) },
			check: func(t *testing.T, e *env) {
				fi, err := os.Lstat(e.p("d/f"))
				if err != nil || !fi.Mode().IsRegular() {
					t.Fatalf("link not replaced by a regular file: %v, %v", fi, err)
				}
			},
		},
		{
			name: "directory request over a symlink to an outside dir",
			setup: func(t *testing.T, e *env) {
				mustMkdir(t, e.p("d"))
				mustSymlink(t, e.outside, e.p("d/x"))
			},
			req: func(e *env) Request { return dirReq(e.p("d/x"), 0o777) },
			check: func(t *testing.T, e *env) {
				fi, err := os.Lstat(e.p("d/x"))
				if err != nil || !fi.IsDir() {
					t.Fatalf("link not replaced by a directory: %v, %v", fi, err)
				}
			},
		},
		{
			name: "planted temporary file symlink, first chunk",
			setup: func(t *testing.T, e *env) {
				mustMkdir(t, e.p("d"))
				mustSymlink(t, e.sentinel, e.p("d/.f.cova-tmp"))
			},
			req: func(e *env) Request { return fileReq(e.p("d/f"), 0o644, []byte("pwned")) },
		},
		{
			name: "planted temporary file symlink, later chunk",
			setup: func(t *testing.T, e *env) {
				mustMkdir(t, e.p("d"))
				mustSymlink(t, e.sentinel, e.p("d/.f.cova-tmp"))
			},
			req: func(e *env) Request {
				r := fileReq(e.p("d/f"), 0o644, []byte("pwned"))
				r.FileSize = 10
				r.Offset = 5
				return r
			},
			wantErr: true,
		},
		{
			name: "planted temporary file hardlink, later chunk",
			setup: func(t *testing.T, e *env) {
				mustMkdir(t, e.p("d"))
				if err := os.WriteFile(e.p("d/victim"), []byte("12345"), 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.Link(e.p("d/victim"), e.p("d/.f.cova-tmp")); err != nil {
					t.Fatal(err)
				}
			},
			req: func(e *env) Request {
				r := fileReq(e.p("d/f"), 0o644, []byte("pwned"))
				r.FileSize = 10
				r.Offset = 5
				return r
			},
			wantErr: true,
			check: func(t *testing.T, e *env) {
				if b, _ := os.ReadFile(e.p("d/victim")); string(b) != "12345" {
					t.Fatalf("hardlinked file changed: %q", b)
				}
			},
		},
		{
			name: "symlink request through a symlinked parent",
			setup: func(t *testing.T, e *env) {
				mustSymlink(t, e.outside, e.p("evil"))
			},
			req:     func(e *env) Request { return linkReq(e.p("evil/l"), "x") },
			wantErr: true,
		},
		{
			name: "file over a directory replaces it",
			setup: func(t *testing.T, e *env) {
				mustMkdir(t, e.p("d/sub"))
				mustSymlink(t, e.outside, e.p("d/sub/link"))
			},
			req: func(e *env) Request { return fileReq(e.p("d/sub"), 0o644, []byte("file")) },
			check: func(t *testing.T, e *env) {
				if b, err := os.ReadFile(e.p("d/sub")); err != nil || string(b) != "file" {
					t.Fatalf("directory not replaced: %q, %v", b, err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			tc.setup(t, e)
			err := e.c.Copy(ctx, tc.req(e))
			if tc.wantErr && err == nil {
				t.Fatal("Copy succeeded, want error")
			}
			if !tc.wantErr && err != nil {
				t.Fatalf("Copy: %v", err)
			}
			e.checkOutside(t)
			if tc.check != nil {
				tc.check(t, e)
			}
		})
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestMultiChunk(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	uid, gid := owner()
	if os.Geteuid() == 0 {
		uid, gid = 1234, 5678
	}
	content := make([]byte, 2*MaxChunkSize+12345)
	for i := range content {
		content[i] = byte(i * 7)
	}
	target := e.p("sb-1-secret/token")
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}

	const chunk = 1 << 20 // what the Go shim sends
	for off := 0; off < len(content); off += chunk {
		end := min(off+chunk, len(content))
		r := Request{
			Path: target, FileSize: int64(len(content)), FileMode: unix.S_IFREG | 0o640,
			DirMode: 0o750, UID: uid, GID: gid, Offset: int64(off), Data: content[off:end],
		}
		if err := e.c.Copy(ctx, r); err != nil {
			t.Fatalf("chunk at %d: %v", off, err)
		}
		if end < len(content) {
			// The partial transfer is invisible: the old file is intact.
			if b, err := os.ReadFile(target); err != nil || string(b) != "old" {
				t.Fatalf("target changed before the last chunk: %d bytes, %v", len(b), err)
			}
		}
	}
	got, err := os.ReadFile(target)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, content) {
		t.Fatalf("assembled file differs (%d bytes, want %d)", len(got), len(content))
	}
	var st unix.Stat_t
	if err := unix.Lstat(target, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o640 {
		t.Errorf("mode = %#o, want 0640", st.Mode&0o7777)
	}
	if int32(st.Uid) != uid || int32(st.Gid) != gid {
		t.Errorf("owner = %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
	}
	if _, err := os.Lstat(e.p("sb-1-secret/.token.cova-tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left behind: %v", err)
	}
	e.checkOutside(t)
}

func TestChunkOrder(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		first *Request
		next  Request
		want  error
	}{
		{
			name: "later chunk without a first one",
			next: Request{FileSize: 10, Offset: 5, Data: []byte("12345")},
			want: errdefs.ErrFailedPrecondition,
		},
		{
			name:  "gap after the first chunk",
			first: &Request{FileSize: 10, Data: []byte("12")},
			next:  Request{FileSize: 10, Offset: 5, Data: []byte("12345")},
			want:  errdefs.ErrInvalidArgument,
		},
		{
			name:  "file_size shrinks on the last chunk",
			first: &Request{FileSize: 10, Data: []byte("1234567")},
			next:  Request{FileSize: 5, Offset: 2, Data: []byte("345")},
			want:  errdefs.ErrInvalidArgument,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			fill := func(r Request) Request {
				r.Path = e.p("d/f")
				r.FileMode = unix.S_IFREG | 0o644
				r.DirMode = 0o755
				r.UID, r.GID = owner()
				return r
			}
			if tc.first != nil {
				if err := e.c.Copy(ctx, fill(*tc.first)); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.c.Copy(ctx, fill(tc.next)); !errors.Is(err, tc.want) {
				t.Fatalf("Copy = %v, want %v", err, tc.want)
			}
			if _, err := os.Lstat(e.p("d/f")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("target exists after a failed transfer: %v", err)
			}
		})
	}
}

func TestModes(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	uid, gid := owner()
	if os.Geteuid() == 0 {
		uid, gid = 1000, 2000
	}
	tests := []struct {
		name     string
		req      Request
		wantMode uint32
	}{
		{"directory with setgid", Request{Path: e.p("d1"), FileMode: unix.S_IFDIR | 0o2775}, unix.S_IFDIR | 0o2775},
		{"directory 0700", Request{Path: e.p("d1/d2"), FileMode: unix.S_IFDIR | 0o700}, unix.S_IFDIR | 0o700},
		{"sticky directory", Request{Path: e.p("d1/tmp"), FileMode: unix.S_IFDIR | 0o1777}, unix.S_IFDIR | 0o1777},
		{"setuid file loses setuid", Request{Path: e.p("d1/bin"), FileMode: unix.S_IFREG | 0o4755, FileSize: 1, Data: []byte("x")}, unix.S_IFREG | 0o755},
		{"setgid file loses setgid", Request{Path: e.p("d1/bin2"), FileMode: unix.S_IFREG | 0o2755, FileSize: 1, Data: []byte("x")}, unix.S_IFREG | 0o755},
		{"empty file", Request{Path: e.p("d1/empty"), FileMode: unix.S_IFREG | 0o400}, unix.S_IFREG | 0o400},
		{"implicit parents", Request{Path: e.p("x/y/z"), FileMode: unix.S_IFREG | 0o644, DirMode: 1<<31 | 0o750}, unix.S_IFREG | 0o644},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.req.UID, tc.req.GID = uid, gid
			if err := e.c.Copy(ctx, tc.req); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Lstat(tc.req.Path, &st); err != nil {
				t.Fatal(err)
			}
			if st.Mode != tc.wantMode {
				t.Errorf("mode = %#o, want %#o", st.Mode, tc.wantMode)
			}
			if int32(st.Uid) != uid || int32(st.Gid) != gid {
				t.Errorf("owner = %d:%d, want %d:%d", st.Uid, st.Gid, uid, gid)
			}
		})
	}
	// Implicit parents were created with dir_mode (minus the umask) and the
	// immediate parent was chowned; the root itself never is.
	var st unix.Stat_t
	if err := unix.Lstat(e.p("x/y"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7000 != 0 || st.Mode&0o700 != 0o700 || st.Mode&0o007 != 0 {
		t.Errorf("implicit parent mode = %#o, want 0750 minus umask", st.Mode&0o7777)
	}
	if int32(st.Uid) != uid {
		t.Errorf("immediate parent owner = %d, want %d", st.Uid, uid)
	}
	if err := unix.Lstat(e.root, &st); err != nil {
		t.Fatal(err)
	}
	if int(st.Uid) != os.Getuid() {
		t.Errorf("root was chowned to %d", st.Uid)
	}
	// A directory request keeps the content of an existing directory.
	if err := e.c.Copy(ctx, Request{Path: e.p("d1"), FileMode: unix.S_IFDIR | 0o755, UID: uid, GID: gid}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(e.p("d1/bin")); err != nil {
		t.Errorf("directory content lost: %v", err)
	}
}

// TestConfigMapLayout replays how the runtime copies a Kubernetes ConfigMap
// volume (atomic-writer layout) and then updates it.
func TestConfigMapLayout(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	vol := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef-0123456789abcdef-config"
	steps := []Request{
		dirReq(e.p(vol), 0o777),
		dirReq(e.p(vol+"/..2024_01_01_00_00_00.1"), 0o755),
		fileReq(e.p(vol+"/..2024_01_01_00_00_00.1/key"), 0o644, []byte("v1")),
		fileReq(e.p(vol+"/..2024_01_01_00_00_00.1/nested/deep"), 0o644, []byte("deep")),
		linkReq(e.p(vol+"/..data"), "..2024_01_01_00_00_00.1"),
		linkReq(e.p(vol+"/key"), "..data/key"),
		linkReq(e.p(vol+"/nested"), "..data/nested"),
	}
	for i, r := range steps {
		if err := e.c.Copy(ctx, r); err != nil {
			t.Fatalf("step %d (%s): %v", i, r.Path, err)
		}
	}
	read := func(rel string) string {
		t.Helper()
		b, err := os.ReadFile(e.p(vol + "/" + rel))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read("key"); got != "v1" {
		t.Fatalf("key = %q, want v1", got)
	}
	if got := read("nested/deep"); got != "deep" {
		t.Fatalf("nested/deep = %q", got)
	}
	// Update: a new timestamped dir, then the ..data swap.
	for i, r := range []Request{
		fileReq(e.p(vol+"/..2024_01_02_00_00_00.2/key"), 0o644, []byte("v2")),
		linkReq(e.p(vol+"/..data"), "..2024_01_02_00_00_00.2"),
	} {
		if err := e.c.Copy(ctx, r); err != nil {
			t.Fatalf("update step %d: %v", i, err)
		}
	}
	if got := read("key"); got != "v2" {
		t.Fatalf("key after update = %q, want v2", got)
	}
	if target, err := os.Readlink(e.p(vol + "/..data")); err != nil || target != "..2024_01_02_00_00_00.2" {
		t.Fatalf("..data -> %q, %v", target, err)
	}
	e.checkOutside(t)
}

func TestLongName(t *testing.T) {
	e := newEnv(t)
	name := strings.Repeat("k", 253) // longest Kubernetes key
	r := fileReq(e.p("d/"+name), 0o644, []byte("ab"))
	r.Data = []byte("a")
	r.FileSize = 2
	if err := e.c.Copy(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	r.Offset, r.Data = 1, []byte("b")
	if err := e.c.Copy(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(e.p("d/" + name)); err != nil || string(b) != "ab" {
		t.Fatalf("got %q, %v", b, err)
	}
	if tn := tempName(name); len(tn) > 255 || tn == tempName(name[:252]+"j") {
		t.Fatalf("bad temporary name %q", tn)
	}
}

func TestDescribe(t *testing.T) {
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{
			name: "regular",
			req:  Request{Path: "/p/f", FileSize: 3, FileMode: unix.S_IFREG | 0o644, DirMode: 0o750, UID: 1, GID: 2, Offset: 0, Data: []byte("abc")},
			want: `{"path":"/p/f","file_type":"Regular","symlink_target":null,"file_size":3,"file_mode":33188,"dir_mode":488,"uid":1,"gid":2,"offset":0}`,
		},
		{
			name: "directory",
			req:  Request{Path: "/p/d", FileMode: unix.S_IFDIR | 0o755},
			want: `{"path":"/p/d","file_type":"Directory","symlink_target":null,"file_size":0,"file_mode":16877,"dir_mode":0,"uid":0,"gid":0,"offset":0}`,
		},
		{
			name: "symlink",
			req:  Request{Path: "/p/a/l", FileMode: unix.S_IFLNK | 0o777, Data: []byte("..data/foo")},
			want: `{"path":"/p/a/l","file_type":"Symlink","symlink_target":"..data/foo","file_size":0,"file_mode":41471,"dir_mode":0,"uid":0,"gid":0,"offset":0}`,
		},
		{
			name: "socket is unknown",
			req:  Request{Path: "/p/s", FileMode: unix.S_IFSOCK},
			want: `{"path":"/p/s","file_type":"Unknown","symlink_target":null,"file_size":0,"file_mode":49152,"dir_mode":0,"uid":0,"gid":0,"offset":0}`,
		},
		{
			name: "mixed type bits are unknown",
			req:  Request{Path: "/p/m", FileMode: unix.S_IFDIR | unix.S_IFREG},
			want: `{"path":"/p/m","file_type":"Unknown","symlink_target":null,"file_size":0,"file_mode":49152,"dir_mode":0,"uid":0,"gid":0,"offset":0}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(Describe(tc.req))
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != tc.want {
				t.Fatalf("got  %s\nwant %s", b, tc.want)
			}
		})
	}
}

func TestCopyHonoursContext(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.c.Copy(ctx, fileReq(e.p("d/f"), 0o644, nil)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Copy = %v, want context.Canceled", err)
	}
	if _, err := os.Lstat(e.p("d")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("cancelled request touched the file system: %v", err)
	}
}
