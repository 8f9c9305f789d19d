package snp

import (
	"fmt"

	"github.com/containerd/errdefs"
	labi "github.com/google/go-sev-guest/client/linuxabi"
	"golang.org/x/sys/unix"
)

type linuxDevice struct{ fd int }

// OpenDevice opens the sev-guest character device.
func OpenDevice(path string) (Device, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &linuxDevice{fd: fd}, nil
}

func (d *linuxDevice) Close() error { return unix.Close(d.fd) }

// Ioctl issues a sev-guest request; argument must be a
// *labi.SnpUserGuestRequest.
func (d *linuxDevice) Ioctl(command uintptr, argument any) (uintptr, error) {
	req, ok := argument.(*labi.SnpUserGuestRequest)
	if !ok {
		return 0, fmt.Errorf("sev-guest ioctl: argument %T: %w", argument, errdefs.ErrInvalidArgument)
	}
	conv := req.ABI()
	result, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), command, uintptr(conv.Pointer()))
	if err := conv.Finish(req); err != nil {
		return 0, fmt.Errorf("sev-guest ioctl: %w", err)
	}
	// Older kernels leave garbage in exitinfo2 unless the error is EIO.
	if errno != unix.EIO {
		req.FwErr = 0
	}
	if errno != 0 {
		return 0, errno
	}
	return result, nil
}
