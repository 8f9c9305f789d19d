// Package se implements the IBM Secure Execution (s390x) attester. The
// KBS challenge nonce of an SE guest is the JSON of an SeAttestationRequest
// (an encrypted attestation request control block made by the verifier,
// the expected measurement and additional-data sizes, and material the
// verifier needs back); the KBS client adds the runtime-data digest as
// runtime_data_digest (InjectRuntimeDigest) and hands the whole JSON to the
// attester in place of report data. The attester performs the Ultravisor's
// Retrieve Attestation Measurement call through /dev/uv with the digest
// zero-padded to 64 bytes as user data, and answers guest-components'
// SeAttestationResponse JSON: measurement, additional_data, user_data,
// cuid, encr_measurement_key, encr_request_nonce, image_hdr_tags, all
// standard base64.
//
// The request/response structures and the UV control-block encoding are
// portable and tested everywhere; only the ioctl itself builds on
// linux/s390x (elsewhere the UV is ErrNotImplemented).
package se

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
)

// Sizes and limits of the Ultravisor attestation call (uvdevice.h).
const (
	// UserDataSize is the user data the attester passes: the runtime-data
	// digest zero-padded to 64 bytes.
	UserDataSize = 64
	// MaxUserData is the UV user-data area.
	MaxUserData = 0x100
	// MaxARCB bounds the attestation request control block.
	MaxARCB = 0x100000
	// MaxMeasurement bounds measurement_size (which must be at least 1).
	MaxMeasurement = 0x8000
	// MaxAdditional bounds additional_size.
	MaxAdditional = 0x8000
	// CUIDSize is the configuration unique ID.
	CUIDSize = 16
	// BootHdrTagsSize is the SE header tags: page-list, address-list and
	// tweak-list digests (64 bytes each) and the header tag (16).
	BootHdrTagsSize = 0xd0
	// maxRequestJSON bounds the request document (a base64 ARCB of
	// MaxARCB plus the small fields).
	maxRequestJSON = 2 << 20
)

// Bytes is a byte string serialized as standard padded base64 (serde_with
// Base64); decoding also accepts unpadded input.
type Bytes []byte

// MarshalJSON implements json.Marshaler.
func (b Bytes) MarshalJSON() ([]byte, error) {
	return json.Marshal(base64.StdEncoding.EncodeToString(b))
}

// UnmarshalJSON implements json.Unmarshaler.
func (b *Bytes) UnmarshalJSON(data []byte) error {
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		return fmt.Errorf("not a base64 string: %w", err)
	}
	d, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		if d, err = base64.RawStdEncoding.DecodeString(s); err != nil {
			return fmt.Errorf("not standard base64: %w", err)
		}
	}
	*b = d
	return nil
}

// Request is guest-components' SeAttestationRequest (field order as
// serialized there).
type Request struct {
	RequestBlob        Bytes  `json:"request_blob"`
	MeasurementSize    uint32 `json:"measurement_size"`
	AdditionalSize     uint32 `json:"additional_size"`
	EncrMeasurementKey Bytes  `json:"encr_measurement_key"`
	EncrRequestNonce   Bytes  `json:"encr_request_nonce"`
	ImageHdrTags       Bytes  `json:"image_hdr_tags"`
	// RuntimeDataDigest is added by the KBS client; omitted when absent.
	RuntimeDataDigest Bytes `json:"runtime_data_digest,omitempty"`
}

// Evidence is guest-components' SeAttestationResponse.
type Evidence struct {
	Measurement        Bytes `json:"measurement"`
	AdditionalData     Bytes `json:"additional_data"`
	UserData           Bytes `json:"user_data"`
	CUID               Bytes `json:"cuid"`
	EncrMeasurementKey Bytes `json:"encr_measurement_key"`
	EncrRequestNonce   Bytes `json:"encr_request_nonce"`
	ImageHdrTags       Bytes `json:"image_hdr_tags"`
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("se request: %s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// ParseRequest decodes and validates a request document: JSON fields and
// base64, image_hdr_tags of exactly 208 bytes, request_blob within the UV
// limit, measurement_size 1..0x8000, additional_size 1..0x8000 (the
// attester needs additional data back, as upstream). Errors wrap
// errdefs.ErrInvalidArgument and name the field. runtime_data_digest may
// be absent here (CheckRuntimeDigest requires it).
func ParseRequest(b []byte) (*Request, error) {
	if len(b) > maxRequestJSON {
		return nil, invalid("document", "%d bytes, at most %d", len(b), maxRequestJSON)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		return nil, invalid("document", "not a JSON object: %v", err)
	}
	var r Request
	for _, f := range []struct {
		name     string
		dst      any
		optional bool
	}{
		{"request_blob", &r.RequestBlob, false},
		{"measurement_size", &r.MeasurementSize, false},
		{"additional_size", &r.AdditionalSize, false},
		{"encr_measurement_key", &r.EncrMeasurementKey, false},
		{"encr_request_nonce", &r.EncrRequestNonce, false},
		{"image_hdr_tags", &r.ImageHdrTags, false},
		{"runtime_data_digest", &r.RuntimeDataDigest, true},
	} {
		raw, ok := fields[f.name]
		if !ok || (f.optional && string(raw) == "null") {
			if f.optional {
				continue
			}
			return nil, invalid(f.name, "missing")
		}
		if err := json.Unmarshal(raw, f.dst); err != nil {
			return nil, invalid(f.name, "%v", err)
		}
	}
	switch {
	case len(r.RequestBlob) > MaxARCB:
		return nil, invalid("request_blob", "%d bytes, at most %d", len(r.RequestBlob), MaxARCB)
	case r.MeasurementSize < 1 || r.MeasurementSize > MaxMeasurement:
		return nil, invalid("measurement_size", "%d, want 1..%d", r.MeasurementSize, MaxMeasurement)
	case r.AdditionalSize < 1 || r.AdditionalSize > MaxAdditional:
		return nil, invalid("additional_size", "%d, want 1..%d (additional data is returned in the evidence)", r.AdditionalSize, MaxAdditional)
	case len(r.ImageHdrTags) != BootHdrTagsSize:
		return nil, invalid("image_hdr_tags", "%d bytes, want %d", len(r.ImageHdrTags), BootHdrTagsSize)
	}
	return &r, nil
}

// UserData returns the runtime-data digest zero-padded to 64 bytes: the UV
// user data. A missing digest or one longer than 64 bytes is an error
// naming runtime_data_digest.
func (r *Request) UserData() ([]byte, error) {
	if r.RuntimeDataDigest == nil {
		return nil, invalid("runtime_data_digest", "missing (the KBS client must add it)")
	}
	ud, err := attester.PadReportData(r.RuntimeDataDigest, UserDataSize)
	if err != nil {
		return nil, invalid("runtime_data_digest", "%d bytes, too large (at most %d)", len(r.RuntimeDataDigest), UserDataSize)
	}
	return ud, nil
}

// InjectRuntimeDigest is the KBS client's step for SE: parse the
// challenge nonce as a request, set runtime_data_digest to the digest of
// the runtime data, and return the JSON to pass to Evidence.
func InjectRuntimeDigest(nonce string, digest []byte) ([]byte, error) {
	r, err := ParseRequest([]byte(nonce))
	if err != nil {
		return nil, err
	}
	r.RuntimeDataDigest = append(Bytes{}, digest...)
	if _, err := r.UserData(); err != nil {
		return nil, err
	}
	return json.Marshal(r)
}

// AttestRequest is one Retrieve Attestation Measurement call.
type AttestRequest struct {
	ARCB            []byte
	UserData        []byte
	MeasurementSize uint32
	AdditionalSize  uint32
}

// AttestResult is the UV's answer.
type AttestResult struct {
	Measurement []byte
	Additional  []byte
	CUID        [CUIDSize]byte
}

// UV performs the attestation call (DeviceUV on s390x; a fake in tests).
type UV interface {
	Attest(ctx context.Context, req AttestRequest) (*AttestResult, error)
}

// Attester is the se attester.
type Attester struct {
	uv UV
}

// New returns an se attester using uv.
func New(uv UV) *Attester { return &Attester{uv: uv} }

// Tee implements attester.Attester.
func (a *Attester) Tee() attester.Tee { return attester.TeeSE }

// Evidence implements attester.Attester. request is the SeAttestationRequest
// JSON with runtime_data_digest set (see InjectRuntimeDigest), not a digest.
func (a *Attester) Evidence(ctx context.Context, request []byte) ([]byte, error) {
	r, err := ParseRequest(request)
	if err != nil {
		return nil, err
	}
	ud, err := r.UserData()
	if err != nil {
		return nil, err
	}
	if a.uv == nil {
		return nil, fmt.Errorf("se: no ultravisor device: %w", errdefs.ErrNotImplemented)
	}
	res, err := a.uv.Attest(ctx, AttestRequest{
		ARCB:            r.RequestBlob,
		UserData:        ud,
		MeasurementSize: r.MeasurementSize,
		AdditionalSize:  r.AdditionalSize,
	})
	if err != nil {
		return nil, fmt.Errorf("se: attestation call: %w", err)
	}
	if len(res.Measurement) != int(r.MeasurementSize) || len(res.Additional) > int(r.AdditionalSize) {
		return nil, fmt.Errorf("se: UV returned %d measurement and %d additional bytes for sizes %d/%d: %w",
			len(res.Measurement), len(res.Additional), r.MeasurementSize, r.AdditionalSize, errdefs.ErrDataLoss)
	}
	return json.Marshal(Evidence{
		Measurement:        res.Measurement,
		AdditionalData:     append(Bytes{}, res.Additional...),
		UserData:           ud,
		CUID:               res.CUID[:],
		EncrMeasurementKey: r.EncrMeasurementKey,
		EncrRequestNonce:   r.EncrRequestNonce,
		ImageHdrTags:       r.ImageHdrTags,
	})
}

var _ attester.Attester = (*Attester)(nil)
