package se

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func tags() []byte {
	t := make([]byte, 0, BootHdrTagsSize)
	t = append(t, bytes.Repeat([]byte{0x11}, 64)...)
	t = append(t, bytes.Repeat([]byte{0x22}, 64)...)
	t = append(t, bytes.Repeat([]byte{0x33}, 64)...)
	return append(t, bytes.Repeat([]byte{0x44}, 16)...)
}

// nonce is a KBS challenge nonce for SE as trustee builds it.
func nonce(mutate func(map[string]any)) string {
	m := map[string]any{
		"request_blob":         b64([]byte{0xde, 0xad, 0xbe, 0xef}),
		"measurement_size":     64,
		"additional_size":      32,
		"encr_measurement_key": b64(bytes.Repeat([]byte{0x11}, 32)),
		"encr_request_nonce":   b64(bytes.Repeat([]byte{0x22}, 16)),
		"image_hdr_tags":       b64(tags()),
	}
	if mutate != nil {
		mutate(m)
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// fakeUV answers with a measurement derived from the request.
type fakeUV struct {
	got AttestRequest
	err error
	res *AttestResult
}

func (f *fakeUV) Attest(_ context.Context, req AttestRequest) (*AttestResult, error) {
	f.got = req
	if f.err != nil {
		return nil, f.err
	}
	if f.res != nil {
		return f.res, nil
	}
	m := sha512.Sum512(append(append([]byte{}, req.ARCB...), req.UserData...))
	return &AttestResult{Measurement: m[:req.MeasurementSize], Additional: bytes.Repeat([]byte{0xad}, 20), CUID: [16]byte{0xaa, 0xbb}}, nil
}

func TestInjectAndEvidence(t *testing.T) {
	digest := sha512.Sum384([]byte("runtime data"))
	req, err := InjectRuntimeDigest(nonce(nil), digest[:])
	if err != nil {
		t.Fatal(err)
	}
	// Field order and encoding as serde serializes SeAttestationRequest.
	want := `{"request_blob":"3q2+7w==","measurement_size":64,"additional_size":32,"encr_measurement_key":"` + b64(bytes.Repeat([]byte{0x11}, 32)) +
		`","encr_request_nonce":"` + b64(bytes.Repeat([]byte{0x22}, 16)) + `","image_hdr_tags":"` + b64(tags()) + `","runtime_data_digest":"` + b64(digest[:]) + `"}`
	if string(req) != want {
		t.Fatalf("request\n got %s\nwant %s", req, want)
	}
	uv := &fakeUV{}
	a := New(uv)
	if a.Tee() != attester.TeeSE {
		t.Fatal("tee")
	}
	doc, err := a.Evidence(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	wantUD := append(digest[:], make([]byte, 16)...)
	if !bytes.Equal(uv.got.UserData, wantUD) || !bytes.Equal(uv.got.ARCB, []byte{0xde, 0xad, 0xbe, 0xef}) || uv.got.MeasurementSize != 64 || uv.got.AdditionalSize != 32 {
		t.Fatalf("UV call %+v", uv.got)
	}
	var keys []string
	dec := json.NewDecoder(bytes.NewReader(doc))
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	for dec.More() {
		k, _ := dec.Token()
		keys = append(keys, k.(string))
		var v string
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("field %s is not a base64 string: %v", k, err)
		}
	}
	if strings.Join(keys, ",") != "measurement,additional_data,user_data,cuid,encr_measurement_key,encr_request_nonce,image_hdr_tags" {
		t.Fatalf("evidence fields %v", keys)
	}
	var ev Evidence
	if err := json.Unmarshal(doc, &ev); err != nil {
		t.Fatal(err)
	}
	m := sha512.Sum512(append([]byte{0xde, 0xad, 0xbe, 0xef}, wantUD...))
	if !bytes.Equal(ev.Measurement, m[:]) || !bytes.Equal(ev.UserData, wantUD) || len(ev.CUID) != 16 || ev.CUID[0] != 0xaa ||
		len(ev.AdditionalData) != 20 || !bytes.Equal(ev.ImageHdrTags, tags()) || len(ev.EncrMeasurementKey) != 32 || len(ev.EncrRequestNonce) != 16 {
		t.Fatalf("evidence %+v", ev)
	}
}

func TestParseRequestErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		doc    string
		field  string
		digest []byte
	}{
		{"not-json", "{{", "document", nil},
		{"missing-request-blob", nonce(func(m map[string]any) { delete(m, "request_blob") }), "request_blob", nil},
		{"bad-base64", nonce(func(m map[string]any) { m["encr_request_nonce"] = "%%%" }), "encr_request_nonce", nil},
		{"blob-not-string", nonce(func(m map[string]any) { m["request_blob"] = []int{1, 2} }), "request_blob", nil},
		{"measurement-zero", nonce(func(m map[string]any) { m["measurement_size"] = 0 }), "measurement_size", nil},
		{"measurement-too-big", nonce(func(m map[string]any) { m["measurement_size"] = MaxMeasurement + 1 }), "measurement_size", nil},
		{"measurement-negative", nonce(func(m map[string]any) { m["measurement_size"] = -1 }), "measurement_size", nil},
		{"measurement-overflow", nonce(func(m map[string]any) { m["measurement_size"] = 1 << 33 }), "measurement_size", nil},
		{"additional-zero", nonce(func(m map[string]any) { m["additional_size"] = 0 }), "additional_size", nil},
		{"additional-too-big", nonce(func(m map[string]any) { m["additional_size"] = MaxAdditional + 1 }), "additional_size", nil},
		{"tags-short", nonce(func(m map[string]any) { m["image_hdr_tags"] = b64(make([]byte, 207)) }), "image_hdr_tags", nil},
		{"arcb-too-big", nonce(func(m map[string]any) { m["request_blob"] = b64(make([]byte, MaxARCB+1)) }), "request_blob", nil},
		{"digest-too-long", nonce(nil), "runtime_data_digest", make([]byte, 65)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.digest != nil {
				_, err = InjectRuntimeDigest(tc.doc, tc.digest)
			} else {
				_, err = ParseRequest([]byte(tc.doc))
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err = %v, want invalid argument naming %s", err, tc.field)
			}
		})
	}
	if _, err := ParseRequest(make([]byte, maxRequestJSON+1)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("oversized document: %v", err)
	}
}

func TestEvidenceErrors(t *testing.T) {
	ctx := context.Background()
	withDigest, _ := InjectRuntimeDigest(nonce(nil), make([]byte, 64))
	for _, tc := range []struct {
		name  string
		uv    UV
		req   []byte
		want  error
		field string
	}{
		{"no-runtime-digest", &fakeUV{}, []byte(nonce(nil)), errdefs.ErrInvalidArgument, "runtime_data_digest"},
		{"null-runtime-digest", &fakeUV{}, []byte(nonce(func(m map[string]any) { m["runtime_data_digest"] = nil })), errdefs.ErrInvalidArgument, "runtime_data_digest"},
		{"digest-too-long", &fakeUV{}, []byte(nonce(func(m map[string]any) { m["runtime_data_digest"] = b64(make([]byte, 65)) })), errdefs.ErrInvalidArgument, "too large"},
		{"uv-fails", &fakeUV{err: errdefs.ErrFailedPrecondition}, withDigest, errdefs.ErrFailedPrecondition, "attestation call"},
		{"uv-short-measurement", &fakeUV{res: &AttestResult{Measurement: make([]byte, 3)}}, withDigest, errdefs.ErrDataLoss, "measurement"},
		{"no-uv", nil, withDigest, errdefs.ErrNotImplemented, "ultravisor"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.uv).Evidence(ctx, tc.req)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err = %v, want %v naming %s", err, tc.want, tc.field)
			}
		})
	}
}

func TestBase64Lenient(t *testing.T) {
	doc := nonce(func(m map[string]any) { m["request_blob"] = "3q2-7w" })
	if _, err := ParseRequest([]byte(doc)); err == nil {
		t.Fatal("base64url accepted for a standard-base64 field")
	}
	doc = nonce(func(m map[string]any) { m["request_blob"] = "3q2+7w" })
	r, err := ParseRequest([]byte(doc))
	if err != nil || !bytes.Equal(r.RequestBlob, []byte{0xde, 0xad, 0xbe, 0xef}) {
		t.Fatalf("unpadded base64: %x, %v", r.RequestBlob, err)
	}
}

func TestAttestControlBlock(t *testing.T) {
	req := AttestRequest{ARCB: make([]byte, 0x300), UserData: bytes.Repeat([]byte{0x5a}, 64), MeasurementSize: 64, AdditionalSize: 32}
	cb := marshalAttestCB(req, 0x1000, 0x2000, 0x3000)
	be := binary.BigEndian
	if len(cb) != 0x138 || be.Uint64(cb[0:]) != 0x1000 || be.Uint64(cb[8:]) != 0x2000 || be.Uint64(cb[16:]) != 0x3000 ||
		!bytes.Equal(cb[24:24+64], req.UserData) || !bytes.Equal(cb[24+64:24+256], make([]byte, 192)) ||
		be.Uint32(cb[0x128:]) != 0x300 || be.Uint32(cb[0x12c:]) != 64 || be.Uint32(cb[0x130:]) != 32 || be.Uint16(cb[0x134:]) != 64 {
		t.Fatalf("uvio_attest layout wrong: %x", cb)
	}
	// The UV fills the config UID and the additional length.
	copy(cb[0x118:], bytes.Repeat([]byte{0xc1}, 16))
	be.PutUint32(cb[0x130:], 20)
	res, err := finishAttest(cb, make([]byte, 64), make([]byte, 32))
	if err != nil || len(res.Additional) != 20 || res.CUID[15] != 0xc1 {
		t.Fatalf("finish: %+v, %v", res, err)
	}
	be.PutUint32(cb[0x130:], 33)
	if _, err := finishAttest(cb, make([]byte, 64), make([]byte, 32)); !errors.Is(err, errdefs.ErrDataLoss) {
		t.Fatalf("additional length beyond buffer: %v", err)
	}
	icb := marshalIoctlCB(0xabcdef, 0x138)
	if len(icb) != 0x40 || be.Uint64(icb[8:]) != 0xabcdef || be.Uint32(icb[16:]) != 0x138 {
		t.Fatalf("uvio_ioctl_cb layout wrong: %x", icb)
	}
	for _, tc := range []struct {
		rc uint16
		ok bool
	}{{0x0001, true}, {0x0100, true}, {0x0000, false}, {0x0106, false}} {
		be.PutUint16(icb[4:], tc.rc)
		if err := checkIoctlCB(icb); (err == nil) != tc.ok {
			t.Fatalf("rc %#x: %v", tc.rc, err)
		}
	}
	if IoctlAttest != 3<<30|0x40<<16|'u'<<8|1 {
		t.Fatal("ioctl number")
	}
}

func TestCheckAttest(t *testing.T) {
	ok := AttestRequest{MeasurementSize: 64}
	for _, tc := range []struct {
		name  string
		req   AttestRequest
		field string
	}{
		{"measurement-zero", AttestRequest{}, "measurement size"},
		{"additional-too-big", AttestRequest{MeasurementSize: 1, AdditionalSize: MaxAdditional + 1}, "additional data size"},
		{"user-data-too-big", AttestRequest{MeasurementSize: 1, UserData: make([]byte, MaxUserData+1)}, "user data"},
		{"arcb-too-big", AttestRequest{MeasurementSize: 1, ARCB: make([]byte, MaxARCB+1)}, "attestation request"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := checkAttest(tc.req); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err = %v", err)
			}
		})
	}
	if err := checkAttest(ok); err != nil {
		t.Fatal(err)
	}
	if _, err := (DeviceUV{}).Attest(context.Background(), ok); err == nil {
		t.Fatal("DeviceUV worked without /dev/uv")
	}
}

func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(nonce(nil)))
	withDigest, _ := InjectRuntimeDigest(nonce(nil), make([]byte, 48))
	f.Add(withDigest)
	f.Add([]byte(`{"measurement_size":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRequest(b)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if len(r.ImageHdrTags) != BootHdrTagsSize || r.MeasurementSize == 0 {
			t.Fatal("invalid request accepted")
		}
		out, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		r2, err := ParseRequest(out)
		if err != nil || !bytes.Equal(r2.RequestBlob, r.RequestBlob) || !bytes.Equal(r2.RuntimeDataDigest, r.RuntimeDataDigest) {
			t.Fatalf("round trip: %v", err)
		}
		if ud, err := r.UserData(); err == nil && len(ud) != UserDataSize {
			t.Fatal("user data size")
		}
	})
}
