package snp

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	mrand "math/rand/v2"
	"testing"

	"github.com/containerd/errdefs"
)

// reservedMasked returns raw with every byte the report format reserves (for
// raw's version and generation) cleared: what a parse and re-encode must
// reproduce. The layout is written out here, apart from ParseReport, so the
// two can disagree.
func reservedMasked(raw []byte, version uint32, gen Generation) []byte {
	b := bytes.Clone(raw)
	zero := func(from, to int) { clear(b[from:to]) }
	zero(0x4C, 0x50)
	for _, off := range []int{0x38, 0x180, 0x1E0, 0x1F0} { // the four TCB_VERSIONs
		if gen == Turin {
			zero(off+4, off+7)
		} else {
			zero(off+2, off+6)
		}
	}
	if version == 2 {
		zero(0x188, 0x1A0)
	} else {
		zero(0x18B, 0x1A0)
	}
	zero(0x1EB, 0x1EC)
	zero(0x1EF, 0x1F0)
	if version >= 5 {
		zero(0x208, 0x2A0)
	} else {
		zero(0x1F8, 0x2A0)
	}
	zero(0x2A0+144, ReportSize)
	return b
}

// templates are deterministic raw reports of each layout (reserved bytes
// zero, every defined field filled), the bases FuzzReportRoundTrip edits.
var templates = func() [][]byte {
	var out [][]byte
	for i, v := range []struct {
		version uint32
		gen     Generation
	}{{2, Genoa}, {2, Turin}, {3, Milan}, {4, Genoa}, {5, Genoa}, {5, Turin}} {
		b := make([]byte, ReportSize)
		r := mrand.New(mrand.NewChaCha8([32]byte{byte(i)}))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		binary.LittleEndian.PutUint32(b, v.version)
		if v.version == 2 {
			if v.gen == Turin {
				clear(b[0x1A8:0x1E0])
				b[0x1A0] |= 1
			} else {
				b[0x1DF] |= 1
			}
		} else {
			fam := map[Generation][2]byte{Milan: {0x19, 0x01}, Genoa: {0x19, 0xA1}, Turin: {0x1A, 0x02}}[v.gen]
			b[0x188], b[0x189] = fam[0], fam[1]
		}
		out = append(out, reservedMasked(b, v.version, v.gen))
	}
	return out
}()

// editReport builds a raw report from a template and an edit script of
// 3-byte (offset high, offset low, value) triples, so inputs stay small
// (a whole 1184-byte report makes the fuzzer's minimisation crawl).
func editReport(base uint8, script []byte) []byte {
	raw := bytes.Clone(templates[int(base)%len(templates)])
	for i := 0; i+3 <= len(script); i += 3 {
		raw[int(binary.BigEndian.Uint16(script[i:]))%ReportSize] = script[i+2]
	}
	return raw
}

// FuzzReportRoundTrip: raw report -> Report -> JSON (the sev crate shape) ->
// Report -> raw gives back the input with its reserved bytes cleared, and
// the JSON is stable.
func FuzzReportRoundTrip(f *testing.F) {
	for i := range templates {
		f.Add(uint8(i), []byte{})
	}
	f.Add(uint8(2), []byte{0x01, 0x88, 0x1A, 0x01, 0x89, 0x11}) // v3 turned Turin
	f.Add(uint8(0), []byte{0x00, 0x00, 0x05, 0x01, 0x88, 0x19}) // v2 turned v5
	f.Add(uint8(1), []byte{0x00, 0x00, 0x01})                   // version 1
	f.Add(uint8(3), []byte{0x00, 0x4C, 0xFF, 0x05, 0xA0, 0xFF}) // reserved bytes set
	f.Fuzz(func(t *testing.T, base uint8, script []byte) {
		if len(script) > 3*64 {
			return
		}
		raw := editReport(base, script)
		rep, err := ParseReport(raw)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) && !errors.Is(err, errdefs.ErrNotImplemented) {
				t.Fatalf("error without a class: %v", err)
			}
			if raw[0] >= 2 && raw[1]|raw[2]|raw[3] == 0 && raw[0] != 2 {
				// v3+: only an unknown CPUID family/model may fail.
				if _, gerr := IdentifyCPU(raw[0x188], raw[0x189]); gerr == nil {
					t.Fatalf("known CPU rejected: %v", err)
				}
			}
			return
		}
		gen, err := rep.Generation()
		if err != nil {
			t.Fatalf("parsed report has no generation: %v", err)
		}
		if (rep.CurrentTCB.FMC != nil) != (gen == Turin) || (rep.CPUIDFamID != nil) != (rep.Version >= 3) || (rep.LaunchMitVector != nil) != (rep.Version >= 5) {
			t.Fatalf("optional fields wrong for version %d %v: %+v", rep.Version, gen, rep)
		}
		js, err := json.Marshal(rep)
		if err != nil {
			t.Fatal(err)
		}
		var back Report
		if err := json.Unmarshal(js, &back); err != nil {
			t.Fatalf("report JSON does not decode: %v", err)
		}
		out, err := back.Bytes()
		if err != nil {
			t.Fatalf("decoded report does not encode: %v", err)
		}
		if want := reservedMasked(raw, rep.Version, gen); !bytes.Equal(out, want) {
			t.Fatalf("raw -> JSON -> raw differs at %#x", firstDiff(out, want))
		}
		again, err := ParseReport(out)
		if err != nil {
			t.Fatalf("re-encoded report rejected: %v", err)
		}
		js2, err := json.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(js, js2) {
			t.Fatalf("JSON differs after a round trip:\n%s\n%s", js, js2)
		}
	})
}

// FuzzReportJSON: a report given as JSON that encodes to raw bytes encodes
// to a raw report that parses, and the parse encodes to the same bytes.
func FuzzReportJSON(f *testing.F) {
	for _, v := range []struct {
		version uint32
		gen     Generation
	}{{2, Genoa}, {3, Milan}, {5, Turin}} {
		rep, err := ParseReport(randomReport(v.version, v.gen))
		if err != nil {
			f.Fatal(err)
		}
		js, err := json.Marshal(rep)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(js)
	}
	f.Add([]byte(`{"version":3,"cpuid_fam_id":25,"cpuid_mod_id":1,"current_tcb":{"fmc":9,"snp":300}}`))
	f.Add([]byte(`{"version":5,"cpuid_fam_id":26,"cpuid_mod_id":2,"launch_mit_vector":null}`))
	f.Fuzz(func(t *testing.T, js []byte) {
		var rep Report
		if json.Unmarshal(js, &rep) != nil {
			return
		}
		raw, err := rep.Bytes()
		if err != nil {
			if !errors.Is(err, errdefs.ErrNotImplemented) {
				t.Fatalf("error without a class: %v", err)
			}
			return
		}
		if len(raw) != ReportSize {
			t.Fatalf("%d bytes", len(raw))
		}
		back, err := ParseReport(raw)
		if err != nil {
			t.Fatalf("encoded report rejected: %v", err)
		}
		if back.ReportData != rep.ReportData || back.Measurement != rep.Measurement || back.HostData != rep.HostData || back.Signature != rep.Signature {
			t.Fatal("bound fields changed in the round trip")
		}
		raw2, err := back.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, raw2) {
			t.Fatalf("JSON -> raw -> JSON -> raw differs at %#x", firstDiff(raw, raw2))
		}
	})
}
