package oci

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// classed reports whether err carries one of the classes the parsers use.
func classed(err error) bool {
	return errors.Is(err, errdefs.ErrInvalidArgument) || errors.Is(err, errdefs.ErrNotImplemented)
}

// checkDigest fails unless d is a digest ParseDigest would build.
func checkDigest(t *testing.T, field string, d Digest) {
	t.Helper()
	if d.IsZero() {
		t.Fatalf("%s: zero digest accepted", field)
	}
	back, err := ParseDigest(d.String())
	if err != nil || back != d {
		t.Fatalf("%s: digest %q does not parse back: %v", field, d, err)
	}
	if strings.ContainsAny(d.Hex(), "/.\\:") {
		t.Fatalf("%s: digest hex %q holds path characters", field, d.Hex())
	}
}

func FuzzParseDigest(f *testing.F) {
	for _, s := range []string{dgA, "sha512:" + strings.Repeat("ab", 64), "sha256:../../etc/passwd", "sha256:" + strings.Repeat("A", 64), "md5:00", ":", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDigest(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error without a class: %v", err)
			}
			return
		}
		if d.String() != s {
			t.Fatalf("ParseDigest(%q).String() = %q", s, d)
		}
		checkDigest(t, "digest", d)
		if want := map[string]int{SHA256: 64, SHA512: 128}[d.Algorithm()]; len(d.Hex()) != want {
			t.Fatalf("%s digest with %d hex characters", d.Algorithm(), len(d.Hex()))
		}
		var back Digest
		if err := back.UnmarshalText([]byte(s)); err != nil || back != d {
			t.Fatalf("UnmarshalText disagrees with ParseDigest: %v", err)
		}
	})
}

func FuzzParseDocument(f *testing.F) {
	index := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":5,"platform":{"os":"linux","architecture":"amd64"}},{"mediaType":%q,"digest":%q,"size":7,"platform":{"os":"linux","architecture":"arm64","variant":"v8"},"annotations":{"a":"b"}}]}`,
		MediaTypeOCIIndex, MediaTypeOCIManifest, dgA, MediaTypeDockerManifest, dgB)
	for _, s := range []struct {
		body, ct, desc string
		max            uint8
	}{
		{manifestJSON(MediaTypeOCIManifest, 2), MediaTypeOCIManifest, "", 0},
		{manifestJSON(MediaTypeDockerManifest, 1), MediaTypeDockerManifest + "; charset=utf-8", "", 0},
		{manifestJSON("", 3), "application/json", MediaTypeOCIManifest, 2},
		{manifestJSON(MediaTypeOCIManifest, 1), MediaTypeOCIIndex, "", 0},
		{index, MediaTypeOCIIndex, MediaTypeOCIIndex, 0},
		{strings.Replace(index, `"mediaType":"`+MediaTypeOCIIndex+`",`, "", 1), "", "", 0},
		{fmt.Sprintf(`{"schemaVersion":2,"manifests":[],"layers":[],"config":{"digest":%q,"size":1}}`, dgA), "", "", 0},
		{`{"schemaVersion":1,"fsLayers":[]}`, "", "", 0},
		{strings.Replace(manifestJSON(MediaTypeOCIManifest, 1), MediaTypeOCILayerGzip, MediaTypeOCILayerZstd+MediaTypeEncryptedSuffix, 1), "", "", 0},
		{`{"schemaVersion":2,"annotations":{},"layers":null,"config":null}`, "", "", 0},
	} {
		f.Add([]byte(s.body), s.ct, s.desc, s.max)
	}
	f.Fuzz(func(t *testing.T, body []byte, ct, desc string, maxLayers uint8) {
		m, idx, err := ParseDocument(body, ct, desc, int(maxLayers))
		if err != nil {
			if m != nil || idx != nil {
				t.Fatal("error with a result")
			}
			if !classed(err) {
				t.Fatalf("error without a class: %v", err)
			}
			return
		}
		if (m == nil) == (idx == nil) {
			t.Fatalf("want exactly one of manifest and index, got %v and %v", m, idx)
		}
		// The media types named by the Content-Type and the descriptor agree
		// with the result.
		for _, named := range []string{strings.TrimSpace(strings.Split(ct, ";")[0]), desc} {
			if !knownDocType(named) {
				continue
			}
			got := ""
			if m != nil {
				got = m.MediaType
			} else {
				got = idx.MediaType
			}
			if got != named {
				t.Fatalf("accepted a %s document described as %s", got, named)
			}
		}
		limit := int(maxLayers)
		if limit == 0 {
			limit = DefaultMaxLayers
		}
		var again []byte
		if m != nil {
			if !isManifestType(m.MediaType) {
				t.Fatalf("manifest with media type %q", m.MediaType)
			}
			if len(m.Layers) > limit {
				t.Fatalf("%d layers accepted, limit %d", len(m.Layers), limit)
			}
			checkDigest(t, "config", m.Config.Digest)
			if m.Config.Size < 0 || m.Config.Size > MaxConfigBytes {
				t.Fatalf("config size %d accepted", m.Config.Size)
			}
			for i, l := range m.Layers {
				checkDigest(t, fmt.Sprintf("layers[%d]", i), l.Digest)
				if l.Size < 0 {
					t.Fatalf("layers[%d]: size %d accepted", i, l.Size)
				}
				if _, err := ParseLayerMediaType(l.MediaType); err != nil {
					t.Fatalf("layers[%d]: %v", i, err)
				}
			}
			again = mustMarshal(t, m)
		} else {
			if !isIndexType(idx.MediaType) {
				t.Fatalf("index with media type %q", idx.MediaType)
			}
			if len(idx.Manifests) > 1024 {
				t.Fatalf("index with %d entries", len(idx.Manifests))
			}
			for i, d := range idx.Manifests {
				checkDigest(t, fmt.Sprintf("manifests[%d]", i), d.Digest)
				if d.Size < 0 || d.Size > MaxManifestBytes {
					t.Fatalf("manifests[%d]: size %d accepted", i, d.Size)
				}
			}
			for _, p := range []Platform{DefaultPlatform(), {OS: "linux", Architecture: "arm64", Variant: "v8"}} {
				d, err := idx.SelectManifest(p)
				if err != nil {
					if !errors.Is(err, errdefs.ErrNotFound) {
						t.Fatalf("SelectManifest: %v", err)
					}
					continue
				}
				if d.Platform == nil || !p.Matches(*d.Platform) {
					t.Fatalf("SelectManifest(%s) picked %+v", p, d.Platform)
				}
			}
			again = mustMarshal(t, idx)
		}
		// What was accepted, written out again, parses again to the same
		// document, whatever the transport says.
		m2, idx2, err := ParseDocument(again, "", "", int(maxLayers))
		if err != nil {
			t.Fatalf("re-marshalled document rejected: %v\n%s", err, again)
		}
		var third []byte
		if m2 != nil {
			third = mustMarshal(t, m2)
		} else {
			third = mustMarshal(t, idx2)
		}
		if !bytes.Equal(again, third) {
			t.Fatalf("round trip differs:\n%s\n%s", again, third)
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	good := fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%q,%q]},"config":{"Env":["A=1"],"Entrypoint":["/bin/sh"],"ExposedPorts":{"80/tcp":{}},"Labels":{"k":"v"}}}`, dgA, dgB)
	f.Add([]byte(good), uint8(2))
	f.Add([]byte(good), uint8(1))
	f.Add([]byte(`{"rootfs":{"type":"layers","diff_ids":[]}}`), uint8(0))
	f.Add([]byte(`{"rootfs":{"type":"layers","diff_ids":[""]}}`), uint8(1))
	f.Fuzz(func(t *testing.T, body []byte, layers uint8) {
		c, err := ParseConfig(body, int(layers))
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("error without a class: %v", err)
			}
			return
		}
		if c.RootFS.Type != "layers" || len(c.RootFS.DiffIDs) != int(layers) {
			t.Fatalf("accepted rootfs %+v for %d layers", c.RootFS, layers)
		}
		for i, d := range c.RootFS.DiffIDs {
			checkDigest(t, fmt.Sprintf("diff_ids[%d]", i), d)
		}
		again := mustMarshal(t, c)
		c2, err := ParseConfig(again, int(layers))
		if err != nil {
			t.Fatalf("re-marshalled config rejected: %v\n%s", err, again)
		}
		if third := mustMarshal(t, c2); !bytes.Equal(again, third) {
			t.Fatalf("round trip differs:\n%s\n%s", again, third)
		}
	})
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %T: %v", v, err)
	}
	return b
}
