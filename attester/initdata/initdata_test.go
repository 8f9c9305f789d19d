package initdata

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/attester/snp"
	"github.com/cova-project/cova/attester/tdx"
)

// doc is an initdata document the way the Kata docs write one.
func doc(alg string) []byte {
	return []byte(`version = "0.1.0"
algorithm = "` + alg + `"

[data]
"aa.toml" = '''
[token_configs]
[token_configs.kbs]
url = "http://10.0.2.2:8080"
'''

"cdh.toml" = '''
socket = 'unix:///run/confidential-containers/cdh.sock'
[kbc]
name = "cc_kbc"
url = "http://10.0.2.2:8080"
'''

"policy.rego" = '''
package agent_policy
default AllowRequestsFailingPolicy := true
'''

"extra.json" = '{"a": 1}'
`)
}

// gz compresses b as one gzip member.
func gz(t testing.TB, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	if _, err := w.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// image lays out a device image as the Kata runtime does: magic, u64 LE
// length, gzip data, zero padding to a 512-byte multiple.
func image(t testing.TB, toml []byte) []byte {
	t.Helper()
	return imageRaw(gz(t, toml))
}

func imageRaw(gzData []byte) []byte {
	b := []byte("initdata")
	b = binary.LittleEndian.AppendUint64(b, uint64(len(gzData)))
	b = append(b, gzData...)
	if r := len(b) % 512; r != 0 {
		b = append(b, make([]byte, 512-r)...)
	}
	return b
}

func TestParseDigestVectors(t *testing.T) {
	for _, tc := range []struct {
		alg  string
		want func([]byte) []byte
	}{
		{"sha256", func(b []byte) []byte { s := sha256.Sum256(b); return s[:] }},
		{"sha384", func(b []byte) []byte { s := sha512.Sum384(b); return s[:] }},
		{"sha512", func(b []byte) []byte { s := sha512.Sum512(b); return s[:] }},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			b := doc(tc.alg)
			id, err := Parse(b)
			if err != nil {
				t.Fatal(err)
			}
			if want := tc.want(b); !bytes.Equal(id.Digest, want) {
				t.Errorf("digest %x, want %x", id.Digest, want)
			}
			if id.Algorithm != tc.alg || id.Version != "0.1.0" || id.Hash.Size() != len(id.Digest) {
				t.Errorf("got algorithm %q version %q hash size %d", id.Algorithm, id.Version, id.Hash.Size())
			}
			if !bytes.Equal(id.TOML, b) {
				t.Error("TOML is not the exact input")
			}
			if got := id.Keys(); !slices.Equal(got, []string{"aa.toml", "cdh.toml", "extra.json", "policy.rego"}) {
				t.Errorf("keys %q", got)
			}
			aa, _ := id.AAConfig()
			cdh, _ := id.CDHConfig()
			pol, _ := id.Policy()
			if !strings.Contains(aa, "token_configs.kbs") || !strings.Contains(cdh, "cc_kbc") ||
				!strings.HasPrefix(pol, "package agent_policy") || id.Data["extra.json"] != `{"a": 1}` {
				t.Errorf("data entries wrong: %q", id.Data)
			}
		})
	}
	// A fixed vector from sha256sum(1), so a digest over anything but the
	// exact bytes cannot pass by computing it the same wrong way twice.
	t.Run("fixed vector", func(t *testing.T) {
		b := []byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\nk = \"v\"\n")
		id, err := Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		const want = "50dfb260f21c5d639490a5fb18bfd015a48ca0918e111936f1f0a440672f1358"
		if got := hex.EncodeToString(id.Digest); got != want {
			t.Fatalf("digest %s, want %s", got, want)
		}
	})
	t.Run("whitespace changes the digest", func(t *testing.T) {
		a, err := Parse(doc("sha384"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := Parse(append(doc("sha384"), '\n'))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(a.Digest, b.Digest) {
			t.Error("digest ignores a trailing newline: not over the exact bytes")
		}
	})
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		toml string
		want error
	}{
		{"missing version", "algorithm = \"sha256\"\n[data]\n", ErrSyntax},
		{"missing algorithm", "version = \"0.1.0\"\n[data]\n", ErrSyntax},
		{"missing data", "version = \"0.1.0\"\nalgorithm = \"sha256\"\n", ErrSyntax},
		{"data not a table", "version = \"0.1.0\"\nalgorithm = \"sha256\"\ndata = \"x\"\n", ErrSyntax},
		{"data value not a string", "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nk = 1\n", ErrSyntax},
		{"data value a table", "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data.k]\nx = \"y\"\n", ErrSyntax},
		{"version not a string", "version = 1\nalgorithm = \"sha256\"\n[data]\n", ErrSyntax},
		{"keys are case-sensitive", "Version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n", ErrSyntax},
		{"bad toml", "version = \"0.1.0\nalgorithm = \"sha256\"\n[data]\n", ErrSyntax},
		{"duplicate key", "version = \"0.1.0\"\nversion = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n", ErrSyntax},
		{"not utf-8", "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nk = \"\xff\"\n", ErrSyntax},
		{"empty", "", ErrSyntax},
		{"version 0.2.0", "version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n", ErrVersion},
		{"version 0.1", "version = \"0.1\"\nalgorithm = \"sha256\"\n[data]\n", ErrVersion},
		{"algorithm sha-256", "version = \"0.1.0\"\nalgorithm = \"sha-256\"\n[data]\n", ErrAlgorithm},
		{"algorithm SHA256", "version = \"0.1.0\"\nalgorithm = \"SHA256\"\n[data]\n", ErrAlgorithm},
		{"algorithm sm3", "version = \"0.1.0\"\nalgorithm = \"sm3\"\n[data]\n", ErrAlgorithm},
		{"algorithm md5", "version = \"0.1.0\"\nalgorithm = \"md5\"\n[data]\n", ErrAlgorithm},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if IsNotPresent(err) || !errdefs.IsInvalidArgument(err) {
				t.Errorf("err %v: wrong class", err)
			}
		})
	}
	t.Run("empty data table and unknown top-level keys are fine", func(t *testing.T) {
		id, err := Parse([]byte("version = \"0.1.0\"\nalgorithm = \"sha512\"\nextra = 3\n[data]\n"))
		if err != nil {
			t.Fatal(err)
		}
		if len(id.Data) != 0 {
			t.Errorf("data %q", id.Data)
		}
	})
	t.Run("oversize", func(t *testing.T) {
		if _, err := Parse(make([]byte, MaxTOMLSize+1)); !errors.Is(err, ErrTooLarge) {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestDecode(t *testing.T) {
	toml := doc("sha384")
	img := image(t, toml)
	got, err := Decode(bytes.NewReader(img))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, toml) {
		t.Fatal("decoded document differs")
	}

	gzData := gz(t, toml)
	twoMembers := append(slices.Clone(gzData), gz(t, []byte("x"))...)
	bomb := gz(t, make([]byte, MaxTOMLSize+1))
	withLen := func(n uint64, rest []byte) []byte {
		b := binary.LittleEndian.AppendUint64([]byte("initdata"), n)
		return append(b, rest...)
	}
	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrTruncated},
		{"short magic prefix", []byte("init"), ErrTruncated},
		{"short wrong magic", []byte("inix"), ErrBadMagic},
		{"bad magic", append([]byte("INITDATA"), img[8:]...), ErrBadMagic},
		{"luks magic", append([]byte("LUKS\xba\xbe\x00\x02"), img[8:]...), ErrBadMagic},
		{"short length", img[:12], ErrTruncated},
		{"zero length", withLen(0, gzData), ErrCompression},
		{"length over limit", withLen(MaxCompressedSize+1, gzData), ErrTooLarge},
		{"length 2^64-1", withLen(^uint64(0), gzData), ErrTooLarge},
		{"length past the end", withLen(uint64(len(gzData)+1), gzData), ErrTruncated},
		{"length one short", withLen(uint64(len(gzData)-1), gzData), ErrCompression},
		{"length includes padding", withLen(uint64(len(gzData)+3), append(slices.Clone(gzData), 0, 0, 0)), ErrCompression},
		{"two gzip members", withLen(uint64(len(twoMembers)), twoMembers), ErrCompression},
		{"not gzip", withLen(5, []byte("hello")), ErrCompression},
		{"decompression bomb", withLen(uint64(len(bomb)), bomb), ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(bytes.NewReader(tc.in))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestDecodeEveryByte flips every byte of the header and the gzip data: a
// flip in the magic is a bad magic, in the length field an error, in the
// gzip data either an error or (for the unchecked gzip header fields such as
// MTIME and OS) the exact same document. A flip in the padding changes
// nothing.
func TestDecodeEveryByte(t *testing.T) {
	toml := doc("sha256")
	gzData := gz(t, toml)
	img := imageRaw(gzData)
	end := HeaderSize + len(gzData)
	var gzErrs int
	for i := range img {
		b := slices.Clone(img)
		b[i] ^= 0x01
		got, err := Decode(bytes.NewReader(b))
		switch {
		case i < len(Magic):
			if !errors.Is(err, ErrBadMagic) {
				t.Errorf("byte %d (magic): err = %v", i, err)
			}
		case i < HeaderSize:
			if err == nil {
				t.Errorf("byte %d (length): accepted", i)
			}
		case i < end:
			if err != nil {
				gzErrs++
				if !errors.Is(err, ErrCompression) && !errors.Is(err, ErrTooLarge) {
					t.Errorf("byte %d (gzip): err = %v, want a gzip error", i, err)
				}
			} else if !bytes.Equal(got, toml) {
				t.Errorf("byte %d (gzip): accepted a different document", i)
			}
		default:
			if err != nil || !bytes.Equal(got, toml) {
				t.Errorf("byte %d (padding): %v", i, err)
			}
		}
		if err != nil && IsNotPresent(err) {
			t.Errorf("byte %d: corrupt data reported as absent", i)
		}
	}
	if gzErrs < len(gzData)/2 {
		t.Errorf("only %d of %d gzip byte flips detected", gzErrs, len(gzData))
	}
	// And every truncation.
	for n := range end {
		if _, err := Decode(bytes.NewReader(img[:n])); !errors.Is(err, ErrTruncated) {
			t.Errorf("truncated to %d bytes: err = %v", n, err)
		}
	}
}

// failingReader returns data, then err.
type failingReader struct {
	data []byte
	err  error
}

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func (r *failingReader) Close() error { return nil }

// devDir makes a fake /dev with the given regular files.
func devDir(t *testing.T, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestFind(t *testing.T) {
	ctx := context.Background()
	toml := doc("sha384")
	img := image(t, toml)
	zeros := make([]byte, 4096)
	corrupt := slices.Clone(img)
	corrupt[HeaderSize+20] ^= 0xff

	t.Run("present", func(t *testing.T) {
		dir := devDir(t, map[string][]byte{"vda": zeros, "vdb": img, "sda": []byte("abc"), "vdc": nil})
		id, err := Find(ctx, Devices{Dir: dir, IncludeRegular: true}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if id.Device != filepath.Join(dir, "vdb") || !bytes.Equal(id.TOML, toml) {
			t.Errorf("device %q", id.Device)
		}
		want := sha512.Sum384(toml)
		if !bytes.Equal(id.Digest, want[:]) {
			t.Error("digest")
		}
	})
	t.Run("on sd", func(t *testing.T) {
		dir := devDir(t, map[string][]byte{"vda": zeros, "sdb": img})
		id, err := Find(ctx, Devices{Dir: dir, IncludeRegular: true}, nil)
		if err != nil || id.Device != filepath.Join(dir, "sdb") {
			t.Fatalf("%v %v", id, err)
		}
	})

	absent := []struct {
		name  string
		files map[string][]byte
		d     Devices
	}{
		{"no devices", nil, Devices{IncludeRegular: true}},
		{"no magic anywhere", map[string][]byte{"vda": zeros, "sda": []byte("abc"), "vdb": nil}, Devices{IncludeRegular: true}},
		{"magic on a name that is not a disk", map[string][]byte{"xvda": img, "nvme0n1": img, "initdata": img}, Devices{IncludeRegular: true}},
		{"regular files are not block devices", map[string][]byte{"vda": img}, Devices{}},
		{"corrupt magic is absence when scanning", map[string][]byte{"vda": append([]byte("initdatx"), img[8:]...)}, Devices{IncludeRegular: true}},
	}
	for _, tc := range absent {
		t.Run("absent: "+tc.name, func(t *testing.T) {
			d := tc.d
			d.Dir = devDir(t, tc.files)
			_, err := Find(ctx, d, nil)
			if !IsNotPresent(err) || !errdefs.IsNotFound(err) {
				t.Fatalf("err = %v, want not present", err)
			}
		})
	}
	t.Run("absent: character devices are skipped", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Symlink("/dev/null", filepath.Join(dir, "vda")); err != nil {
			t.Fatal(err)
		}
		if _, err := Find(ctx, Devices{Dir: dir, IncludeRegular: true}, nil); !IsNotPresent(err) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("absent: no medium", func(t *testing.T) {
		dir := devDir(t, map[string][]byte{"sda": img})
		d := Devices{Dir: dir, IncludeRegular: true, Open: func(string) (io.ReadCloser, error) {
			return nil, &fs.PathError{Op: "open", Path: "sda", Err: syscall.ENOMEDIUM}
		}}
		if _, err := Find(ctx, d, nil); !IsNotPresent(err) {
			t.Fatalf("err = %v", err)
		}
	})

	failClosed := []struct {
		name  string
		files map[string][]byte
		d     Devices
		want  error
	}{
		{"corrupt gzip", map[string][]byte{"vda": zeros, "vdb": corrupt}, Devices{IncludeRegular: true}, ErrCompression},
		{"two devices", map[string][]byte{"vda": img, "vdb": img}, Devices{IncludeRegular: true}, ErrAmbiguous},
		{"unknown version", map[string][]byte{"vda": image(t, []byte("version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n"))}, Devices{IncludeRegular: true}, ErrVersion},
		{"unknown algorithm", map[string][]byte{"vda": image(t, []byte("version = \"0.1.0\"\nalgorithm = \"sha1\"\n[data]\n"))}, Devices{IncludeRegular: true}, ErrAlgorithm},
		{"bad toml", map[string][]byte{"vda": image(t, []byte("version = "))}, Devices{IncludeRegular: true}, ErrSyntax},
		{"oversize length", map[string][]byte{"vda": binary.LittleEndian.AppendUint64([]byte("initdata"), 2<<20)}, Devices{IncludeRegular: true}, ErrTooLarge},
		{"truncated", map[string][]byte{"vda": img[:HeaderSize+10]}, Devices{IncludeRegular: true}, ErrTruncated},
		{"EIO reading the magic", map[string][]byte{"vda": zeros, "vdb": img},
			Devices{IncludeRegular: true, Open: func(p string) (io.ReadCloser, error) {
				if filepath.Base(p) == "vda" {
					return &failingReader{data: []byte("ini"), err: syscall.EIO}, nil
				}
				return os.Open(p)
			}}, syscall.EIO},
		{"EIO opening", map[string][]byte{"vda": img},
			Devices{IncludeRegular: true, Open: func(p string) (io.ReadCloser, error) {
				return nil, &fs.PathError{Op: "open", Path: p, Err: syscall.EIO}
			}}, ErrIO},
		{"EIO inside the gzip data", map[string][]byte{"vda": img},
			Devices{IncludeRegular: true, Open: func(p string) (io.ReadCloser, error) {
				return &failingReader{data: img[:HeaderSize+30], err: syscall.EIO}, nil
			}}, syscall.EIO},
	}
	for _, tc := range failClosed {
		t.Run("error: "+tc.name, func(t *testing.T) {
			d := tc.d
			d.Dir = devDir(t, tc.files)
			id, err := Find(ctx, d, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if id != nil || IsNotPresent(err) {
				t.Errorf("fail-closed error reported as absence: %v", err)
			}
			if errors.Is(err, syscall.EIO) && !errors.Is(err, ErrIO) {
				t.Errorf("EIO not classed as ErrIO: %v", err)
			}
		})
	}
	t.Run("error: device directory unreadable", func(t *testing.T) {
		_, err := Find(ctx, Devices{Dir: filepath.Join(t.TempDir(), "missing")}, nil)
		if !errors.Is(err, ErrIO) || IsNotPresent(err) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("error: cancelled", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		dir := devDir(t, map[string][]byte{"vda": img})
		_, err := Find(cctx, Devices{Dir: dir, IncludeRegular: true}, nil)
		if !errors.Is(err, context.Canceled) || IsNotPresent(err) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("named device", func(t *testing.T) {
		dir := devDir(t, map[string][]byte{"good": img, "bad": zeros})
		id, err := Find(ctx, Devices{Path: filepath.Join(dir, "good")}, nil)
		if err != nil || !bytes.Equal(id.TOML, toml) {
			t.Fatalf("good: %v", err)
		}
		if _, err := Find(ctx, Devices{Path: filepath.Join(dir, "bad")}, nil); !errors.Is(err, ErrBadMagic) {
			t.Fatalf("bad magic on the named device: err = %v", err)
		}
		if _, err := Find(ctx, Devices{Path: filepath.Join(dir, "missing")}, nil); !errors.Is(err, ErrIO) || IsNotPresent(err) {
			t.Fatalf("missing named device: err = %v", err)
		}
	})
}

func TestWrite(t *testing.T) {
	id, err := Parse(doc("sha256"))
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "run", "initdata")
	if err := id.Write(dir); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"initdata.toml": string(doc("sha256")),
		"aa.toml":       id.Data["aa.toml"],
		"cdh.toml":      id.Data["cdh.toml"],
	} {
		p := filepath.Join(dir, name)
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != want {
			t.Errorf("%s: content differs", name)
		}
		fi, _ := os.Stat(p)
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", name, fi.Mode())
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "policy.rego")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("policy.rego written; kata writes only aa.toml and cdh.toml")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 3 {
		t.Errorf("%d files, want 3 (no temporaries left)", len(ents))
	}

	// A document without aa.toml removes the stale one.
	id2, err := Parse([]byte("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"cdh.toml\" = \"x\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := id2.Write(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "aa.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Error("stale aa.toml kept")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cdh.toml")); string(b) != "x" {
		t.Errorf("cdh.toml = %q", b)
	}
}

// fakeBinder records the digest it is given and answers with err.
type fakeBinder struct {
	got []byte
	err error
}

func (f *fakeBinder) Tee() attester.Tee { return attester.TeeTPM }
func (f *fakeBinder) Evidence(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("unused")
}
func (f *fakeBinder) BindInitdata(_ context.Context, d []byte) error {
	f.got = slices.Clone(d)
	return f.err
}

// memFiles is the tdx measurement sysfs seam with a fixed MRCONFIGID.
type memFiles map[string][]byte

func (m memFiles) ReadFile(name string) ([]byte, error) {
	b, ok := m[name]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return slices.Clone(b), nil
}
func (m memFiles) WriteFile(string, []byte) error { return errors.ErrUnsupported }

// snpSource returns a minimal version-3 Milan report carrying hostData.
type snpSource struct{ hostData [32]byte }

func (s snpSource) ExtendedReport(context.Context, [64]byte, uint32) ([]byte, []byte, error) {
	r := make([]byte, snp.ReportSize)
	binary.LittleEndian.PutUint32(r[0:], 3)
	r[0x188], r[0x189] = 0x19, 0x01 // family 0x19 model 0x01: Milan
	copy(r[0xC0:], s.hostData[:])
	return r, nil, nil
}

func TestBindAndLoad(t *testing.T) {
	ctx := context.Background()
	for _, alg := range []string{"sha256", "sha384", "sha512"} {
		toml := doc(alg)
		parsed, err := Parse(toml)
		if err != nil {
			t.Fatal(err)
		}
		digest := parsed.Digest
		// The reference's fitting, written out: TDX MRCONFIGID is 48 bytes,
		// SNP HOST_DATA 32; shorter digests are zero-padded, longer ones
		// truncated.
		mrconfigid := make([]byte, 48)
		copy(mrconfigid, digest)
		var hostData [32]byte
		copy(hostData[:], digest)
		wrong := slices.Clone(mrconfigid)
		wrong[0] ^= 1
		var wrongHost [32]byte
		copy(wrongHost[:], wrong)

		for _, tc := range []struct {
			name      string
			a         attester.Attester
			wantBound bool
			wantErr   error
		}{
			{"tdx", tdx.New(tdx.Config{Measurements: memFiles{"mrconfigid": mrconfigid}}), true, nil},
			{"tdx mismatch", tdx.New(tdx.Config{Measurements: memFiles{"mrconfigid": wrong}}), false, ErrMismatch},
			{"tdx read error", tdx.New(tdx.Config{Measurements: memFiles{}}), false, fs.ErrNotExist},
			{"snp", snp.New(snpSource{hostData}), true, nil},
			{"snp mismatch", snp.New(snpSource{wrongHost}), false, ErrMismatch},
			{"sample cannot bind", sample.New(), false, nil},
		} {
			t.Run(alg+"/"+tc.name, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "initdata")
				devs := devDir(t, map[string][]byte{"vda": image(t, toml)})
				id, err := Load(ctx, Options{Devices: Devices{Dir: devs, IncludeRegular: true}, Attester: tc.a, Dir: dir})
				if tc.wantErr != nil {
					if !errors.Is(err, tc.wantErr) || id != nil {
						t.Fatalf("err = %v, want %v", err, tc.wantErr)
					}
					if _, serr := os.Stat(dir); !errors.Is(serr, fs.ErrNotExist) {
						t.Error("files written for initdata that failed its binding")
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(id.Digest, digest) {
					t.Error("digest")
				}
				if b, err := os.ReadFile(filepath.Join(dir, TOMLFile)); err != nil || !bytes.Equal(b, toml) {
					t.Errorf("initdata.toml: %v", err)
				}
				bound, err := Bind(ctx, tc.a, digest)
				if err != nil || bound != tc.wantBound {
					t.Errorf("Bind = %v, %v; want bound %v", bound, err, tc.wantBound)
				}
			})
		}
	}

	t.Run("binder gets the full digest", func(t *testing.T) {
		f := &fakeBinder{}
		d := bytes.Repeat([]byte{7}, 64)
		bound, err := Bind(ctx, f, d)
		if err != nil || !bound || !bytes.Equal(f.got, d) {
			t.Fatalf("bound %v err %v got %x", bound, err, f.got)
		}
	})
	t.Run("binder error fails", func(t *testing.T) {
		f := &fakeBinder{err: fmt.Errorf("tpm: %w", syscall.EIO)}
		if _, err := Bind(ctx, f, []byte{1}); !errors.Is(err, syscall.EIO) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no initdata device", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "initdata")
		f := &fakeBinder{}
		id, err := Load(ctx, Options{Devices: Devices{Dir: t.TempDir(), IncludeRegular: true}, Attester: f, Dir: dir})
		if err != nil || id != nil {
			t.Fatalf("id %v err %v, want nil, nil", id, err)
		}
		if f.got != nil {
			t.Error("bound a digest without initdata")
		}
		if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Error("wrote files without initdata")
		}
	})
	t.Run("corrupt device fails the boot", func(t *testing.T) {
		img := image(t, doc("sha256"))
		img[len(Magic)+7] = 0x80 // length high byte
		devs := devDir(t, map[string][]byte{"vda": img})
		_, err := Load(ctx, Options{Devices: Devices{Dir: devs, IncludeRegular: true}, Attester: sample.New(), Dir: t.TempDir()})
		if err == nil || IsNotPresent(err) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("nil attester", func(t *testing.T) {
		if _, err := Load(ctx, Options{}); !errdefs.IsInvalidArgument(err) {
			t.Fatalf("err = %v", err)
		}
	})
}

func FuzzDecode(f *testing.F) {
	f.Add(image(f, doc("sha256")))
	f.Add(imageRaw([]byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}))
	f.Add([]byte("initdata\x10\x00\x00\x00\x00\x00\x00\x00"))
	f.Add([]byte("initdata\xff\xff\xff\xff\xff\xff\xff\xff"))
	f.Add([]byte("init"))
	f.Fuzz(func(t *testing.T, b []byte) {
		toml, err := Decode(bytes.NewReader(b))
		if err != nil {
			if IsNotPresent(err) {
				t.Fatalf("Decode reported absence: %v", err)
			}
			return
		}
		if len(toml) > MaxTOMLSize {
			t.Fatalf("%d bytes decoded", len(toml))
		}
		id, err := Parse(toml)
		if err != nil {
			return
		}
		if !bytes.Equal(id.TOML, toml) || len(id.Digest) != id.Hash.Size() {
			t.Fatal("parse result inconsistent")
		}
	})
}
