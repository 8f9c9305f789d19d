package imagepull

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/ocicrypt"
	"github.com/cova-project/cova/imagepull/registry"
	"github.com/cova-project/cova/test/regtest"
)

// benchSources are host directories of real files turned into layers, as
// many as exist (about 200 MB of gzip on Debian with Go and gcc installed).
var benchSources = []string{"/usr/bin", "/usr/include", "/usr/lib/gcc", "/usr/libexec", "/usr/local/go/src"}

// BenchmarkPull pulls and unpacks a multi-layer gzip image from a local
// docker-registry onto tmpfs (/dev/shm), and in the same run does what a
// user would do instead (skopeo copy + umoci unpack) and the floor (inflate
// + sha256 of the same blobs from memory, one goroutine per core). It
// reports the seconds of each and the ratios.
func BenchmarkPull(b *testing.B) {
	regtest.Require(b, "docker-registry", "umoci", "skopeo")
	shm := "/dev/shm"
	if st, err := os.Stat(shm); err != nil || !st.IsDir() {
		b.Skip("no /dev/shm tmpfs")
	}
	reg := regtest.Start(b)
	l := benchLayout(b)
	l.Push(reg.Host, "bench/big", "v1")
	ref := reg.Host + "/bench/big:v1"
	ctx := context.Background()

	// Blobs in memory for the floor.
	c, _ := registry.New(registry.Config{Registries: []registry.Registry{{Prefix: reg.Host, Insecure: true}}})
	repo, f, err := c.Resolve(ctx, mustRef(b, ref))
	if err != nil {
		b.Fatal(err)
	}
	m, _, err := oci.ParseDocument(f.Body, f.ContentType, "", 0)
	if err != nil {
		b.Fatal(err)
	}
	var blobs [][]byte
	var blobBytes int64
	for _, d := range m.Layers {
		bb, err := repo.FetchBlob(ctx, d, 1<<30)
		if err != nil {
			b.Fatal(err)
		}
		blobs = append(blobs, bb)
		blobBytes += int64(len(bb))
	}
	b.Logf("image: %d layers, %.1f MB compressed", len(blobs), float64(blobBytes)/1e6)

	var ours, base, floor time.Duration
	var unpacked int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Ours.
		work, err := os.MkdirTemp(shm, "cova-bench-")
		if err != nil {
			b.Fatal(err)
		}
		p, err := New(Config{WorkDir: work, Registry: registry.Config{Registries: []registry.Registry{{Prefix: reg.Host, Insecure: true}}}})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		img, err := p.Pull(ctx, ref, PullOptions{})
		if err != nil {
			b.Fatal(err)
		}
		ours += time.Since(start)
		unpacked = img.Stats.UnpackedBytes
		os.RemoveAll(work)

		// skopeo copy + umoci unpack.
		tmp, err := os.MkdirTemp(shm, "cova-bench-base-")
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		run(b, "skopeo", "copy", "--quiet", "--insecure-policy", "--src-tls-verify=false", "docker://"+ref, "oci:"+filepath.Join(tmp, "layout")+":v1")
		run(b, "umoci", "unpack", "--image", filepath.Join(tmp, "layout")+":v1", filepath.Join(tmp, "bundle"))
		base += time.Since(start)
		os.RemoveAll(tmp)

		// Floor: inflate + sha256 of every blob, one worker per core (2).
		start = time.Now()
		var wg sync.WaitGroup
		work2 := make(chan []byte, len(blobs))
		for _, bb := range blobs {
			work2 <- bb
		}
		close(work2)
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for bb := range work2 {
					h := sha256.New()
					h.Write(bb)
					zr, err := gzip.NewReader(bytesReader(bb))
					if err != nil {
						b.Error(err)
						return
					}
					d := sha256.New()
					if _, err := io.Copy(d, zr); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		wg.Wait()
		floor += time.Since(start)
	}
	b.StopTimer()
	nf := float64(b.N)
	b.ReportMetric(ours.Seconds()/nf, "cova-s")
	b.ReportMetric(base.Seconds()/nf, "skopeo+umoci-s")
	b.ReportMetric(floor.Seconds()/nf, "floor-s")
	b.ReportMetric(base.Seconds()/ours.Seconds(), "speedup-x")
	b.ReportMetric(floor.Seconds()/ours.Seconds(), "of-floor")
	b.ReportMetric(float64(unpacked)/1e6/(ours.Seconds()/nf), "unpacked-MB/s")
}

// benchLayout builds the benchmark image as an OCI layout, one layer per
// existing source directory.
func benchLayout(b *testing.B) *regtest.Layout {
	b.Helper()
	l := regtest.NewLayout(b, "big")
	n := 0
	for _, src := range benchSources {
		if _, err := os.Stat(src); err == nil {
			l.Insert(src, src)
			n++
		}
	}
	if n < 2 {
		b.Skip("not enough source directories for a realistic image")
	}
	return l
}

// BenchmarkPullEncrypted pulls the benchmark image plain and encrypted
// (skopeo, JWE RSA-OAEP recipient: every layer AES-256-CTR + HMAC-SHA256)
// alternately in one run onto tmpfs and reports the ratio (goal ≤ 1.15).
func BenchmarkPullEncrypted(b *testing.B) {
	regtest.Require(b, "docker-registry", "umoci", "skopeo", "openssl")
	shm := "/dev/shm"
	if st, err := os.Stat(shm); err != nil || !st.IsDir() {
		b.Skip("no /dev/shm tmpfs")
	}
	reg := regtest.Start(b)
	l := benchLayout(b)
	l.Push(reg.Host, "bench/plain", "v1")
	dir := b.TempDir()
	regtest.Run(b, "openssl", "genrsa", "-out", filepath.Join(dir, "key.pem"), "2048")
	regtest.Run(b, "openssl", "rsa", "-in", filepath.Join(dir, "key.pem"), "-pubout", "-out", filepath.Join(dir, "key.pub"))
	l.Push(reg.Host, "bench/enc", "v1", "--encryption-key", "jwe:"+filepath.Join(dir, "key.pub"))
	priv, err := os.ReadFile(filepath.Join(dir, "key.pem"))
	if err != nil {
		b.Fatal(err)
	}
	kp, err := ocicrypt.NewJWE(priv)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	pull := func(ref string, opts PullOptions) (time.Duration, *Image) {
		work, err := os.MkdirTemp(shm, "cova-bench-")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(work)
		p, err := New(Config{WorkDir: work, Registry: registry.Config{Registries: []registry.Registry{{Prefix: reg.Host, Insecure: true}}}})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		img, err := p.Pull(ctx, ref, opts)
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(start), img
	}
	var plain, enc time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, _ := pull(reg.Host+"/bench/plain:v1", PullOptions{})
		plain += d
		d, img := pull(reg.Host+"/bench/enc:v1", PullOptions{KeyProvider: kp})
		enc += d
		if img.Stats.LayersDecrypted != len(img.Layers) {
			b.Fatalf("decrypted %d of %d layers", img.Stats.LayersDecrypted, len(img.Layers))
		}
	}
	b.StopTimer()
	nf := float64(b.N)
	b.ReportMetric(plain.Seconds()/nf, "plain-s")
	b.ReportMetric(enc.Seconds()/nf, "encrypted-s")
	b.ReportMetric(enc.Seconds()/plain.Seconds(), "encrypted/plain")
}

func run(b *testing.B, name string, args ...string) {
	b.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		b.Fatalf("%s: %v\n%s", name, err, out)
	}
}

type byteReader struct {
	b []byte
}

func bytesReader(b []byte) io.Reader { return &byteReader{b} }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}
