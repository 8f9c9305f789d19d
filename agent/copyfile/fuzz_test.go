package copyfile

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// FuzzCopy feeds arbitrary requests to a Copier whose root contains symlinks
// pointing out of it, and asserts that nothing outside the root ever changes.
func FuzzCopy(f *testing.F) {
	type seed struct {
		rel                string
		absolute           bool
		mode, dirMode      uint32
		offset, size       int64
		data               []byte
		twoChunks          bool
		secondOff, secondN int64
	}
	seeds := []seed{
		{rel: "a/b", mode: unix.S_IFREG | 0o644, size: 3, data: []byte("abc")},
		{rel: "abs/passwd", mode: unix.S_IFREG | 0o644, size: 5, data: []byte("pwned")},
		{rel: "up/sentinel", mode: unix.S_IFREG | 0o644, size: 5, data: []byte("pwned")},
		{rel: "up/x", mode: unix.S_IFDIR | 0o777},
		{rel: "abs/l", mode: unix.S_IFLNK | 0o777, data: []byte("sentinel")},
		{rel: "d/l", mode: unix.S_IFLNK | 0o777, data: []byte("../../outside")},
		{rel: "d/l", mode: unix.S_IFLNK | 0o777, data: []byte("/etc")},
		{rel: "../outside/sentinel", mode: unix.S_IFREG | 0o644, size: 1, data: []byte("x")},
		{rel: "/etc/passwd", absolute: true, mode: unix.S_IFREG | 0o644, size: 1, data: []byte("x")},
		{rel: "d/f", mode: unix.S_IFREG | 0o644, size: 6, data: []byte("abc"), twoChunks: true, secondOff: 3, secondN: 3},
		{rel: "d/f", mode: unix.S_IFREG | 0o644, size: 10, data: []byte("abc"), twoChunks: true, secondOff: 7, secondN: 3},
		{rel: "up", mode: unix.S_IFDIR | 0o755},
		{rel: "abs", mode: unix.S_IFREG | 0o644, size: 1, data: []byte("x")},
		{rel: "d/\x00x", mode: unix.S_IFREG | 0o644},
		{rel: "d/.f.cova-tmp", mode: unix.S_IFREG | 0o644, offset: 1, size: 2, data: []byte("x")},
	}
	for _, s := range seeds {
		f.Add(s.rel, s.absolute, s.mode, s.dirMode, s.offset, s.size, s.data, s.twoChunks, s.secondOff, s.secondN)
	}
	f.Fuzz(func(t *testing.T, rel string, absolute bool, mode, dirMode uint32, offset, size int64, data []byte, twoChunks bool, secondOff, secondN int64) {
		e := newEnv(t)
		mustSymlink(t, e.outside, e.p("abs"))
		mustSymlink(t, "../outside", e.p("up"))
		mustSymlink(t, "../../outside/sentinel", e.p("d/link"))
		before := snapshot(t, filepath.Dir(e.root), e.root)

		path := rel
		if !absolute {
			path = e.root + "/" + rel
		}
		uid, gid := owner()
		r := Request{Path: path, FileSize: size, FileMode: mode, DirMode: dirMode, UID: uid, GID: gid, Offset: offset, Data: data}
		_ = e.c.Copy(context.Background(), r)
		if twoChunks && secondN >= 0 && secondN <= 1<<16 {
			r.Offset = secondOff
			r.Data = make([]byte, secondN)
			_ = e.c.Copy(context.Background(), r)
		}

		after := snapshot(t, filepath.Dir(e.root), e.root)
		if before != after {
			t.Fatalf("file system outside the root changed:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		e.checkOutside(t)
	})
}

// snapshot describes everything under dir except the subtree skip.
func snapshot(t *testing.T, dir, skip string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == skip {
			return fs.SkipDir
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s %o %d:%d", p, st.Mode, st.Uid, st.Gid)
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			b.WriteString(" -> " + target)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			c, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b.WriteString(" ")
			b.Write(c)
		}
		b.WriteString("\n")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}
