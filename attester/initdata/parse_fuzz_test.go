package initdata

import (
	"bytes"
	"errors"
	"maps"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzParse fuzzes the TOML document itself (FuzzDecode reaches Parse only
// through valid gzip data, which mutation rarely keeps).
func FuzzParse(f *testing.F) {
	for _, alg := range []string{"sha256", "sha384", "sha512", "md5"} {
		f.Add(doc(alg))
	}
	for _, s := range []string{
		"version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n",
		"version = \"0.1.0\"\nalgorithm = \"sha256\"\ndata = {}\nother = 1\n",
		"version = \"0.2.0\"\nalgorithm = \"sha256\"\n[data]\n",
		"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"policy.rego\" = 1\n",
		"version = \"0.1.0\"\nalgorithm = \"sha256\"\ndata = \"x\"\n",
		"version = 1\n",
		"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"a\" = \"\"\"\nmulti\nline\"\"\"\n[data.sub]\n",
		"\xff",
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := Parse(b)
		if err != nil {
			if id != nil {
				t.Fatal("error with a result")
			}
			if !errors.Is(err, ErrSyntax) && !errors.Is(err, ErrVersion) && !errors.Is(err, ErrAlgorithm) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error of no documented kind: %v", err)
			}
			if IsNotPresent(err) {
				t.Fatalf("a bad document reads as absent initdata: %v", err)
			}
			return
		}
		if id.Version != Version {
			t.Fatalf("version %q accepted", id.Version)
		}
		h, ok := algorithms[id.Algorithm]
		if !ok || h != id.Hash {
			t.Fatalf("algorithm %q / %v accepted", id.Algorithm, id.Hash)
		}
		// The digest is over the exact bytes, never a re-encoding.
		hh := h.New()
		hh.Write(b)
		if !bytes.Equal(id.Digest, hh.Sum(nil)) || !bytes.Equal(id.TOML, b) {
			t.Fatal("digest or document differs from the input bytes")
		}
		if id.Data == nil {
			t.Fatal("accepted document without a data table")
		}
		for _, k := range id.Keys() {
			if _, ok := id.Data[k]; !ok {
				t.Fatalf("Keys lists %q, not in Data", k)
			}
		}
		want, wantOK := id.Data[KeyPolicy]
		if v, ok := id.Policy(); v != want || ok != wantOK {
			t.Fatal("Policy() disagrees with Data")
		}
		// The same content written out again parses to the same table.
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(map[string]any{"version": id.Version, "algorithm": id.Algorithm, "data": id.Data}); err != nil {
			t.Fatalf("re-encoding: %v", err)
		}
		again, err := Parse(buf.Bytes())
		if err != nil {
			t.Fatalf("re-encoded document rejected: %v\n%s", err, buf.Bytes())
		}
		if again.Algorithm != id.Algorithm || !maps.Equal(again.Data, id.Data) {
			t.Fatalf("re-encoded document differs:\n%q\n%q", id.Data, again.Data)
		}
	})
}
