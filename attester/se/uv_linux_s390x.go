//go:build linux && s390x

package se

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DeviceUV performs attestation calls on the Ultravisor device.
type DeviceUV struct {
	// Path is the device; DevicePath when empty.
	Path string
}

func addr(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// Attest implements UV.
func (d DeviceUV) Attest(ctx context.Context, req AttestRequest) (*AttestResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkAttest(req); err != nil {
		return nil, err
	}
	path := d.Path
	if path == "" {
		path = DevicePath
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("uv attest: open %s: %w", path, err)
	}
	defer f.Close()
	arcb := append([]byte(nil), req.ARCB...)
	meas := make([]byte, req.MeasurementSize)
	var add []byte
	if req.AdditionalSize > 0 {
		add = make([]byte, req.AdditionalSize)
	}
	var pin runtime.Pinner
	defer pin.Unpin()
	for _, b := range [][]byte{arcb, meas, add} {
		if len(b) > 0 {
			pin.Pin(&b[0])
		}
	}
	cb := marshalAttestCB(req, addr(arcb), addr(meas), addr(add))
	pin.Pin(&cb[0])
	icb := marshalIoctlCB(addr(cb), uint32(len(cb)))
	pin.Pin(&icb[0])
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), IoctlAttest, uintptr(unsafe.Pointer(&icb[0]))); errno != 0 {
		return nil, fmt.Errorf("uv attest: ioctl: %w", errno)
	}
	if err := checkIoctlCB(icb); err != nil {
		return nil, err
	}
	return finishAttest(cb, meas, add)
}
