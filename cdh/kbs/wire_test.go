package kbs

import (
	"crypto"
	"encoding/hex"
	"encoding/json"
	"errors"
	"testing"

	"github.com/containerd/errdefs"
)

// Golden digests computed independently (Python: json.dumps(sort_keys=True,
// separators=(",",":"), ensure_ascii=False) + hashlib), which equals JCS for
// these ASCII-keyed documents.
func TestRuntimeDigestGolden(t *testing.T) {
	const nonce = "c2FtcGxlIG5vbmNlIDMyIGJ5dGVzIGxvbmcgISEhIQ=="
	ec := TEEPubKey{Kty: "EC", Crv: "P-256", Alg: AlgECDHESA256KW,
		X: "WKn-ZIGevcwGIyyrzFoZNBdaq9_TsqzGl96oc0CWuis", Y: "y77t-RvAHRKTsSGdIYUfweuOvwrvDD-Q3Hv5J0fSKbE"}
	rsaKey := TEEPubKey{Kty: "RSA", Alg: AlgRSAOAEP256, N: "sXch", E: "AQAB"}
	for _, tc := range []struct {
		name       string
		key        TEEPubKey
		additional string
		want       string
	}{
		{"ec-no-devices", ec, "", "e817cdc0a5c796da00d9331711aa58c9b8c1d690dcca11c349c0e5809a2b2c1150adfcf17fc9b2d87863640332fa12bd"},
		{"ec-device", ec, `{"sampledevice":{"svn":"2","report_data":"<&>"}}`, "ebe9afedd7f73eb1e4b1550cf6e94065b3a1e1782cd976a987b33dedb439d70e51150340fa9f63b30bf5916937a3fdd5"},
		{"rsa", rsaKey, "", "7c40d4e15e11defced7b4b4d1748f47ec9c671109962fc524ab6ca3069d465e2cd8ccc0f76ace205b05ba4a09f57f6df"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := RuntimeDigest(crypto.SHA384, RuntimeData{Nonce: nonce, TEEPubKey: tc.key}, tc.additional)
			if err != nil || hex.EncodeToString(d) != tc.want {
				t.Fatalf("RuntimeDigest = %x, %v\nwant %s", d, err, tc.want)
			}
		})
	}
	rd := RuntimeData{Nonce: nonce, TEEPubKey: ec}
	for h, want := range map[crypto.Hash]string{
		crypto.SHA384: "38be26052009f59080a72c635c8e671b404b988343d31247d8d8e2e61a84799f041c71543d7f44a9f60054abdbd6240e",
		crypto.SHA512: "812cd449debb655dc6ec662224a7d4243781c6cb5dc3500f1881a14e6d28ec27943fe2eb7933ab5eacc5dbf34a1884d15ca8a501972e447bfecc659caada304e",
	} {
		d, err := DeviceRuntimeDigest(h, rd)
		if err != nil || hex.EncodeToString(d) != want {
			t.Fatalf("DeviceRuntimeDigest(%v) = %x, %v", h, d, err)
		}
	}
}

// TestSERuntimeDigestGolden: an SE nonce is the JSON text of the attestation
// request; it is hashed verbatim as a string (inner quotes escaped) with
// sha512. Golden value from Python as above.
func TestSERuntimeDigestGolden(t *testing.T) {
	const nonce = `{"request_blob":"3q2+7w==","measurement_size":64,"additional_size":32,"encr_measurement_key":"EREREQ==","encr_request_nonce":"IiIiIg==","image_hdr_tags":"AAEC/w=="}`
	ec := TEEPubKey{Kty: "EC", Crv: "P-256", Alg: AlgECDHESA256KW,
		X: "WKn-ZIGevcwGIyyrzFoZNBdaq9_TsqzGl96oc0CWuis", Y: "y77t-RvAHRKTsSGdIYUfweuOvwrvDD-Q3Hv5J0fSKbE"}
	const want = "4623d747302b2cb1484e46e44f1a5031d8d0865ab0d06e74996b21e354cb9f4728e086b154136ac061cd226fa15ad9b85e022eb70f421ff31ffe87832c32832b"
	d, err := RuntimeDigest(crypto.SHA512, RuntimeData{Nonce: nonce, TEEPubKey: ec}, "")
	if err != nil || hex.EncodeToString(d) != want {
		t.Fatalf("RuntimeDigest = %x, %v\nwant %s", d, err, want)
	}
}

func TestTEEPubKeyMembers(t *testing.T) {
	for _, alg := range []KeyAlgorithm{KeyECDHP256, KeyECDHP521, KeyRSAOAEP} {
		t.Run(string(alg), func(t *testing.T) {
			k, err := newTEEKey(alg)
			if err != nil {
				t.Fatal(err)
			}
			b, err := json.Marshal(k.pub)
			if err != nil {
				t.Fatal(err)
			}
			var m map[string]string
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{"kty": true, "crv": true, "alg": true, "x": true, "y": true}
			size := map[KeyAlgorithm]int{KeyECDHP256: 43, KeyECDHP521: 88}[alg] // b64url of 32 / 66 bytes
			if alg == KeyRSAOAEP {
				want = map[string]bool{"kty": true, "alg": true, "n": true, "e": true}
			}
			if len(m) != len(want) {
				t.Fatalf("members %v, want exactly %v", m, want)
			}
			for name := range m {
				if !want[name] {
					t.Fatalf("extra member %q in %s", name, b)
				}
			}
			switch alg {
			case KeyRSAOAEP:
				if m["e"] != "AQAB" || m["alg"] != "RSA-OAEP-256" || len(m["n"]) != 342 {
					t.Fatalf("RSA JWK %s", b)
				}
			default:
				if m["alg"] != "ECDH-ES+A256KW" || len(m["x"]) != size || len(m["y"]) != size {
					t.Fatalf("EC JWK %s", b)
				}
			}
		})
	}
}

func TestSelectedHash(t *testing.T) {
	for _, tc := range []struct {
		extra string
		want  crypto.Hash
		err   error
	}{
		{`""`, crypto.SHA384, nil},
		{``, crypto.SHA384, nil},
		{`null`, crypto.SHA384, nil},
		{`{}`, crypto.SHA384, nil},
		{`{"selected-hash-algorithm":"sha512"}`, crypto.SHA512, nil},
		{`{"selected-hash-algorithm":"SHA256"}`, crypto.SHA256, nil},
		{`{"selected-hash-algorithm":"sm3"}`, 0, errdefs.ErrNotImplemented},
		{`{"selected-hash-algorithm":"md5"}`, 0, errdefs.ErrNotImplemented},
		{`{"selected-hash-algorithm":384}`, 0, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.extra, func(t *testing.T) {
			h, err := SelectedHash(json.RawMessage(tc.extra))
			if h != tc.want || (tc.err == nil) != (err == nil) || (tc.err != nil && !errors.Is(err, tc.err)) {
				t.Fatalf("SelectedHash = %v, %v; want %v, %v", h, err, tc.want, tc.err)
			}
		})
	}
}

func TestParseKeyAlgorithm(t *testing.T) {
	for in, want := range map[string]KeyAlgorithm{"": KeyECDHP256, "ECDH-ES+A256KW-P256": KeyECDHP256, "ECDH-ES+A256KW-P521": KeyECDHP521, "RSA-OAEP-256": KeyRSAOAEP} {
		if got, err := ParseKeyAlgorithm(in); err != nil || got != want {
			t.Fatalf("ParseKeyAlgorithm(%q) = %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"RSA1_5", "ecdh-es+a256kw-p256", "ML-KEM-768+A192KW"} {
		if _, err := ParseKeyAlgorithm(in); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("ParseKeyAlgorithm(%q) = %v", in, err)
		}
	}
}
