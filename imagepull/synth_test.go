package imagepull

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/test/regtest"
)

// synthSpec describes a synthetic image: Layers tar layers of about
// LayerBytes of file content each, text-like (about 3:1 with gzip) with
// some incompressible blocks, generated from Seed. The same spec always
// gives the same bytes.
type synthSpec struct {
	Layers     int
	LayerBytes int64
	Seed       uint64
}

// synthVersion changes whenever the generator's output would change, so
// stale cache entries are not used.
const synthVersion = 1

func (s synthSpec) key() string {
	h := sha256.Sum256(fmt.Appendf(nil, "v%d %d %d %d", synthVersion, s.Layers, s.LayerBytes, s.Seed))
	return hex.EncodeToString(h[:8])
}

// synthLayer is one generated layer in both compressions.
type synthLayer struct {
	DiffID     oci.Digest `json:"diffID"`
	TarBytes   int64      `json:"tarBytes"`
	GzipPath   string     `json:"gzip"`
	ZstdPath   string     `json:"zstd"`
	GzipDigest oci.Digest `json:"gzipDigest"`
	ZstdDigest oci.Digest `json:"zstdDigest"`
}

// synthCacheDir is where generated images are kept between runs
// ($COVA_BENCH_CACHE, else the user cache dir).
func synthCacheDir(tb testing.TB) string {
	if d := os.Getenv("COVA_BENCH_CACHE"); d != "" {
		return d
	}
	d, err := os.UserCacheDir()
	if err != nil {
		d = os.TempDir()
	}
	return filepath.Join(d, "cova-imagepull-bench")
}

// synthImage returns the layers of spec, generating them into dir (or,
// with dir "", the shared cache keyed by the spec) only if not already
// there.
func synthImage(tb testing.TB, spec synthSpec, dir string) []synthLayer {
	tb.Helper()
	if dir == "" {
		dir = filepath.Join(synthCacheDir(tb), spec.key())
	}
	index := filepath.Join(dir, "index.json")
	if b, err := os.ReadFile(index); err == nil {
		var ls []synthLayer
		if json.Unmarshal(b, &ls) == nil && len(ls) == spec.Layers {
			return ls
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	var ls []synthLayer
	for i := 0; i < spec.Layers; i++ {
		l, err := writeSynthLayer(dir, i, spec)
		if err != nil {
			tb.Fatal(err)
		}
		ls = append(ls, l)
	}
	b, _ := json.Marshal(ls)
	tmp := index + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, index); err != nil {
		tb.Fatal(err)
	}
	return ls
}

// hashFile is a file being written with its running sha256.
type hashFile struct {
	f *os.File
	h hash.Hash
	w io.Writer
}

func createHashFile(path string) (*hashFile, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	return &hashFile{f: f, h: h, w: io.MultiWriter(f, h)}, nil
}

func (hf *hashFile) Write(p []byte) (int, error) { return hf.w.Write(p) }

func (hf *hashFile) digest() oci.Digest {
	d, _ := oci.ParseDigest("sha256:" + hex.EncodeToString(hf.h.Sum(nil)))
	return d
}

// writeSynthLayer generates layer i once, writing the gzip and the zstd
// blob in the same pass.
func writeSynthLayer(dir string, i int, spec synthSpec) (synthLayer, error) {
	l := synthLayer{GzipPath: filepath.Join(dir, fmt.Sprintf("layer-%d.tar.gz", i)), ZstdPath: filepath.Join(dir, fmt.Sprintf("layer-%d.tar.zst", i))}
	gf, err := createHashFile(l.GzipPath)
	if err != nil {
		return l, err
	}
	defer gf.f.Close()
	zf, err := createHashFile(l.ZstdPath)
	if err != nil {
		return l, err
	}
	defer zf.f.Close()
	gz := gzip.NewWriter(gf)
	zw, err := zstd.NewWriter(zf, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return l, err
	}
	diff := sha256.New()
	cw := &countWriter{w: io.MultiWriter(diff, gz, zw)}
	if err := writeSynthTar(cw, rand.New(rand.NewChaCha8(seed32(spec.Seed, uint64(i)))), spec.LayerBytes, i); err != nil {
		return l, err
	}
	if err := gz.Close(); err != nil {
		return l, err
	}
	if err := zw.Close(); err != nil {
		return l, err
	}
	l.DiffID, _ = oci.ParseDigest("sha256:" + hex.EncodeToString(diff.Sum(nil)))
	l.TarBytes = cw.n
	l.GzipDigest, l.ZstdDigest = gf.digest(), zf.digest()
	return l, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func seed32(a, b uint64) [32]byte {
	var s [32]byte
	for k := 0; k < 8; k++ {
		s[k] = byte(a >> (8 * k))
		s[8+k] = byte(b >> (8 * k))
	}
	return s
}

// writeSynthTar writes a tar of about n content bytes: directories of
// files from 1 KiB to 2 MiB of text made of a fixed vocabulary, every
// eighth file with incompressible 4 KiB blocks mixed in, and a few
// symlinks.
func writeSynthTar(w io.Writer, rng *rand.Rand, n int64, layer int) error {
	vocab := make([][]byte, 1024)
	for i := range vocab {
		word := make([]byte, 2+rng.IntN(9))
		for j := range word {
			word[j] = 'a' + byte(rng.IntN(26))
		}
		vocab[i] = word
	}
	tw := tar.NewWriter(w)
	buf := make([]byte, 0, 2<<20+64)
	var written int64
	for f := 0; written < n; f++ {
		d := fmt.Sprintf("l%d/d%03d/", layer, f/64)
		if f%64 == 0 {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755}); err != nil {
				return err
			}
		}
		size := 1<<10 + int(float64(2<<20)*rng.Float64()*rng.Float64()*rng.Float64())
		size = int(min(int64(size), n-written+1))
		buf = buf[:0]
		for len(buf) < size {
			if f%8 == 7 && rng.IntN(16) == 0 {
				blk := make([]byte, 4096)
				for k := 0; k+8 <= len(blk); k += 8 {
					v := rng.Uint64()
					for b := 0; b < 8; b++ {
						blk[k+b] = byte(v >> (8 * b))
					}
				}
				buf = append(buf, blk...)
				continue
			}
			buf = append(buf, vocab[rng.IntN(len(vocab))]...)
			if rng.IntN(12) == 0 {
				buf = append(buf, '\n')
			} else {
				buf = append(buf, ' ')
			}
		}
		buf = buf[:size]
		name := fmt.Sprintf("%sf%05d.txt", d, f)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(size)}); err != nil {
			return err
		}
		if _, err := tw.Write(buf); err != nil {
			return err
		}
		if f%50 == 0 {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: name + ".lnk", Linkname: filepath.Base(name)}); err != nil {
				return err
			}
		}
		written += int64(size)
	}
	return tw.Close()
}

// pushSynth pushes spec's layers (gzip or zstd) as repo:tag and returns
// the total blob bytes.
func pushSynth(tb testing.TB, host, repo, tag string, ls []synthLayer, comp oci.Compression) int64 {
	tb.Helper()
	var layers []regtest.Layer
	var total int64
	for _, l := range ls {
		path, mt := l.GzipPath, oci.MediaTypeOCILayerGzip
		if comp == oci.Zstd {
			path, mt = l.ZstdPath, oci.MediaTypeOCILayerZstd
		}
		b, err := os.ReadFile(path)
		if err != nil {
			tb.Fatal(err)
		}
		total += int64(len(b))
		layers = append(layers, regtest.Layer{Blob: b, MediaType: mt, DiffID: l.DiffID})
	}
	if _, err := regtest.PushImage(context.Background(), host, repo, tag, layers); err != nil {
		tb.Fatal(err)
	}
	return total
}

// TestSynthZstdPull is the short correctness check of the zstd path with
// layers written by klauspost/compress (the benchmark's generator): the
// same content as gzip and as zstd unpacks to the same files, and the
// zstd layer's diffID is checked.
func TestSynthZstdPull(t *testing.T) {
	regtest.Require(t, "docker-registry")
	reg := regtest.Start(t)
	ls := synthImage(t, synthSpec{Layers: 2, LayerBytes: 3 << 20, Seed: 7}, t.TempDir())
	pushSynth(t, reg.Host, "synth/img", "gzip", ls, oci.Gzip)
	pushSynth(t, reg.Host, "synth/img", "zstd", ls, oci.Zstd)
	ctx := context.Background()
	var trees []map[string]string
	for _, tag := range []string{"gzip", "zstd"} {
		p := newPuller(t, reg.Host, nil)
		img, err := p.Pull(ctx, reg.Host+"/synth/img:"+tag, PullOptions{})
		if err != nil {
			t.Fatalf("%s: %v", tag, err)
		}
		if img.Stats.LayersFetched != 2 || img.Stats.UnpackedBytes < 6<<20 {
			t.Fatalf("%s: stats %+v", tag, img.Stats)
		}
		tree := map[string]string{}
		for _, dir := range img.Layers {
			filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
				if err != nil || fi.IsDir() {
					return err
				}
				rel, _ := filepath.Rel(dir, path)
				if fi.Mode()&os.ModeSymlink != 0 {
					target, _ := os.Readlink(path)
					tree[rel] = "-> " + target
					return nil
				}
				b, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				s := sha256.Sum256(b)
				tree[rel] = hex.EncodeToString(s[:])
				return nil
			})
		}
		trees = append(trees, tree)
	}
	if len(trees[0]) < 10 || len(trees[0]) != len(trees[1]) {
		t.Fatalf("file counts %d and %d", len(trees[0]), len(trees[1]))
	}
	for k, v := range trees[0] {
		if trees[1][k] != v {
			t.Fatalf("%s differs between gzip and zstd", k)
		}
	}

	// A zstd layer whose diffID is wrong is refused.
	bad := ls[0]
	bad.DiffID = oci.FromBytes([]byte("not it"))
	pushSynth(t, reg.Host, "synth/img", "bad", []synthLayer{bad}, oci.Zstd)
	p := newPuller(t, reg.Host, nil)
	if _, err := p.Pull(ctx, reg.Host+"/synth/img:bad", PullOptions{}); !errdefs.IsFailedPrecondition(err) {
		t.Fatalf("zstd layer with a wrong diffID: got %v, want ErrFailedPrecondition", err)
	}
	if len(p.Store().Layers()) != 0 {
		t.Fatal("refused layer left in the store")
	}
}
