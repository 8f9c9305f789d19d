package verity

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

const (
	testSaltHex = "0011223344556677889900112233445566778899001122334455667788990011"
	testUUID    = "12345678-1234-4234-9234-123456789abc"
)

func testSalt(t *testing.T) []byte {
	t.Helper()
	s, err := hex.DecodeString(testSaltHex)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// writeData writes blocks*BlockSize bytes: zeros, or pseudo-random bytes
// from seed.
func writeData(t *testing.T, path string, blocks int, seed uint64) {
	t.Helper()
	buf := make([]byte, blocks*BlockSize)
	if seed != 0 {
		r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		for i := 0; i+8 <= len(buf); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
		}
	}
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

func sha256File(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestLayout(t *testing.T) {
	tests := []struct {
		blocks uint64
		want   []level // level 0 first
		total  uint64
	}{
		{1, []level{}, 0},
		{2, []level{{0, 1}}, 1},
		{128, []level{{0, 1}}, 1},
		{129, []level{{1, 2}, {0, 1}}, 3},
		{16384, []level{{1, 128}, {0, 1}}, 129},
		{16385, []level{{3, 129}, {1, 2}, {0, 1}}, 132},
		{2097152, []level{{129, 16384}, {1, 128}, {0, 1}}, 16513},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.blocks), func(t *testing.T) {
			got, total, err := layout(tc.blocks)
			if err != nil {
				t.Fatal(err)
			}
			if total != tc.total || len(got) != len(tc.want) {
				t.Fatalf("layout(%d) = %v total %d, want %v total %d", tc.blocks, got, total, tc.want, tc.total)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("level %d = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
	t.Run("zero blocks", func(t *testing.T) {
		if _, _, err := layout(0); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("layout(0) error = %v, want invalid argument", err)
		}
	})
}

// TestGolden pins root hashes and hash-file digests that veritysetup 2.6.1
// produced for all-zero data, so the format is checked even where
// veritysetup is not installed.
func TestGolden(t *testing.T) {
	tests := []struct {
		blocks         int
		root, hashFile string
	}{
		{1, "750e1155ed5baf7bcf900263aff67faa7f94a114dbedd7fe26a01f3107166238", "670e36acf745ed74890f3451a678564982c3cb04d29b23cfacad74b1e4704455"},
		{2, "ddcfc2847beb4bd369d9eff0cd484ed1368f07f3e58f6922b7e27abc5704a231", "a8fbda4d8ee1f18a45cebbd764d0cfb90dd848e8a420b23c9ec5d01f2827a4d1"},
		{129, "30effdca381c52f654222b3a222631bf8d25abb9fe0f47170f6149dcccbf7640", "7dc2c3552b8ed3b7e0067295a10f70d89840864ad0d4030d5da2882297810fa0"},
		{16385, "4cf12921f4dbbe57823ac994a30f65144c85e9692b421c337415625d273a0d15", "b81cf729adf8c935d7ff9c8dfe543f003986a658ada3af89bcf405bc64652549"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%d blocks", tc.blocks), func(t *testing.T) {
			dir := t.TempDir()
			data, hash := filepath.Join(dir, "data"), filepath.Join(dir, "hash")
			writeData(t, data, tc.blocks, 0)
			p, err := Format(data, hash, Options{Salt: testSalt(t), UUID: testUUID})
			if err != nil {
				t.Fatal(err)
			}
			if p.RootHashHex() != tc.root {
				t.Errorf("root hash %s, want %s", p.RootHashHex(), tc.root)
			}
			if got := sha256File(t, hash); got != tc.hashFile {
				t.Errorf("hash file sha256 %s, want %s", got, tc.hashFile)
			}
		})
	}
}

func TestOneBlockRootIsSaltedBlockHash(t *testing.T) {
	dir := t.TempDir()
	data, hash := filepath.Join(dir, "data"), filepath.Join(dir, "hash")
	writeData(t, data, 1, 7)
	p, err := Format(data, hash, Options{Salt: []byte("pepper"), UUID: testUUID})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(data)
	want := sha256.Sum256(append([]byte("pepper"), raw...))
	if !bytes.Equal(p.RootHash, want[:]) {
		t.Fatalf("root %x, want sha256(salt||block) %x", p.RootHash, want)
	}
	if p.HashBlocks != 0 || p.HashEnd() != BlockSize {
		t.Fatalf("hash blocks %d end %d, want 0 and %d", p.HashBlocks, p.HashEnd(), BlockSize)
	}
}

func TestSuperblockLayout(t *testing.T) {
	p := Params{DataBlocks: 0x0102030405, Superblock: true, Salt: []byte{0xaa, 0xbb, 0xcc}, UUID: testUUID}
	sb, err := p.marshalSuperblock()
	if err != nil {
		t.Fatal(err)
	}
	if len(sb) != SuperblockSize {
		t.Fatalf("superblock is %d bytes", len(sb))
	}
	checks := []struct {
		name string
		off  int
		want []byte
	}{
		{"signature", 0, []byte("verity\x00\x00")},
		{"version", 8, []byte{1, 0, 0, 0}},
		{"hash type", 12, []byte{1, 0, 0, 0}},
		{"uuid", 16, []byte{0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x42, 0x34, 0x92, 0x34, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc}},
		{"algorithm", 32, append([]byte("sha256"), make([]byte, 26)...)},
		{"data block size", 64, []byte{0, 0x10, 0, 0}},
		{"hash block size", 68, []byte{0, 0x10, 0, 0}},
		{"data blocks", 72, []byte{5, 4, 3, 2, 1, 0, 0, 0}},
		{"salt size", 80, []byte{3, 0}},
		{"pad1", 82, make([]byte, 6)},
		{"salt", 88, append([]byte{0xaa, 0xbb, 0xcc}, make([]byte, 253)...)},
		{"pad2", 344, make([]byte, 168)},
	}
	for _, c := range checks {
		t.Run(c.name, func(t *testing.T) {
			if got := sb[c.off : c.off+len(c.want)]; !bytes.Equal(got, c.want) {
				t.Fatalf("bytes at %d = %x, want %x", c.off, got, c.want)
			}
		})
	}
	back, err := parseSuperblock(sb, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if back.DataBlocks != p.DataBlocks || !bytes.Equal(back.Salt, p.Salt) || back.UUID != testUUID || back.HashOffset != 4096 || !back.Superblock {
		t.Fatalf("parsed %+v, want fields of %+v", back, p)
	}
	t.Run("rejects", func(t *testing.T) {
		for name, mutate := range map[string]func([]byte){
			"signature": func(b []byte) { b[0] = 'V' },
			"version":   func(b []byte) { b[8] = 2 },
			"hash type": func(b []byte) { b[12] = 0 },
			"algorithm": func(b []byte) { copy(b[32:], "sha512") },
			"block":     func(b []byte) { b[65] = 0x02 },
			"salt size": func(b []byte) { b[81] = 0x02 },
		} {
			bad := append([]byte(nil), sb...)
			mutate(bad)
			if _, err := parseSuperblock(bad, 0); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("%s: error = %v, want invalid argument", name, err)
			}
		}
	})
}

func TestTable(t *testing.T) {
	p := Params{DataBlocks: 129, Superblock: true, Salt: testSalt(t), RootHash: bytes.Repeat([]byte{0xab}, 32), HashBlocks: 3}
	root := strings.Repeat("ab", 32)
	if got, want := p.Table("/dev/vda", "/dev/vdb"), "0 1032 verity 1 /dev/vda /dev/vdb 4096 4096 129 1 sha256 "+root+" "+testSaltHex; got != want {
		t.Errorf("Table = %q\nwant    %q", got, want)
	}
	if got, want := p.TableParams("254:1", "254:2", "panic_on_corruption"), "1 254:1 254:2 4096 4096 129 1 sha256 "+root+" "+testSaltHex+" 1 panic_on_corruption"; got != want {
		t.Errorf("TableParams = %q\nwant          %q", got, want)
	}
	appended := p
	appended.HashOffset = 129 * BlockSize
	appended.Salt = nil
	if got, want := appended.TableParams("/dev/vda", "/dev/vda"), "1 /dev/vda /dev/vda 4096 4096 129 130 sha256 "+root+" -"; got != want {
		t.Errorf("appended TableParams = %q\nwant                   %q", got, want)
	}
	noSB := p
	noSB.Superblock = false
	noSB.HashOffset = 8192
	if got := noSB.HashStartBlock(); got != 2 {
		t.Errorf("HashStartBlock without superblock = %d, want 2", got)
	}
	odd := p
	odd.HashOffset = 512
	if got := odd.HashStartBlock(); got != 1 {
		t.Errorf("HashStartBlock at 512 = %d, want 1", got)
	}
	got, err := p.DMModCreate("vroot", "", "/dev/vda", "/dev/vdb")
	if err != nil {
		t.Fatal(err)
	}
	if want := `dm-mod.create="vroot,,,ro,0 1032 verity 1 /dev/vda /dev/vdb 4096 4096 129 1 sha256 ` + root + " " + testSaltHex + `"`; got != want {
		t.Errorf("DMModCreate = %q\nwant          %q", got, want)
	}
	for _, bad := range [][]string{{"a,b", "/dev/vda"}, {"vroot", "/dev/vda;x"}, {"", "/dev/vda"}, {"vroot", "/dev/v da"}} {
		if _, err := p.DMModCreate(bad[0], "", bad[1], "/dev/vdb"); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("DMModCreate(%q, %q) error = %v, want invalid argument", bad[0], bad[1], err)
		}
	}
}

func TestFormatErrors(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	writeData(t, data, 2, 1)
	odd := filepath.Join(dir, "odd")
	if err := os.WriteFile(odd, make([]byte, BlockSize+100), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		data  string
		hash  string
		opts  Options
		field string
	}{
		{"odd size", odd, filepath.Join(dir, "h1"), Options{}, "size"},
		{"too many blocks", data, filepath.Join(dir, "h2"), Options{DataBlocks: 3}, "data blocks"},
		{"bad uuid", data, filepath.Join(dir, "h3"), Options{UUID: "nope"}, "uuid"},
		{"salt too long", data, filepath.Join(dir, "h4"), Options{Salt: make([]byte, 257)}, "salt"},
		{"salt and no salt", data, filepath.Join(dir, "h5"), Options{Salt: []byte{1}, NoSalt: true}, "salt"},
		{"unaligned offset", data, filepath.Join(dir, "h6"), Options{HashOffset: 100}, "hash offset"},
		{"offset without superblock", data, filepath.Join(dir, "h7"), Options{HashOffset: 512, NoSuperblock: true}, "hash offset"},
		{"uuid without superblock", data, filepath.Join(dir, "h8"), Options{UUID: testUUID, NoSuperblock: true}, "uuid"},
		{"overlap", data, data, Options{HashOffset: 4096}, "hash offset"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Format(tc.data, tc.hash, tc.opts)
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error = %v, want invalid argument naming %q", err, tc.field)
			}
		})
	}
	t.Run("odd size with explicit blocks", func(t *testing.T) {
		if _, err := Format(odd, filepath.Join(dir, "h9"), Options{DataBlocks: 1}); err != nil {
			t.Fatalf("explicit DataBlocks over a longer file: %v", err)
		}
	})
}

func TestRandomSaltAndUUID(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	writeData(t, data, 3, 3)
	p1, err := Format(data, filepath.Join(dir, "h1"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	p2, err := Format(data, filepath.Join(dir, "h2"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p1.Salt) != DefaultSaltSize || bytes.Equal(p1.Salt, p2.Salt) || p1.UUID == p2.UUID || bytes.Equal(p1.RootHash, p2.RootHash) {
		t.Fatalf("two default formats share salt/uuid/root: %+v %+v", p1, p2)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(p1.UUID) {
		t.Fatalf("uuid %q is not a version 4 UUID", p1.UUID)
	}
	sb, err := ReadSuperblock(filepath.Join(dir, "h1"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if sb.UUID != p1.UUID || !bytes.Equal(sb.Salt, p1.Salt) || sb.DataBlocks != 3 || sb.HashBlocks != 1 {
		t.Fatalf("superblock %+v does not match %+v", sb, p1)
	}
}

func TestVerify(t *testing.T) {
	for _, blocks := range []int{1, 2, 129, 300} {
		t.Run(fmt.Sprintf("%d blocks", blocks), func(t *testing.T) {
			dir := t.TempDir()
			data, hash := filepath.Join(dir, "data"), filepath.Join(dir, "hash")
			writeData(t, data, blocks, uint64(blocks))
			p, err := Format(data, hash, Options{Salt: testSalt(t), UUID: testUUID})
			if err != nil {
				t.Fatal(err)
			}
			if err := Verify(data, hash, p); err != nil {
				t.Fatalf("fresh tree: %v", err)
			}
			fromSB, err := ReadSuperblock(hash, 0)
			if err != nil {
				t.Fatal(err)
			}
			fromSB.RootHash = p.RootHash
			if err := Verify(data, hash, fromSB); err != nil {
				t.Fatalf("params from the superblock: %v", err)
			}

			flip := func(t *testing.T, path string, off int64) {
				t.Helper()
				f, err := os.OpenFile(path, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				b := []byte{0}
				if _, err := f.ReadAt(b, off); err != nil {
					t.Fatal(err)
				}
				b[0] ^= 0x01
				if _, err := f.WriteAt(b, off); err != nil {
					t.Fatal(err)
				}
			}
			expectCorrupt := func(t *testing.T, what string) {
				t.Helper()
				err := Verify(data, hash, p)
				if !errors.Is(err, ErrCorrupt) || !errors.Is(err, errdefs.ErrDataLoss) || !strings.Contains(err.Error(), what) {
					t.Fatalf("error = %v, want corruption naming %q", err, what)
				}
			}
			lastData := int64(blocks*BlockSize) - 1
			flip(t, data, lastData)
			if blocks == 1 {
				expectCorrupt(t, "root hash")
			} else {
				expectCorrupt(t, "level 0")
			}
			flip(t, data, lastData)
			if blocks > 1 {
				// the first hash of the top level (right after the superblock)
				flip(t, hash, BlockSize+5)
				lv, _, _ := layout(uint64(blocks))
				expectCorrupt(t, fmt.Sprintf("level %d", len(lv)-1))
				flip(t, hash, BlockSize+5)
			}
			flip(t, hash, 88) // first salt byte in the superblock
			expectCorrupt(t, "superblock")
			flip(t, hash, 88)
			wrong := p
			wrong.RootHash = bytes.Repeat([]byte{1}, 32)
			if err := Verify(data, hash, wrong); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("wrong root hash: error = %v", err)
			}
			if err := Verify(data, hash, p); err != nil {
				t.Fatalf("after restoring every byte: %v", err)
			}
		})
	}
}

// veritysetupFormat runs `veritysetup format` and returns the root hash it
// prints.
func veritysetupFormat(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("veritysetup", append([]string{"format"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup format %v: %v\n%s", args, err, out)
	}
	m := regexp.MustCompile(`Root hash:\s+([0-9a-f]{64})`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no root hash in veritysetup output:\n%s", out)
	}
	return string(m[1])
}

func requireVeritysetup(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("veritysetup"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("veritysetup not found (CI=true: .ci/run must install cryptsetup-bin)")
		}
		t.Skip("veritysetup not installed (apt-get install cryptsetup-bin)")
	}
}

// TestAgainstVeritysetup formats the same data with veritysetup and with
// Format and compares the root hash and every byte of the hash device.
func TestAgainstVeritysetup(t *testing.T) {
	requireVeritysetup(t)
	tests := []struct {
		name   string
		blocks int
		opts   Options
		args   []string
	}{
		{"1 block", 1, Options{}, nil},
		{"2 blocks", 2, Options{}, nil},
		{"127 blocks", 127, Options{}, nil},
		{"128 blocks", 128, Options{}, nil},
		{"129 blocks", 129, Options{}, nil},
		{"1001 blocks", 1001, Options{}, nil},
		{"16385 blocks three levels", 16385, Options{}, nil},
		{"no salt", 300, Options{NoSalt: true}, []string{"--salt=-"}},
		{"short odd salt", 300, Options{Salt: []byte{1, 2, 3, 4, 5}}, []string{"--salt=0102030405"}},
		{"256-byte salt", 130, Options{Salt: bytes.Repeat([]byte{0x5a}, 256)}, []string{"--salt=" + strings.Repeat("5a", 256)}},
		{"no superblock", 300, Options{NoSuperblock: true}, []string{"--no-superblock"}},
		{"hash offset", 300, Options{HashOffset: 8192}, []string{"--hash-offset=8192"}},
		{"unaligned hash offset", 300, Options{HashOffset: 1536}, []string{"--hash-offset=1536"}},
		{"fewer data blocks", 300, Options{DataBlocks: 200}, []string{"--data-blocks=200"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "data")
			writeData(t, data, tc.blocks, uint64(tc.blocks)+11)
			opts := tc.opts
			args := append([]string(nil), tc.args...)
			if !opts.NoSalt && opts.Salt == nil {
				opts.Salt = testSalt(t)
				args = append(args, "--salt="+testSaltHex)
			}
			if !opts.NoSuperblock {
				opts.UUID = testUUID
				args = append(args, "--uuid="+testUUID)
			}
			ours, theirs := filepath.Join(dir, "ours"), filepath.Join(dir, "theirs")
			p, err := Format(data, ours, opts)
			if err != nil {
				t.Fatal(err)
			}
			root := veritysetupFormat(t, append(args, data, theirs)...)
			if p.RootHashHex() != root {
				t.Fatalf("root hash %s, veritysetup %s", p.RootHashHex(), root)
			}
			a, _ := os.ReadFile(ours)
			b, _ := os.ReadFile(theirs)
			if !bytes.Equal(a, b) {
				t.Fatalf("hash device differs from veritysetup's: %d vs %d bytes, first difference at %d", len(a), len(b), firstDiff(a, b))
			}
			if int64(len(a)) != p.HashEnd() {
				t.Fatalf("hash file is %d bytes, HashEnd says %d", len(a), p.HashEnd())
			}
			if err := Verify(data, theirs, p); err != nil {
				t.Fatalf("Verify of veritysetup's tree: %v", err)
			}
			if !opts.NoSuperblock {
				vs, err := ReadSuperblock(theirs, opts.HashOffset)
				if err != nil {
					t.Fatalf("reading veritysetup's superblock: %v", err)
				}
				if vs.UUID != testUUID || vs.DataBlocks != p.DataBlocks {
					t.Fatalf("veritysetup superblock parsed as %+v", vs)
				}
			}
		})
	}

	t.Run("appended to the data file", func(t *testing.T) {
		dir := t.TempDir()
		ours, theirs := filepath.Join(dir, "ours"), filepath.Join(dir, "theirs")
		writeData(t, ours, 500, 99)
		writeData(t, theirs, 500, 99)
		p, err := Format(ours, ours, Options{Salt: testSalt(t), UUID: testUUID})
		if err != nil {
			t.Fatal(err)
		}
		if p.HashOffset != 500*BlockSize || p.HashStartBlock() != 501 {
			t.Fatalf("appended tree at %d (block %d), want %d (block 501)", p.HashOffset, p.HashStartBlock(), 500*BlockSize)
		}
		root := veritysetupFormat(t, "--salt="+testSaltHex, "--uuid="+testUUID, "--data-blocks=500",
			fmt.Sprintf("--hash-offset=%d", 500*BlockSize), theirs, theirs)
		if p.RootHashHex() != root {
			t.Fatalf("root hash %s, veritysetup %s", p.RootHashHex(), root)
		}
		if sha256File(t, ours) != sha256File(t, theirs) {
			t.Fatal("appended image differs from veritysetup's")
		}
		if err := Verify(ours, ours, p); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(p.Table("/dev/vda", "/dev/vda"), " 500 501 sha256 ") {
			t.Fatalf("table %q lacks the data blocks and hash start", p.Table("/dev/vda", "/dev/vda"))
		}
	})

	t.Run("veritysetup verify accepts our tree", func(t *testing.T) {
		dir := t.TempDir()
		data, hash := filepath.Join(dir, "data"), filepath.Join(dir, "hash")
		writeData(t, data, 700, 5)
		p, err := Format(data, hash, Options{})
		if err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("veritysetup", "verify", data, hash, p.RootHashHex()).CombinedOutput(); err != nil {
			t.Fatalf("veritysetup verify: %v\n%s", err, out)
		}
		f, err := os.OpenFile(data, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte{0xff}, 123456); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if out, err := exec.Command("veritysetup", "verify", data, hash, p.RootHashHex()).CombinedOutput(); err == nil {
			t.Fatalf("veritysetup verify accepted a flipped byte:\n%s", out)
		}
		if err := Verify(data, hash, p); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Verify after a flipped byte: %v", err)
		}
	})
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
