package unpack

import (
	"archive/tar"
	"errors"
	"strings"
	"testing"
)

// breakoutCase is one hostile layer. Every case must leave the sandbox
// outside the layer roots unchanged; it may fail (wantErr) or succeed, and
// then check must hold inside the (last) layer root.
type breakoutCase struct {
	name string
	// layers are unpacked in order into /layer0, /layer1, ...
	layers  [][]ent
	wantErr bool
	check   func(root string) error
	opts    Options
}

func runBreakouts(t *testing.T, cases []breakoutCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			for i := range tc.layers {
				s.layer(t, i)
			}
			before := snapshot(t, s.dir)
			var err error
			for i, l := range tc.layers {
				opts := tc.opts
				if opts.OpaqueXattr == "" && !isRoot() {
					opts.OpaqueXattr = OpaqueXattrUser
				}
				if _, err = s.unpack(t, i, tarOf(t, l...), opts); err != nil {
					break
				}
			}
			if d := diffSnapshots(before, snapshot(t, s.dir)); len(d) > 0 {
				t.Fatalf("changed outside the layer roots:\n%s", strings.Join(d, "\n"))
			}
			if tc.wantErr {
				if err == nil {
					t.Fatal("unpack succeeded, want an error")
				}
				if !errors.Is(err, ErrInvalidArchive) {
					t.Logf("error is not ErrInvalidArchive: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("unpack: %v", err)
			}
			if tc.check != nil {
				if err := tc.check(s.layer(t, len(tc.layers)-1)); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func one(es ...ent) [][]ent { return [][]ent{es} }

// TestBreakouts ports the cases of containerd's pkg/archive TestBreakouts
// (rewritten; each "apply" pre-state is prepended to the same layer, and
// validators express our overlay-form results).
func TestBreakouts(t *testing.T) {
	const unbroken = "unbroken"
	unbrokenCheck := fileValue("etc/unbroken", unbroken)
	runBreakouts(t, []breakoutCase{
		{name: "SymlinkAbsolute", layers: one(
			dir("etc", 0o755), symlink("/etc", "localetc"), file("/localetc/unbroken", unbroken, 0o644)),
			check: unbrokenCheck},
		{name: "SymlinkUpAndOut", layers: one(
			dir("etc", 0o755), dir("dummy", 0o755), symlink("/dummy/../etc", "localetc"), file("/localetc/unbroken", unbroken, 0o644)),
			check: unbrokenCheck},
		{name: "SymlinkMultipleAbsolute", layers: one(
			dir("etc", 0o755), dir("dummy", 0o755), symlink("/etc", "/dummy/etc"), symlink("/dummy/etc", "localetc"),
			file("/dummy/etc/unbroken", unbroken, 0o644)),
			check: unbrokenCheck},
		{name: "SymlinkMultipleRelative", layers: one(
			dir("etc", 0o755), dir("dummy", 0o755), symlink("/etc", "/dummy/etc"), symlink("./dummy/etc", "localetc"),
			file("/dummy/etc/unbroken", unbroken, 0o644)),
			check: unbrokenCheck},
		{name: "SymlinkEmptyFile", layers: one(
			dir("etc", 0o755), file("etc/emptied", "notempty", 0o644), symlink("/etc", "localetc"), file("/localetc/emptied", "", 0o644)),
			check: fileValue("etc/emptied", "")},
		{name: "HardlinkRelative", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), dir("breakouts", 0o755),
			symlink("../../etc", "breakouts/d1"), hardlink("/breakouts/d1/passwd", "breakouts/mypasswd")),
			check: sameFile("/breakouts/mypasswd", "/etc/passwd")},
		{name: "HardlinkDownAndOut", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), dir("breakouts", 0o755), dir("downandout", 0o755),
			symlink("../downandout/../../etc", "breakouts/d1"), hardlink("/breakouts/d1/passwd", "breakouts/mypasswd")),
			check: sameFile("/breakouts/mypasswd", "/etc/passwd")},
		{name: "HardlinkAbsolute", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), symlink("/etc", "localetc"), hardlink("/localetc/passwd", "localpasswd")),
			check: sameFile("localpasswd", "/etc/passwd")},
		{name: "HardlinkRelativeLong", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), symlink("../../../../../../../etc", "localetc"),
			hardlink("/localetc/passwd", "localpasswd")),
			check: sameFile("localpasswd", "/etc/passwd")},
		// The kernel resolves "upandout/.." only if upandout exists: with it
		// the link lands on /etc/passwd, without it the link is refused
		// (containerd cleans the target lexically).
		{name: "HardlinkRelativeUpAndOut", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), dir("upandout", 0o755), symlink("upandout/../../../etc", "localetc"),
			hardlink("/localetc/passwd", "localpasswd")),
			check: sameFile("localpasswd", "/etc/passwd")},
		{name: "HardlinkRelativeUpAndOutDangling", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), symlink("upandout/../../../etc", "localetc"),
			hardlink("/localetc/passwd", "localpasswd")),
			wantErr: true},
		{name: "HardlinkDirectRelative", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), hardlink("../../../../../etc/passwd", "localpasswd")),
			check: sameFile("localpasswd", "/etc/passwd")},
		{name: "HardlinkDirectAbsolute", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), hardlink("/etc/passwd", "localpasswd")),
			check: sameFile("localpasswd", "/etc/passwd")},
		// A symlink that names the root itself is refused (containerd skips it).
		{name: "SymlinkParentDirectory", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), symlink("/etc/", ".."), hardlink("/etc/passwd", "localpasswd")),
			wantErr: true},
		{name: "SymlinkEmptyFilename", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), symlink("/etc/", ""), hardlink("/etc/passwd", "localpasswd")),
			wantErr: true},
		{name: "SymlinkParentRelative", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), symlink("/etc/", "localetc/sub/.."),
			hardlink("/etc/passwd", "/localetc/localpasswd")),
			check: sameFile("/localetc/localpasswd", "/etc/passwd")},
		{name: "SymlinkSlashEnded", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), dir("localetc/", 0o770), hardlink("/etc/passwd", "/localetc/localpasswd")),
			check: sameFile("/localetc/localpasswd", "/etc/passwd")},
		{name: "SymlinkOverrideDirectory", layers: one(
			dir("/etc/", 0o755), file("/etc/passwd", "inside", 0o644), dir("/localetc/", 0o755),
			symlink("/etc", "localetc"), hardlink("/etc/passwd", "/localetc/localpasswd")),
			check: sameFile("/localetc/localpasswd", "/etc/passwd")},
		{name: "SymlinkOverrideDirectoryRelative", layers: one(
			dir("/etc/", 0o755), file("/etc/passwd", "inside", 0o644), dir("/localetc/", 0o755),
			symlink("../../etc", "localetc"), hardlink("/etc/passwd", "/localetc/localpasswd")),
			check: sameFile("/localetc/localpasswd", "/etc/passwd")},
		{name: "DirectoryOverrideSymlink", layers: one(
			dir("/etc/", 0o755), file("/etc/passwd", "inside", 0o644), symlink("/etc", "localetc"),
			dir("/localetc/", 0o755), hardlink("/etc/passwd", "/localetc/localpasswd")),
			check: all(sameFile("/localetc/localpasswd", "/etc/passwd"), func(root string) error {
				return notExists("etc/localpasswd")(root)
			})},
		{name: "DirectoryOverrideSymlinkAndHardlink", layers: one(
			dir("/etc/", 0o755), file("/etc/passwd", "inside", 0o644), symlink("etc", "localetc"),
			hardlink("/etc/passwd", "/localetc/localpasswd"),
			dir("/localetc/", 0o755), file("/localetc/localpasswd", "different", 0o644)),
			check: all(notSameFile("/localetc/localpasswd", "/etc/passwd"), fileValue("etc/passwd", "inside"))},
		{name: "WhiteoutRootParent", layers: one(dir("/etc/", 0o755), file("/etc/passwd", "inside", 0o644), whiteout(".wh...")), wantErr: true},
		{name: "WhiteoutParent", layers: one(dir("/etc/", 0o755), file("/etc/passwd", "inside", 0o644), whiteout("etc/.wh...")), wantErr: true},
		{name: "WhiteoutRoot", layers: one(dir("/etc/", 0o755), file("/etc/passwd", "inside", 0o644), whiteout(".wh..")), wantErr: true},
		{name: "WhiteoutCurrentDirectory", layers: one(dir("/etc/", 0o755), file("/etc/passwd", "inside", 0o644), whiteout("etc/.wh..")), wantErr: true},
		{name: "WhiteoutSymlink", layers: one(
			dir("/etc/", 0o755), file("/etc/passwd", "all users", 0o644), symlink("/etc", "localetc"), whiteout(".wh.localetc")),
			check: all(fileValue("etc/passwd", "all users"), isWhiteout("localetc"))},
		{name: "WhiteoutSymlinkPath", layers: one(
			dir("/etc/", 0o755), file("/etc/passwd", "all users", 0o644), file("/etc/whitedout", "ahhhh whiteout", 0o644),
			symlink("/etc", "localetc"), whiteout("localetc/.wh.whitedout")),
			check: all(fileValue("etc/passwd", "all users"), isWhiteout("etc/whitedout"))},
		{name: "WhiteoutDirectoryName", layers: one(
			dir("/etc/", 0o755), file("/etc/passwd", "all users", 0o644), symlink("/etc", "localetc"),
			file(".wh.etc/somefile", "non-empty", 0o644)),
			check: all(fileValue("etc/passwd", "all users"), fileValue(".wh.etc/somefile", "non-empty"))},
		// A parent through a dangling symlink is refused (containerd: no-op).
		{name: "WhiteoutDeadSymlinkParent", layers: one(
			dir("/etc/", 0o755), file("/etc/passwd", "all users", 0o644), symlink("/dne", "localetc"), whiteout("localetc/.wh.etc")),
			wantErr: true},
		{name: "WhiteoutRelativePath", layers: one(
			dir("/etc/", 0o755), file("/etc/passwd", "all users", 0o644), symlink("/dne", "localetc"), whiteout("dne/../.wh.etc")),
			check: all(notExists("etc/passwd"), isWhiteout("etc"))},
		{name: "HardlinkSymlinkBeforeCreateTarget", layers: one(
			dir("etc", 0o770), symlink("/etc/passwd", "localpasswd"), hardlink("localpasswd", "localpasswd-dup"), file("/etc/passwd", "after", 0o644)),
			check: all(sameFile("localpasswd-dup", "/etc/passwd"), isSymlink("localpasswd-dup", "/etc/passwd"))},
		{name: "HardlinkSymlinkRelative", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), symlink("../../../../../etc/passwd", "passwdlink"), hardlink("/passwdlink", "localpasswd")),
			check: all(isSymlink("localpasswd", "../../../../../etc/passwd"), sameFile("/localpasswd", "/etc/passwd"))},
		{name: "HardlinkSymlinkAbsolute", layers: one(
			dir("etc", 0o770), file("/etc/passwd", "inside", 0o644), symlink("/etc/passwd", "passwdlink"), hardlink("/passwdlink", "localpasswd")),
			check: all(isSymlink("localpasswd", "/etc/passwd"), sameFile("/localpasswd", "/etc/passwd"))},
		// containerd CVE-2021-32760: the outside /perm400 must keep mode 0400
		// (the sandbox snapshot checks it).
		{name: "HardlinkSymlinkChmod", layers: one(
			symlink("/perm400", "/also-exists-outside-root"), hardlink("/also-exists-outside-root", "sketchylink"))},
	})
}

// TestAttackCatalog covers the image-unpack attacks of the threat catalog
// (B5.2) that TestBreakouts does not.
func TestAttackCatalog(t *testing.T) {
	xattrs := func(kv ...string) map[string]string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m["SCHILY.xattr."+kv[i]] = kv[i+1]
		}
		return m
	}
	withPax := func(e ent, pax map[string]string) ent { e.pax = pax; return e }
	runBreakouts(t, []breakoutCase{
		{name: "DotDotNamesAreClamped", layers: one(file("../../../../etc/passwd", "pwned", 0o644), file("a/../../../tmp/x/f", "x", 0o644)),
			check: all(fileValue("etc/passwd", "pwned"), fileValue("tmp/x/f", "x"))},
		{name: "AbsoluteNames", layers: one(file("/etc/shadow", "layer", 0o600), dir("/tmp", 0o1777)),
			check: fileValue("etc/shadow", "layer")},
		{name: "LongName4KiB", layers: one(file(strings.Repeat("a/", 2049)+"f", "x", 0o644)), wantErr: true},
		{name: "LongComponent", layers: one(file(strings.Repeat("a", 256), "x", 0o644)), wantErr: true},
		{name: "NonUTF8Name", layers: one(file("\xff\xfe\x80name", "x", 0o644)), check: fileValue("\xff\xfe\x80name", "x")},
		// umoci CVE-2021-29136: "." as a symlink, then a later layer.
		{name: "DotSymlinkThenLayer", layers: [][]ent{{symlink("/tmp/x", ".")}, {file("etc/passwd", "l2", 0o644)}}, wantErr: true},
		{name: "SlashSymlink", layers: one(symlink("/tmp/x", "/")), wantErr: true},
		{name: "SymlinkInLowerLayerIsNotFollowed", layers: [][]ent{{symlink("/tmp/x", "x")}, {file("x/passwd", "l2", 0o644)}},
			check: fileValue("x/passwd", "l2")},
		// image-rs GHSA-84rc-2q4r-45pc: absolute hardlink names and targets.
		{name: "HardlinkAbsoluteName", layers: one(dir("bin", 0o755), file("bin/sh", "layer sh", 0o755), hardlink("bin/sh", "/etc/evil")),
			check: sameFile("etc/evil", "bin/sh")},
		{name: "HardlinkTargetOutside", layers: one(hardlink("/etc/passwd", "mine")), wantErr: true},
		{name: "HardlinkTargetDotDot", layers: one(hardlink("../../../../bin/sh", "mine")), wantErr: true},
		{name: "HardlinkToDirectory", layers: one(dir("d", 0o755), hardlink("d", "e")), wantErr: true},
		{name: "HardlinkToRoot", layers: one(hardlink("/", "e")), wantErr: true},
		// CVE-2021-32760 variants: re-typing a symlink must not touch its target.
		{name: "FileOverSymlinkToOutside", layers: one(symlink("/etc/shadow", "s"), file("s", "new", 0o777)),
			check: fileValue("s", "new")},
		{name: "DirOverSymlinkToOutsideDir", layers: one(symlink("/tmp/x", "d"), dir("d", 0o777), file("d/f", "in", 0o644)),
			check: fileValue("d/f", "in")},
		{name: "OwnershipOfSymlinkNotFollowed", layers: one(ent{typ: tar.TypeSymlink, name: "s", link: "/etc/shadow", uid: 1234, gid: 1234, mode: 0o777})},
		// opaque whiteout under a symlinked directory (image-rs, May 2026).
		{name: "OpaqueUnderSymlinkToRoot", layers: one(symlink("/", "d"), whiteout("d/.wh..wh..opq"))},
		{name: "OpaqueUnderSymlinkUp", layers: one(symlink("../../..", "d"), whiteout("d/.wh..wh..opq"))},
		{name: "WhiteoutUnderSymlinkToOutside", layers: one(dir("etc", 0o755), symlink("/etc", "e"), whiteout("e/.wh.passwd")),
			check: isWhiteout("etc/passwd")},
		{name: "FileUnderDanglingSymlink", layers: one(symlink("/etc", "e"), file("e/passwd", "x", 0o644)), wantErr: true},
		{name: "FileUnderSymlinkLoop", layers: one(symlink("b", "a"), symlink("a", "b"), file("a/f", "x", 0o644)), wantErr: true},
		{name: "WhiteoutDotDotName", layers: one(whiteout("a/../../.wh.etc")), check: isWhiteout("etc")},
		// Overlay xattr injection: only user.* survives.
		{name: "OverlayXattrsDropped", layers: one(withPax(dir("d", 0o755), xattrs(
			"trusted.overlay.redirect", "/etc", "trusted.overlay.metacopy", "", "trusted.overlay.opaque", "y",
			"security.selinux", "system_u:object_r:etc_t:s0", "user.ok", "1", "user.overlay.opaque", "y",
			"user.overlay.redirect", "/etc", "trusted.overlay.whiteout", "y", "system.posix_acl_access", "x"))),
			check: func(root string) error {
				got := listXattrs(root + "/d")
				if isRoot() && got != `user.ok="1";` {
					return errorf("xattrs %q, want only user.ok", got)
				}
				return nil
			}},
		// Device nodes are never created.
		{name: "DeviceNodes", layers: one(
			ent{typ: tar.TypeBlock, name: "dev/sda", mode: 0o666, dev: [2]int64{8, 0}},
			ent{typ: tar.TypeChar, name: "dev/mem", mode: 0o666, dev: [2]int64{1, 1}},
			ent{typ: tar.TypeChar, name: "dev/wh", mode: 0o666}),
			check: all(notExists("dev/sda"), notExists("dev/mem"), notExists("dev/wh"))},
		{name: "SetuidStripped", layers: one(file("bin/su", "x", 0o4755), file("bin/sg", "x", 0o2755)),
			check: func(root string) error {
				for _, f := range []string{"bin/su", "bin/sg"} {
					st, err := inRoot(root, f)
					if err != nil {
						return err
					}
					if st.Mode&0o7777 != 0o755 {
						return errorf("%s mode %o, want 755", f, st.Mode&0o7777)
					}
				}
				return nil
			}},
		{name: "SetuidKeptUnderFlag", opts: Options{AllowSetuid: true}, layers: one(file("bin/su", "x", 0o4755)),
			check: func(root string) error {
				st, err := inRoot(root, "bin/su")
				if err != nil {
					return err
				}
				if st.Mode&0o7777 != 0o4755 {
					return errorf("mode %o, want 4755", st.Mode&0o7777)
				}
				return nil
			}},
		{name: "FileUnderFile", layers: one(file("a", "x", 0o644), file("a/b", "y", 0o644)), wantErr: true},
		{name: "UnsupportedType", layers: one(ent{typ: 'Z', name: "z", mode: 0o644}), wantErr: true},
		{name: "NegativeIDs", layers: one(ent{typ: tar.TypeReg, name: "f", mode: 0o644, uid: 1<<32 - 1}), wantErr: true},
	})
}

func errorf(format string, args ...any) error { return &strErr{format, args} }

type strErr struct {
	f string
	a []any
}

func (e *strErr) Error() string { return sprintf(e.f, e.a...) }
