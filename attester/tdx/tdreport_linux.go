package tdx

import (
	"bytes"
	"context"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// tdxCmdGetReport0 is _IOWR('T', 1, struct tdx_report_req).
const tdxCmdGetReport0 = 0xC4405401

type tdxReportReq struct {
	reportData [64]byte
	tdReport   [TDReportSize]byte
}

// GetTDReport issues TDX_CMD_GET_REPORT0 on the TDX guest device.
func GetTDReport(ctx context.Context, device string, reportData [64]byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fd, err := unix.Open(device, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", device, err)
	}
	defer unix.Close(fd)
	req := &tdxReportReq{reportData: reportData}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), tdxCmdGetReport0, uintptr(unsafe.Pointer(req))); errno != 0 {
		return nil, fmt.Errorf("TDX_CMD_GET_REPORT0: %w", errno)
	}
	return bytes.Clone(req.tdReport[:]), nil
}
