package canonjson

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// RFC 8785 Appendix B: IEEE-754 bit patterns and their canonical text.
func TestFormatNumberRFC8785AppendixB(t *testing.T) {
	for _, tc := range []struct{ bits, want string }{
		{"0000000000000000", "0"},
		{"8000000000000000", "0"},
		{"0000000000000001", "5e-324"},
		{"8000000000000001", "-5e-324"},
		{"7fefffffffffffff", "1.7976931348623157e+308"},
		{"ffefffffffffffff", "-1.7976931348623157e+308"},
		{"4340000000000000", "9007199254740992"},
		{"c340000000000000", "-9007199254740992"},
		{"4430000000000000", "295147905179352830000"},
		{"44b52d02c7e14af5", "9.999999999999997e+22"},
		{"44b52d02c7e14af6", "1e+23"},
		{"44b52d02c7e14af7", "1.0000000000000001e+23"},
		{"444b1ae4d6e2ef4e", "999999999999999700000"},
		{"444b1ae4d6e2ef4f", "999999999999999900000"},
		{"444b1ae4d6e2ef50", "1e+21"},
		{"3eb0c6f7a0b5ed8c", "9.999999999999997e-7"},
		{"3eb0c6f7a0b5ed8d", "0.000001"},
		{"41b3de4355555553", "333333333.3333332"},
		{"41b3de4355555554", "333333333.33333325"},
		{"41b3de4355555555", "333333333.3333333"},
		{"41b3de4355555556", "333333333.3333334"},
		{"41b3de4355555557", "333333333.33333343"},
		{"becbf647612f3696", "-0.0000033333333333333333"},
		{"43143ff3c1cb0959", "1424953923781206.2"},
	} {
		t.Run(tc.bits, func(t *testing.T) {
			raw, err := hex.DecodeString(tc.bits)
			if err != nil {
				t.Fatal(err)
			}
			f := math.Float64frombits(binary.BigEndian.Uint64(raw))
			got, err := FormatNumber(f)
			if err != nil || got != tc.want {
				t.Fatalf("FormatNumber(%s) = %q, %v; want %q", tc.bits, got, err, tc.want)
			}
			// The same value through the parser.
			out, err := Canonicalize([]byte("[" + tc.want + "]"))
			if err != nil || string(out) != "["+tc.want+"]" {
				t.Fatalf("Canonicalize round trip = %q, %v", out, err)
			}
		})
	}
	for _, bits := range []string{"7fffffffffffffff", "7ff0000000000000", "fff0000000000000"} {
		t.Run("reject-"+bits, func(t *testing.T) {
			raw, _ := hex.DecodeString(bits)
			f := math.Float64frombits(binary.BigEndian.Uint64(raw))
			if _, err := FormatNumber(f); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("FormatNumber(%v) = %v, want invalid argument", f, err)
			}
		})
	}
}

// Inputs and outputs of RFC 8785 §3.2.2/§3.2.3 and of its reference
// implementation's test data (cyberphone/json-canonicalization testdata).
func TestCanonicalizeVectors(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"arrays", "[\n  56,\n  {\n    \"d\": true,\n    \"10\": null,\n    \"1\": [ ]\n  }\n]\n",
			`[56,{"1":[],"10":null,"d":true}]`},
		{"french", `{
  "peach": "This sorting order",
  "péché": "is wrong according to French",
  "pêche": "but canonicalization MUST",
  "sin":   "ignore locale"
}`, `{"peach":"This sorting order","péché":"is wrong according to French","pêche":"but canonicalization MUST","sin":"ignore locale"}`},
		{"structures", `{
  "1": {"f": {"f": "hi","F": 5} ,"\n": 56.0},
  "10": { },
  "": "empty",
  "a": { },
  "111": [ {"e": "yes","E": "no" } ],
  "A": { }
}`, `{"":"empty","1":{"\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{"E":"no","e":"yes"}],"A":{},"a":{}}`},
		{"unicode-not-normalized", `{"Unnormalized Unicode":"A\u030a"}`, "{\"Unnormalized Unicode\":\"A\u030a\"}"},
		{"values", `{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}`, `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`},
		{"weird", `{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\u000a": "Newline",
  "1": "One",
  "\u0080": "Control\u007f",
  "\ud83d\ude02": "Smiley",
  "\u00f6": "Latin Small Letter O With Diaeresis",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "</script>": "Browser Challenge"
}`, "{\"\\n\":\"Newline\",\"\\r\":\"Carriage Return\",\"1\":\"One\",\"</script>\":\"Browser Challenge\",\"\u0080\":\"Control\u007f\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😂\":\"Smiley\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
		// RFC 8785 §3.2.3: UTF-16 order puts U+1F600 (a surrogate pair,
		// 0xD83D…) before U+FB33, unlike code point order.
		{"rfc-sorting", `{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}`,
			"{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
		{"controls-and-no-html-escaping", `"\u0000\u0001\b\t\f\u001f<>&\u2028\u2029"`, "\"\\u0000\\u0001\\b\\t\\f\\u001f<>&\u2028\u2029\""},
		{"integers", `[0, -0, 1, -1, 100, 1e2, 123456789012, 0.5]`, `[0,0,1,-1,100,100,123456789012,0.5]`},
		{"kbs-runtime-data", `{"tee-pubkey":{"y":"Y","x":"X","kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW"},"nonce":"bm9uY2U=","additional-evidence":"{\"sampledevice\":{\"svn\":\"2\"}}"}`,
			`{"additional-evidence":"{\"sampledevice\":{\"svn\":\"2\"}}","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"X","y":"Y"}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Canonicalize([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
			again, err := Canonicalize(got)
			if err != nil || string(again) != string(got) {
				t.Fatalf("not idempotent: %s, %v", again, err)
			}
		})
	}
}

// The RFC's §3.2.4 UTF-8 bytes of the "values" example.
func TestCanonicalizeRFCBytes(t *testing.T) {
	const want = "7b226c69746572616c73223a5b6e756c6c2c747275652c66616c73655d2c226e756d62657273223a5b3333333333333333332e333333333333332c31652b33302c342e352c302e3030322c31652d32375d2c22737472696e67223a22e282ac245c75303030665c6e4127425c225c5c5c5c5c222f227d"
	got, err := Canonicalize([]byte(`{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],"string":"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/","literals":[null,true,false]}`))
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(got) != want {
		t.Fatalf("bytes %x\nwant  %s", got, want)
	}
}

func TestCanonicalizeRejects(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"empty", ""},
		{"duplicate", `{"a":1,"a":2}`},
		{"duplicate-by-escape", `{"a":1,"\u0061":2}`},
		{"lone-high-surrogate", `"\ud83d"`},
		{"lone-high-surrogate-then-char", `"\ud83dx"`},
		{"high-then-high", `"\ud83d\ud83d"`},
		{"lone-low-surrogate", `"\ude00"`},
		{"invalid-utf8", "\"\xff\""},
		{"raw-control", "\"a\nb\""},
		{"overflow", `1e400`},
		{"neg-overflow", `-1e400`},
		{"leading-zero", `01`},
		{"bare-dot", `1.`},
		{"plus", `+1`},
		{"nan", `NaN`},
		{"trailing", `{} x`},
		{"trailing-comma", `[1,]`},
		{"unterminated", `{"a":`},
		{"bad-escape", `"\x"`},
		{"single-quote", `'a'`},
		{"too-deep", strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := Canonicalize([]byte(tc.in))
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("Canonicalize(%q) = %q, %v; want invalid argument", tc.in, out, err)
			}
		})
	}
	if _, err := Canonicalize([]byte(strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth))); err != nil {
		t.Fatalf("depth %d rejected: %v", MaxDepth, err)
	}
}

func TestMarshal(t *testing.T) {
	type key struct {
		Y   string `json:"y"`
		X   string `json:"x"`
		Kty string `json:"kty"`
	}
	got, err := Marshal(map[string]any{"z": 1.5, "a": key{"y", "x", "EC"}, "h": "<&>"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"a":{"kty":"EC","x":"x","y":"y"},"h":"<&>","z":1.5}`; string(got) != want {
		t.Fatalf("got %s want %s", got, want)
	}
	if _, err := Marshal(math.Inf(1)); err == nil {
		t.Fatal("infinity marshalled")
	}
}

func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{`{"a":[1,2.5,"x"]}`, `"\ud83d\ude00"`, `[1e21,1e-7]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Canonicalize(in)
		if err != nil {
			return
		}
		again, err := Canonicalize(out)
		if err != nil || string(again) != string(out) {
			t.Fatalf("canonical form not stable: %q -> %q (%v)", out, again, err)
		}
	})
}
