package imagepull

import (
	"archive/tar"
	"bytes"
	"testing"

	"github.com/klauspost/compress/gzip"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/reference"
	"github.com/cova-project/cova/test/regtest"
)

type tent struct {
	typ        byte
	name, link string
	body       []byte
}

func file(name, body string) tent      { return tent{typ: tar.TypeReg, name: name, body: []byte(body)} }
func symlink(target, name string) tent { return tent{typ: tar.TypeSymlink, name: name, link: target} }

func tarOf(t testing.TB, es ...tent) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Typeflag: e.typ, Name: e.name, Linkname: e.link, Mode: 0o644, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.body)
	}
	tw.Close()
	return b.Bytes()
}

func gzipBytes(t testing.TB, raw []byte) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write(raw)
	zw.Close()
	return b.Bytes()
}

type gzLayer struct {
	blob   []byte
	diffID oci.Digest
}

func tarGz(t testing.TB, raw []byte) gzLayer {
	return gzLayer{blob: gzipBytes(t, raw), diffID: oci.FromBytes(raw)}
}

func tarLayer(t testing.TB, es ...tent) regtest.Layer {
	l := tarGz(t, tarOf(t, es...))
	return regtest.Layer{Blob: l.blob, MediaType: oci.MediaTypeOCILayerGzip, DiffID: l.diffID}
}

func mustRef(t testing.TB, s string) reference.Reference {
	r, err := reference.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}
