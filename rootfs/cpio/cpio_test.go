package cpio

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func field(v uint32) string { return fmt.Sprintf("%08x", v) }

// TestGolden checks the exact bytes of a tiny archive against the newc
// layout written out by hand.
func TestGolden(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WriteHeader(&Header{Name: "a", Mode: TypeReg | 0o644, NLink: 1, MTime: 0x10, Size: 3, Ino: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("xyz")); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&Header{Name: "dev/console", Mode: TypeChar | 0o600, NLink: 1, Ino: 2, RDevMajor: 5, RDevMinor: 1}); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&Header{Name: "l", Mode: TypeSymlink | 0o777, NLink: 1, Ino: 3, Linkname: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	hdr := func(ino, mode, nlink, mtime, size, rmaj, rmin uint32, name string) string {
		s := Magic
		for _, v := range []uint32{ino, mode, 0, 0, nlink, mtime, size, 0, 0, rmaj, rmin, uint32(len(name) + 1), 0} {
			s += field(v)
		}
		s += name + "\x00"
		for len(s)%4 != 0 {
			s += "\x00"
		}
		return s
	}
	want := hdr(1, 0o100644, 1, 0x10, 3, 0, 0, "a") + "xyz\x00" +
		hdr(2, 0o020600, 1, 0, 0, 5, 1, "dev/console") +
		hdr(3, 0o120777, 1, 0, 1, 0, 0, "l") + "a\x00\x00\x00" +
		hdr(0, 0, 1, 0, 0, 0, 0, TrailerName)
	if got := buf.String(); got != want {
		t.Fatalf("archive differs:\n got %q\nwant %q", got, want)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", buf.Len())
	}
}

func TestWriterErrors(t *testing.T) {
	reg := func(name string, size int64) *Header {
		return &Header{Name: name, Mode: TypeReg | 0o644, Size: size}
	}
	tests := []struct {
		name string
		run  func(w *Writer) error
		want string
	}{
		{"empty name", func(w *Writer) error { return w.WriteHeader(reg("", 0)) }, "empty name"},
		{"NUL in name", func(w *Writer) error { return w.WriteHeader(reg("a\x00b", 0)) }, "NUL"},
		{"trailer name", func(w *Writer) error { return w.WriteHeader(reg(TrailerName, 0)) }, "reserved"},
		{"long name", func(w *Writer) error { return w.WriteHeader(reg(strings.Repeat("a", MaxNameLen+1), 0)) }, "longer than"},
		{"negative mtime", func(w *Writer) error {
			h := reg("a", 0)
			h.MTime = -1
			return w.WriteHeader(h)
		}, "mtime"},
		{"huge size", func(w *Writer) error { return w.WriteHeader(reg("a", 1<<32)) }, "size"},
		{"empty symlink", func(w *Writer) error { return w.WriteHeader(&Header{Name: "l", Mode: TypeSymlink | 0o777}) }, "symlink target"},
		{"bad type", func(w *Writer) error { return w.WriteHeader(&Header{Name: "x", Mode: 0o644}) }, "unknown file type"},
		{"extra mode bits", func(w *Writer) error { return w.WriteHeader(&Header{Name: "x", Mode: TypeReg | 0o1000000}) }, "unknown mode bits"},
		{"short data", func(w *Writer) error {
			if err := w.WriteHeader(reg("a", 4)); err != nil {
				return err
			}
			if _, err := w.Write([]byte("ab")); err != nil {
				return err
			}
			return w.Close()
		}, "missing 2 bytes"},
		{"long data", func(w *Writer) error {
			if err := w.WriteHeader(reg("a", 1)); err != nil {
				return err
			}
			_, err := w.Write([]byte("ab"))
			return err
		}, ErrWriteTooLong.Error()},
		{"write after close", func(w *Writer) error {
			if err := w.Close(); err != nil {
				return err
			}
			return w.WriteHeader(reg("a", 0))
		}, "after close"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run(NewWriter(&bytes.Buffer{}))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(b []byte) (int, error) {
	if f.after <= 0 {
		return 0, errors.New("disk full")
	}
	f.after--
	return len(b), nil
}

func TestWriterPropagatesErrors(t *testing.T) {
	w := NewWriter(&failWriter{after: 1})
	if err := w.WriteHeader(&Header{Name: "a", Mode: TypeReg | 0o644, Size: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("Write err = %v, want disk full", err)
	}
	if err := w.Close(); err == nil {
		t.Fatal("Close after a failed write succeeded")
	}
}

// sample writes an archive with every entry kind the initrd uses, and
// returns the data of its regular files.
func sample(t *testing.T, withDevice bool) ([]byte, map[string]string) {
	t.Helper()
	files := map[string]string{
		"init":          "#!agent\n",
		"etc/empty":     "",
		"etc/odd-sized": "12345",
		"lib/modules/x": strings.Repeat("m", 4097),
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	ino := uint32(0)
	put := func(h *Header, data string) {
		ino++
		h.Ino, h.MTime = ino, 1700000000
		if h.NLink == 0 {
			h.NLink = 1
		}
		h.Size = int64(len(data))
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if data != "" {
			if _, err := w.Write([]byte(data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	put(&Header{Name: "bin", Mode: TypeDir | 0o755, NLink: 2}, "")
	put(&Header{Name: "bin/sh", Mode: TypeSymlink | 0o777, Linkname: "../init"}, "")
	if withDevice {
		put(&Header{Name: "dev", Mode: TypeDir | 0o755, NLink: 2}, "")
		put(&Header{Name: "dev/console", Mode: TypeChar | 0o600, RDevMajor: 5, RDevMinor: 1}, "")
	}
	put(&Header{Name: "etc", Mode: TypeDir | 0o755, NLink: 2}, "")
	put(&Header{Name: "etc/empty", Mode: TypeReg | 0o600}, files["etc/empty"])
	put(&Header{Name: "etc/odd-sized", Mode: TypeReg | 0o640}, files["etc/odd-sized"])
	put(&Header{Name: "init", Mode: TypeReg | 0o755}, files["init"])
	put(&Header{Name: "lib", Mode: TypeDir | 0o755, NLink: 2}, "")
	put(&Header{Name: "lib/modules", Mode: TypeDir | 0o755, NLink: 2}, "")
	put(&Header{Name: "lib/modules/x", Mode: TypeReg | 0o644}, files["lib/modules/x"])
	put(&Header{Name: "tmp", Mode: TypeDir | 0o1777, NLink: 2}, "")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), files
}

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed but CI=true (test/vm/deps.sh installs cpio and libarchive-tools)", name)
		}
		t.Skipf("%s is not installed (apt-get install cpio libarchive-tools)", name)
	}
	return p
}

// TestRoundTrip lists and extracts the archive with GNU cpio and bsdcpio
// (libarchive), two independent readers of the format.
func TestRoundTrip(t *testing.T) {
	for _, tool := range []string{"cpio", "bsdcpio"} {
		t.Run(tool, func(t *testing.T) {
			bin := needTool(t, tool)
			withDev := os.Geteuid() == 0 // extracting a device node needs root
			arc, files := sample(t, withDev)

			list := exec.Command(bin, "-it", "--quiet")
			list.Stdin = bytes.NewReader(arc)
			out, err := list.CombinedOutput()
			if err != nil {
				t.Fatalf("%s -it: %v: %s", tool, err, out)
			}
			want := []string{"bin", "bin/sh"}
			if withDev {
				want = append(want, "dev", "dev/console")
			}
			want = append(want, "etc", "etc/empty", "etc/odd-sized", "init", "lib", "lib/modules", "lib/modules/x", "tmp")
			if got := strings.Fields(string(out)); strings.Join(got, " ") != strings.Join(want, " ") {
				t.Fatalf("%s -it listed %q, want %q", tool, got, want)
			}

			dir := t.TempDir()
			ext := exec.Command(bin, "-idm", "--quiet", "--no-preserve-owner")
			ext.Dir = dir
			ext.Stdin = bytes.NewReader(arc)
			if out, err := ext.CombinedOutput(); err != nil {
				t.Fatalf("%s -id: %v: %s", tool, err, out)
			}
			for name, data := range files {
				got, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil || string(got) != data {
					t.Errorf("%s: %d bytes, err %v; want %d bytes", name, len(got), err, len(data))
				}
			}
			if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "../init" {
				t.Errorf("bin/sh -> %q (%v), want ../init", l, err)
			}
			for name, perm := range map[string]os.FileMode{"init": 0o755, "etc/odd-sized": 0o640, "etc/empty": 0o600} {
				if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.Mode().Perm() != perm {
					t.Errorf("%s: mode %v (%v), want %v", name, fi.Mode(), err, perm)
				}
			}
			if fi, err := os.Stat(filepath.Join(dir, "init")); err != nil || fi.ModTime().Unix() != 1700000000 {
				t.Errorf("init mtime %v (%v), want 1700000000", fi.ModTime(), err)
			}
			if withDev {
				fi, err := os.Lstat(filepath.Join(dir, "dev/console"))
				if err != nil || fi.Mode().Type() != os.ModeDevice|os.ModeCharDevice {
					t.Errorf("dev/console: %v (%v), want a character device", fi.Mode(), err)
				}
			}
		})
	}
}
