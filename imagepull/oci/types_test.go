package oci

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

var (
	dgA = FromBytes([]byte("a")).String()
	dgB = FromBytes([]byte("b")).String()
)

func manifestJSON(mt string, layers int) string {
	var ls []string
	for i := 0; i < layers; i++ {
		ls = append(ls, fmt.Sprintf(`{"mediaType":%q,"digest":%q,"size":1}`, MediaTypeOCILayerGzip, dgB))
	}
	mtField := ""
	if mt != "" {
		mtField = fmt.Sprintf(`"mediaType":%q,`, mt)
	}
	return fmt.Sprintf(`{"schemaVersion":2,%s"config":{"mediaType":%q,"digest":%q,"size":10},"layers":[%s]}`,
		mtField, MediaTypeOCIConfig, dgA, strings.Join(ls, ","))
}

func TestParseDocument(t *testing.T) {
	index := fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"manifests":[{"mediaType":%q,"digest":%q,"size":5,"platform":{"os":"linux","architecture":"amd64"}}]}`,
		MediaTypeOCIIndex, MediaTypeOCIManifest, dgA)
	tests := []struct {
		name       string
		body       string
		ct, desc   string
		wantIndex  bool
		wantErr    error
		wantLayers int
	}{
		{name: "oci manifest", body: manifestJSON(MediaTypeOCIManifest, 2), ct: MediaTypeOCIManifest, wantLayers: 2},
		{name: "docker manifest", body: manifestJSON(MediaTypeDockerManifest, 1), ct: MediaTypeDockerManifest, wantLayers: 1},
		{name: "no mediaType field uses content type", body: manifestJSON("", 1), ct: MediaTypeOCIManifest, wantLayers: 1},
		{name: "no media type anywhere", body: manifestJSON("", 0), ct: "application/json"},
		{name: "index", body: index, ct: MediaTypeOCIIndex, wantIndex: true},
		{name: "content type disagrees", body: manifestJSON(MediaTypeOCIManifest, 1), ct: MediaTypeOCIIndex, wantErr: errdefs.ErrInvalidArgument},
		{name: "descriptor disagrees", body: manifestJSON(MediaTypeOCIManifest, 1), desc: MediaTypeDockerManifest, wantErr: errdefs.ErrInvalidArgument},
		{name: "both manifests and layers", body: fmt.Sprintf(`{"schemaVersion":2,"manifests":[],"layers":[],"config":{"digest":%q,"size":1}}`, dgA), wantErr: errdefs.ErrInvalidArgument},
		{name: "index with config", body: fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"digest":%q,"size":1}}`, MediaTypeOCIIndex, dgA), wantErr: errdefs.ErrInvalidArgument},
		{name: "schema1", body: `{"schemaVersion":1,"fsLayers":[]}`, wantErr: errdefs.ErrNotImplemented},
		{name: "schema version 3", body: `{"schemaVersion":3}`, wantErr: errdefs.ErrInvalidArgument},
		{name: "not json", body: `{`, wantErr: errdefs.ErrInvalidArgument},
		{name: "bad layer digest", body: strings.Replace(manifestJSON(MediaTypeOCIManifest, 1), dgB, "sha256:../../etc/passwd", 1), wantErr: errdefs.ErrInvalidArgument},
		{name: "too many layers", body: manifestJSON(MediaTypeOCIManifest, DefaultMaxLayers+1), wantErr: errdefs.ErrInvalidArgument},
		{name: "negative size", body: strings.Replace(manifestJSON(MediaTypeOCIManifest, 1), `"size":1}`, `"size":-1}`, 1), wantErr: errdefs.ErrInvalidArgument},
		{name: "huge config", body: strings.Replace(manifestJSON(MediaTypeOCIManifest, 0), `"size":10`, `"size":99999999`, 1), wantErr: errdefs.ErrInvalidArgument},
		{name: "unknown layer type", body: strings.Replace(manifestJSON(MediaTypeOCIManifest, 1), MediaTypeOCILayerGzip, "application/x-evil", 1), wantErr: errdefs.ErrNotImplemented},
		{name: "artifact config", body: strings.Replace(manifestJSON(MediaTypeOCIManifest, 1), MediaTypeOCIConfig, "application/vnd.cncf.helm.config.v1+json", 1), wantErr: errdefs.ErrNotImplemented},
		{name: "oversized", body: `{"schemaVersion":2,"x":"` + strings.Repeat("a", MaxManifestBytes) + `"}`, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, idx, err := ParseDocument([]byte(tc.body), tc.ct, tc.desc, 0)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantIndex {
				if idx == nil || m != nil {
					t.Fatalf("want index, got %v %v", m, idx)
				}
				return
			}
			if m == nil || len(m.Layers) != tc.wantLayers {
				t.Fatalf("want manifest with %d layers, got %+v", tc.wantLayers, m)
			}
		})
	}
}

func TestSelectManifest(t *testing.T) {
	mk := func(os, arch, variant string) Descriptor {
		return Descriptor{MediaType: MediaTypeOCIManifest, Digest: FromBytes([]byte(os + arch + variant)), Size: 1,
			Platform: &Platform{OS: os, Architecture: arch, Variant: variant}}
	}
	idx := &Index{Manifests: []Descriptor{
		{MediaType: MediaTypeOCIManifest, Digest: FromBytes([]byte("noplatform")), Size: 1},
		mk("unknown", "unknown", ""),
		mk("linux", "arm", "v6"),
		mk("linux", "arm", "v7"),
		mk("linux", "arm64", "v8"),
		mk("linux", "amd64", ""),
	}}
	tests := []struct {
		want Platform
		got  string // expected os+arch+variant of the pick, "" = not found
	}{
		{Platform{OS: "linux", Architecture: "amd64"}, "linuxamd64"},
		{Platform{OS: "linux", Architecture: "arm64"}, "linuxarm64v8"},
		{Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, "linuxarm64v8"},
		{Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, "linuxarmv7"},
		{Platform{OS: "linux", Architecture: "arm"}, "linuxarmv6"},
		{Platform{OS: "linux", Architecture: "s390x"}, ""},
		{Platform{OS: "windows", Architecture: "amd64"}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.want.String(), func(t *testing.T) {
			d, err := idx.SelectManifest(tc.want)
			if tc.got == "" {
				if !errors.Is(err, errdefs.ErrNotFound) {
					t.Fatalf("got %v, %v; want ErrNotFound", d, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.Digest != FromBytes([]byte(tc.got)) {
				t.Fatalf("picked %v", d.Platform)
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	good := fmt.Sprintf(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[%q]},"config":{"Env":["A=1"]}}`, dgA)
	tests := []struct {
		name   string
		body   string
		layers int
		ok     bool
	}{
		{"good", good, 1, true},
		{"count mismatch", good, 2, false},
		{"bad type", strings.Replace(good, `"layers"`, `"other"`, 1), 1, false},
		{"bad diff id", strings.Replace(good, dgA, "sha256:abc", 1), 1, false},
		{"empty diff id", strings.Replace(good, dgA, "", 1), 1, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(tc.body), tc.layers)
			if tc.ok != (err == nil) {
				t.Fatalf("ParseConfig: %v", err)
			}
			if tc.ok && c.Config.Env[0] != "A=1" {
				t.Fatalf("env: %v", c.Config.Env)
			}
		})
	}
}
