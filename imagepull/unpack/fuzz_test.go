package unpack

import (
	"strings"
	"testing"
)

// FuzzUnpack feeds arbitrary archives to Unpack inside a sandbox and asserts
// that nothing outside the layer root is ever created, changed or removed,
// whatever the outcome.
func FuzzUnpack(f *testing.F) {
	seeds := [][]ent{
		{dir("etc", 0o755), symlink("/etc", "localetc"), file("/localetc/unbroken", "x", 0o644)},
		{symlink("../../etc", "d1"), hardlink("/d1/passwd", "mypasswd")},
		{symlink("/perm400", "/also-exists-outside-root"), hardlink("/also-exists-outside-root", "sketchylink"), file("sketchylink", "w", 0o777)},
		{symlink("/", "d"), whiteout("d/.wh..wh..opq"), whiteout("d/.wh.etc")},
		{symlink("/tmp/x", "x"), dir("x", 0o777), file("x/f", "y", 0o644)},
		{dir("a", 0o755), file("a/b", "1", 0o644), symlink("../..", "a/c"), file("a/c/etc/passwd", "p", 0o644)},
		{hardlink("../../../etc/shadow", "s"), file("s", "z", 0o644)},
		{file(strings.Repeat("x", 200), "", 0o644), ent{typ: 'S', name: "sparse", mode: 0o644}},
	}
	for _, s := range seeds {
		f.Add(tarOf(f, s...))
	}
	rec := paxRecord("path", "../../etc/passwd") + paxRecord("SCHILY.xattr.trusted.overlay.redirect", "/x")
	f.Add(rawArchive(rawHeader("PaxHeaders/f", 'x', int64(len(rec))), []byte(rec), rawHeader("f", '0', 0)))
	opts := Options{MaxBytes: 1 << 20, MaxEntries: 2000, MaxHeaderBytes: 64 << 10}
	f.Fuzz(func(t *testing.T, archive []byte) {
		s := newSandbox(t)
		s.layer(t, 0)
		before := snapshot(t, s.dir)
		o := opts
		if !isRoot() {
			o.OpaqueXattr = OpaqueXattrUser
		}
		_, _ = s.unpack(t, 0, archive, o)
		if d := diffSnapshots(before, snapshot(t, s.dir)); len(d) > 0 {
			t.Fatalf("changed outside the layer root:\n%s", strings.Join(d, "\n"))
		}
	})
}
