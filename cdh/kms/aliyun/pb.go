package aliyun

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
)

// The KMS instance API (dkms-gcs) carries proto3 messages of package
// dkms_api. Only the fields Cova sends or reads are encoded here, by hand;
// the field numbers are those of Alibaba Cloud's published api.proto:
//
//	DecryptRequest        1 CiphertextBlob bytes, 2 KeyId string, 3 Algorithm string,
//	                      4 Aad bytes, 5 Iv bytes, 6 PaddingMode string
//	DecryptResponse       1 KeyId string, 2 Plaintext bytes, 3 RequestId string,
//	                      4 Algorithm string, 5 PaddingMode string
//	GetSecretValueRequest 1 SecretName string, 2 VersionStage string,
//	                      3 VersionId string, 4 FetchExtendedConfig bool
//	GetSecretValueResponse 1 SecretName, 2 SecretType, 3 SecretData, 4 SecretDataType,
//	                      5 repeated VersionStages, 6 VersionId, 7 CreateTime, 8 RequestId,
//	                      9 LastRotationDate, 10 NextRotationDate, 11 ExtendedConfig,
//	                      12 AutomaticRotation, 13 RotationInterval (all strings)
//	Error                 1 StatusCode int32, 2 ErrorCode string,
//	                      3 ErrorMessage string, 4 RequestId string

type decryptRequest struct {
	CiphertextBlob []byte
	KeyID          string
	Algorithm      string
	Aad            []byte
	Iv             []byte
	PaddingMode    string
}

func (m *decryptRequest) marshal() []byte {
	var b []byte
	b = appendBytes(b, 1, m.CiphertextBlob)
	b = appendBytes(b, 2, []byte(m.KeyID))
	b = appendBytes(b, 3, []byte(m.Algorithm))
	b = appendBytes(b, 4, m.Aad)
	b = appendBytes(b, 5, m.Iv)
	b = appendBytes(b, 6, []byte(m.PaddingMode))
	return b
}

type decryptResponse struct {
	KeyID     string
	Plaintext []byte
	RequestID string
	Algorithm string
}

func (m *decryptResponse) unmarshal(b []byte) error {
	return walk(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch num {
		case 1:
			return str(typ, v, &m.KeyID)
		case 2:
			if typ != protowire.BytesType {
				return errWireType
			}
			clear(m.Plaintext)
			m.Plaintext = append([]byte(nil), v...)
		case 3:
			return str(typ, v, &m.RequestID)
		case 4:
			return str(typ, v, &m.Algorithm)
		case 5:
			var s string
			return str(typ, v, &s)
		}
		return nil
	})
}

type getSecretValueRequest struct {
	SecretName          string
	VersionStage        string
	VersionID           string
	FetchExtendedConfig bool
}

func (m *getSecretValueRequest) marshal() []byte {
	var b []byte
	b = appendBytes(b, 1, []byte(m.SecretName))
	b = appendBytes(b, 2, []byte(m.VersionStage))
	b = appendBytes(b, 3, []byte(m.VersionID))
	if m.FetchExtendedConfig {
		b = protowire.AppendTag(b, 4, protowire.VarintType)
		b = protowire.AppendVarint(b, 1)
	}
	return b
}

type getSecretValueResponse struct {
	SecretName     string
	SecretData     *string
	SecretDataType string
	RequestID      string
}

func (m *getSecretValueResponse) unmarshal(b []byte) error {
	return walk(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch num {
		case 1:
			return str(typ, v, &m.SecretName)
		case 3:
			var s string
			if err := str(typ, v, &s); err != nil {
				return err
			}
			m.SecretData = &s
		case 4:
			return str(typ, v, &m.SecretDataType)
		case 8:
			return str(typ, v, &m.RequestID)
		case 2, 5, 6, 7, 9, 10, 11, 12, 13:
			var s string
			return str(typ, v, &s)
		}
		return nil
	})
}

type apiError struct {
	StatusCode   int32
	ErrorCode    string
	ErrorMessage string
	RequestID    string
}

func (m *apiError) unmarshal(b []byte) error {
	return walk(b, func(num protowire.Number, typ protowire.Type, v []byte) error {
		switch num {
		case 1:
			if typ != protowire.VarintType {
				return errWireType
			}
			x, n := protowire.ConsumeVarint(v)
			if n < 0 {
				return protowire.ParseError(n)
			}
			m.StatusCode = int32(x)
		case 2:
			return str(typ, v, &m.ErrorCode)
		case 3:
			return str(typ, v, &m.ErrorMessage)
		case 4:
			return str(typ, v, &m.RequestID)
		}
		return nil
	})
}

var errWireType = errors.New("unexpected wire type")

// appendBytes appends a length-delimited field, omitting it when empty as
// proto3 does for default values.
func appendBytes(b []byte, num protowire.Number, v []byte) []byte {
	if len(v) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// str decodes a proto3 string field, which must be valid UTF-8.
func str(typ protowire.Type, v []byte, dst *string) error {
	if typ != protowire.BytesType {
		return errWireType
	}
	if !utf8.Valid(v) {
		return errors.New("string field is not UTF-8")
	}
	*dst = string(v)
	return nil
}

// walk calls f for each field of the message b. For length-delimited
// fields v is the payload; for varints v is the encoded varint; other
// wire types are skipped after validation. Groups are rejected.
func walk(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var v []byte
		switch typ {
		case protowire.BytesType:
			p, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return fmt.Errorf("field %d: %w", num, protowire.ParseError(m))
			}
			v, n = p, m
		case protowire.VarintType, protowire.Fixed32Type, protowire.Fixed64Type:
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
			}
			v = b[:n]
		default:
			return fmt.Errorf("field %d: %w", num, errWireType)
		}
		if err := f(num, typ, v); err != nil {
			return fmt.Errorf("field %d: %w", num, err)
		}
		b = b[n:]
	}
	return nil
}
