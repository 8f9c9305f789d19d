package imagepull

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
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

// benchSynth is the synthetic ~200 MB (unpacked) image of the zstd and
// second-container benchmarks; benchSynthBig the ~1 GB one of the peak
// RSS benchmark. Both are generated once into the cache dir.
var (
	benchSynth    = synthSpec{Layers: 5, LayerBytes: 40 << 20, Seed: 1}
	benchSynthBig = synthSpec{Layers: 5, LayerBytes: 200 << 20, Seed: 2}
)

func benchPuller(b *testing.B, host, work string) *Puller {
	b.Helper()
	p, err := New(Config{WorkDir: work, Registry: registry.Config{Registries: []registry.Registry{{Prefix: host, Insecure: true}}}})
	if err != nil {
		b.Fatal(err)
	}
	return p
}

func shmDir(b *testing.B) string {
	b.Helper()
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		b.Skip("no /dev/shm tmpfs")
	}
	return "/dev/shm"
}

// BenchmarkPullZstd pulls the same synthetic image (5 layers, ~200 MB of
// files) compressed with gzip and with zstd (both written by
// klauspost/compress at its default level), alternating in one run onto
// tmpfs, and reports the seconds, sizes and the zstd/gzip ratio.
func BenchmarkPullZstd(b *testing.B) {
	regtest.Require(b, "docker-registry")
	shm := shmDir(b)
	reg := regtest.Start(b)
	ls := synthImage(b, benchSynth, "")
	gzBytes := pushSynth(b, reg.Host, "bench/synth", "gzip", ls, oci.Gzip)
	zstBytes := pushSynth(b, reg.Host, "bench/synth", "zstd", ls, oci.Zstd)
	ctx := context.Background()
	pull := func(tag string) (time.Duration, *Image) {
		work, err := os.MkdirTemp(shm, "cova-bench-")
		if err != nil {
			b.Fatal(err)
		}
		defer os.RemoveAll(work)
		p := benchPuller(b, reg.Host, work)
		start := time.Now()
		img, err := p.Pull(ctx, reg.Host+"/bench/synth:"+tag, PullOptions{})
		if err != nil {
			b.Fatal(err)
		}
		return time.Since(start), img
	}
	var gz, zst time.Duration
	var unpacked int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, img := pull("gzip")
		gz += d
		unpacked = img.Stats.UnpackedBytes
		d, _ = pull("zstd")
		zst += d
	}
	b.StopTimer()
	nf := float64(b.N)
	b.ReportMetric(float64(unpacked)/1e6, "unpacked-MB")
	b.ReportMetric(float64(gzBytes)/1e6, "gzip-MB")
	b.ReportMetric(float64(zstBytes)/1e6, "zstd-MB")
	b.ReportMetric(gz.Seconds()/nf, "gzip-s")
	b.ReportMetric(zst.Seconds()/nf, "zstd-s")
	b.ReportMetric(zst.Seconds()/gz.Seconds(), "zstd/gzip")
}

// BenchmarkPullSecondContainer measures what a pod's second container from
// the same image costs: cold = pull into an empty store + rootfs (upper
// dir; as root also the overlay mount, through PullImageWith in a private
// mount namespace), warm = the same again on the same store (manifest
// and config from the registry, layers from the store, a new rootfs). It
// reports both and warm/cold (goal ≤ 0.05).
func BenchmarkPullSecondContainer(b *testing.B) {
	regtest.Require(b, "docker-registry")
	shm := shmDir(b)
	reg := regtest.Start(b)
	ls := synthImage(b, benchSynth, "")
	pushSynth(b, reg.Host, "bench/synth", "gzip", ls, oci.Gzip)
	ref := reg.Host + "/bench/synth:gzip"
	ctx := context.Background()
	root := os.Geteuid() == 0
	// container makes one container's rootfs and returns how long it took.
	container := func(p *Puller, bundle string) time.Duration {
		start := time.Now()
		if root {
			if _, err := p.PullImageWith(ctx, ref, bundle, PullOptions{}); err != nil {
				b.Fatal(err)
			}
			return time.Since(start)
		}
		img, err := p.Pull(ctx, ref, PullOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.Store().PrepareRootfs(filepath.Base(bundle), img.Layers); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	var cold, warm time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		work, err := os.MkdirTemp(shm, "cova-bench-")
		if err != nil {
			b.Fatal(err)
		}
		p := benchPuller(b, reg.Host, work)
		inNS := inMountNS
		if !root {
			inNS = func(fn func() error) error { return fn() }
		}
		err = inNS(func() error {
			cold += container(p, filepath.Join(work, "bundles", "c1"))
			warm += container(p, filepath.Join(work, "bundles", "c2"))
			if root {
				for _, c := range []string{"c1", "c2"} {
					if err := p.ReleaseBundle(filepath.Join(work, "bundles", c)); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if m := p.Metrics(); m.LayersFromCache != uint64(len(ls)) || m.LayersFetched != uint64(len(ls)) {
			b.Fatalf("warm pull did not come from the store: %+v", m)
		}
		os.RemoveAll(work)
	}
	b.StopTimer()
	nf := float64(b.N)
	b.ReportMetric(cold.Seconds()/nf, "cold-s")
	b.ReportMetric(warm.Seconds()/nf*1000, "warm-ms")
	b.ReportMetric(warm.Seconds()/cold.Seconds(), "warm/cold")
}

// rssChildEnv makes the test binary a pull-only child for
// BenchmarkPullPeakRSS (see TestPullRSSChild).
const rssChildEnv = "COVA_IMAGEPULL_RSS_CHILD"

// TestPullRSSChild is not a test: run by BenchmarkPullPeakRSS in a child
// process (re-executing the test binary with rssChildEnv="ref work"), it
// pulls the image and prints its peak RSS (VmHWM) read from
// /proc/self/status at the end. Otherwise it skips.
func TestPullRSSChild(t *testing.T) {
	arg := os.Getenv(rssChildEnv)
	if arg == "" {
		t.Skip("only run as the child of BenchmarkPullPeakRSS")
	}
	ref, work, _ := strings.Cut(arg, " ")
	host, _, _ := strings.Cut(ref, "/")
	p, err := New(Config{WorkDir: work, Registry: registry.Config{Registries: []registry.Registry{{Prefix: host, Insecure: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	img, err := p.Pull(context.Background(), ref, PullOptions{})
	if err != nil {
		t.Fatal(err)
	}
	secs := time.Since(start).Seconds()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	hwm := ""
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			hwm = strings.TrimSuffix(strings.TrimSpace(v), " kB")
		}
	}
	fmt.Printf("RSSCHILD hwm_kb=%s unpacked=%d seconds=%f\n", hwm, img.Stats.UnpackedBytes, secs)
}

// rusageWrapEnv makes the test binary a wrapper that runs a command and
// prints its peak RSS (see TestRusageWrap).
const rusageWrapEnv = "COVA_IMAGEPULL_RUSAGE_WRAP"

// TestRusageWrap is not a test: run by BenchmarkPullPeakRSS with
// rusageWrapEnv set to a JSON argv, it runs that command and prints the
// command's maxrss from wait4. The detour is needed because Go starts
// processes with vfork semantics, and exec then records the parent's peak
// RSS (the benchmark holds the image in memory) as the child's maxrss; the
// wrapper is small, so what it adds is only its own few MB (measured by
// wrapping "true"). Otherwise it skips.
func TestRusageWrap(t *testing.T) {
	arg := os.Getenv(rusageWrapEnv)
	if arg == "" {
		t.Skip("only run as a helper of BenchmarkPullPeakRSS")
	}
	var argv []string
	if err := json.Unmarshal([]byte(arg), &argv); err != nil || len(argv) == 0 {
		t.Fatalf("bad %s: %v", rusageWrapEnv, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, rusageWrapEnv+"=") })
	out, err := cmd.CombinedOutput()
	os.Stdout.Write(out)
	if err != nil {
		t.Fatalf("%s: %v", argv[0], err)
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	fmt.Printf("RUSAGE maxrss_kb=%d\n", ru.Maxrss)
}

// maxRSS runs argv (with extra environment) under TestRusageWrap and
// returns its peak RSS in bytes and its output.
func maxRSS(b *testing.B, env []string, argv ...string) (int64, string) {
	b.Helper()
	j, _ := json.Marshal(argv)
	cmd := exec.Command(os.Args[0], "-test.run=^TestRusageWrap$", "-test.count=1")
	cmd.Env = append(append(os.Environ(), env...), rusageWrapEnv+"="+string(j))
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("%s: %v\n%s", argv[0], err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		var kb int64
		if _, err := fmt.Sscanf(line, "RUSAGE maxrss_kb=%d", &kb); err == nil {
			return kb * 1024, string(out)
		}
	}
	b.Fatalf("%s: no RUSAGE line:\n%s", argv[0], out)
	return 0, ""
}

// BenchmarkPullPeakRSS pulls a ~1 GB (unpacked) synthetic gzip image in a
// child process (the test binary re-executed in a pull-only mode, reading
// its own VmHWM at the end) and, in the same run, copies and unpacks it
// with skopeo and umoci. Every command, the child included, also runs
// under TestRusageWrap for wait4's maxrss; the wrapper's floor (its maxrss
// wrapping "true") is reported too. Goal: Cova's peak ≤ 64 MB.
func BenchmarkPullPeakRSS(b *testing.B) {
	regtest.Require(b, "docker-registry", "skopeo", "umoci")
	shm := shmDir(b)
	reg := regtest.Start(b)
	ls := synthImage(b, benchSynthBig, "")
	blobBytes := pushSynth(b, reg.Host, "bench/big", "gzip", ls, oci.Gzip)
	ref := reg.Host + "/bench/big:gzip"
	var covaHWM, covaRU, skopeoRU, umociRU, unpacked int64
	var covaSecs float64
	floor, _ := maxRSS(b, nil, "true")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		work, err := os.MkdirTemp(shm, "cova-bench-")
		if err != nil {
			b.Fatal(err)
		}
		ru, out := maxRSS(b, []string{rssChildEnv + "=" + ref + " " + work}, os.Args[0], "-test.run=^TestPullRSSChild$", "-test.count=1")
		var hwmKB int64
		var secs float64
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "RSSCHILD ") {
				if _, err := fmt.Sscanf(line, "RSSCHILD hwm_kb=%d unpacked=%d seconds=%f", &hwmKB, &unpacked, &secs); err != nil {
					b.Fatalf("child said %q: %v", line, err)
				}
			}
		}
		if hwmKB == 0 {
			b.Fatalf("child printed no peak RSS:\n%s", out)
		}
		covaHWM = max(covaHWM, hwmKB*1024)
		covaRU = max(covaRU, ru)
		covaSecs += secs
		os.RemoveAll(work)

		tmp, err := os.MkdirTemp(shm, "cova-bench-base-")
		if err != nil {
			b.Fatal(err)
		}
		ru, _ = maxRSS(b, nil, "skopeo", "copy", "--quiet", "--insecure-policy", "--src-tls-verify=false", "docker://"+ref, "oci:"+filepath.Join(tmp, "layout")+":v1")
		skopeoRU = max(skopeoRU, ru)
		ru, _ = maxRSS(b, nil, "umoci", "unpack", "--image", filepath.Join(tmp, "layout")+":v1", filepath.Join(tmp, "bundle"))
		umociRU = max(umociRU, ru)
		os.RemoveAll(tmp)
	}
	b.StopTimer()
	b.ReportMetric(float64(blobBytes)/1e6, "gzip-MB")
	b.ReportMetric(float64(unpacked)/1e6, "unpacked-MB")
	b.ReportMetric(covaSecs/float64(b.N), "cova-s")
	b.ReportMetric(float64(covaHWM)/1e6, "cova-VmHWM-MB")
	b.ReportMetric(float64(covaRU)/1e6, "cova-maxrss-MB")
	b.ReportMetric(float64(skopeoRU)/1e6, "skopeo-maxrss-MB")
	b.ReportMetric(float64(umociRU)/1e6, "umoci-maxrss-MB")
	b.ReportMetric(float64(floor)/1e6, "wrapper-floor-MB")
	b.ReportMetric(float64(max(skopeoRU, umociRU))/float64(covaRU), "skopeo+umoci/cova")
}
