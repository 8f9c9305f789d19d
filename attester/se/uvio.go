package se

import (
	"encoding/binary"
	"fmt"

	"github.com/containerd/errdefs"
)

// The uvdevice ioctl interface (arch/s390/include/uapi/asm/uvdevice.h).
// s390x is big-endian, so the control blocks are encoded big-endian here
// and the encoding is testable on any architecture.
const (
	// DevicePath is the Ultravisor device.
	DevicePath = "/dev/uv"
	// IoctlAttest is UVIO_IOCTL_ATT: _IOWR('u', 1, struct uvio_ioctl_cb).
	IoctlAttest = 0xc0407501
	// ioctlCBSize is sizeof(struct uvio_ioctl_cb).
	ioctlCBSize = 0x40
	// attestCBSize is sizeof(struct uvio_attest).
	attestCBSize = 0x138
	// UV return codes.
	rcSuccess  = 0x0001
	rcMoreData = 0x0100
)

// uvio_attest offsets.
const (
	offARCBAddr    = 0x00
	offMeasAddr    = 0x08
	offAddAddr     = 0x10
	offUserData    = 0x18
	offConfigUID   = 0x118
	offARCBLen     = 0x128
	offMeasLen     = 0x12c
	offAddLen      = 0x130
	offUserDataLen = 0x134
)

// checkAttest validates a request against the UV limits (the checks the
// s390_pv crate makes before the call). Errors name the field.
func checkAttest(req AttestRequest) error {
	switch {
	case req.MeasurementSize < 1 || req.MeasurementSize > MaxMeasurement:
		return fmt.Errorf("uv attest: measurement size %d, want 1..%d: %w", req.MeasurementSize, MaxMeasurement, errdefs.ErrInvalidArgument)
	case req.AdditionalSize > MaxAdditional:
		return fmt.Errorf("uv attest: additional data size %d, at most %d: %w", req.AdditionalSize, MaxAdditional, errdefs.ErrInvalidArgument)
	case len(req.ARCB) > MaxARCB:
		return fmt.Errorf("uv attest: attestation request %d bytes, at most %d: %w", len(req.ARCB), MaxARCB, errdefs.ErrInvalidArgument)
	case len(req.UserData) > MaxUserData:
		return fmt.Errorf("uv attest: user data %d bytes, at most %d: %w", len(req.UserData), MaxUserData, errdefs.ErrInvalidArgument)
	}
	return nil
}

// marshalAttestCB encodes struct uvio_attest for buffers at the given
// addresses (addAddr 0 when no additional data is requested).
func marshalAttestCB(req AttestRequest, arcbAddr, measAddr, addAddr uint64) []byte {
	be := binary.BigEndian
	b := make([]byte, attestCBSize)
	be.PutUint64(b[offARCBAddr:], arcbAddr)
	be.PutUint64(b[offMeasAddr:], measAddr)
	be.PutUint64(b[offAddAddr:], addAddr)
	copy(b[offUserData:offUserData+MaxUserData], req.UserData)
	be.PutUint32(b[offARCBLen:], uint32(len(req.ARCB)))
	be.PutUint32(b[offMeasLen:], req.MeasurementSize)
	be.PutUint32(b[offAddLen:], req.AdditionalSize)
	be.PutUint16(b[offUserDataLen:], uint16(len(req.UserData)))
	return b
}

// parseAttestCB returns the outputs of struct uvio_attest: the
// configuration UID and the additional-data length the UV wrote.
func parseAttestCB(b []byte) (cuid [CUIDSize]byte, addLen uint32) {
	copy(cuid[:], b[offConfigUID:offConfigUID+CUIDSize])
	return cuid, binary.BigEndian.Uint32(b[offAddLen:])
}

// marshalIoctlCB encodes struct uvio_ioctl_cb {u32 flags; u16 uv_rc; u16
// uv_rrc; u64 argument_addr; u32 argument_len; u8 reserved[44]}.
func marshalIoctlCB(argAddr uint64, argLen uint32) []byte {
	b := make([]byte, ioctlCBSize)
	binary.BigEndian.PutUint64(b[8:], argAddr)
	binary.BigEndian.PutUint32(b[16:], argLen)
	return b
}

// checkIoctlCB maps the UV return code of a completed ioctl to an error.
func checkIoctlCB(b []byte) error {
	rc, rrc := binary.BigEndian.Uint16(b[4:]), binary.BigEndian.Uint16(b[6:])
	switch rc {
	case rcSuccess, rcMoreData:
		return nil
	}
	return fmt.Errorf("uv attest: ultravisor rc %#04x rrc %#04x: %w", rc, rrc, errdefs.ErrFailedPrecondition)
}

// finishAttest assembles the result from the buffers after the call.
func finishAttest(cb []byte, meas, add []byte) (*AttestResult, error) {
	cuid, addLen := parseAttestCB(cb)
	if int(addLen) > len(add) {
		return nil, fmt.Errorf("uv attest: additional data length %d beyond the %d-byte buffer: %w", addLen, len(add), errdefs.ErrDataLoss)
	}
	return &AttestResult{Measurement: meas, Additional: add[:addLen], CUID: cuid}, nil
}
