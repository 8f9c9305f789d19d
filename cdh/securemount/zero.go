package securemount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"unsafe"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// zeroChunk is how much zeroDevice asks of the kernel (or writes) at a
// time, so a cancelled context stops a long wipe.
const zeroChunk = 64 << 20

// zeroDevice writes zeros over [offset, offset+length) of path and flushes
// them. On a block device it uses BLKZEROOUT, which the kernel serves with
// write-zeroes or, through dm-crypt, with ordinary writes of the zero page;
// elsewhere (or where the ioctl is refused) it writes zeros itself.
func zeroDevice(ctx context.Context, path string, offset, length int64) error {
	if offset < 0 || length < 0 || offset%512 != 0 || length%512 != 0 {
		return fmt.Errorf("zeroing %s: range %d+%d is not whole sectors: %w", path, offset, length, errdefs.ErrInvalidArgument)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	ioctl := true
	var buf []byte
	for pos, end := offset, offset+length; pos < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(end-pos, zeroChunk)
		if ioctl {
			r := [2]uint64{uint64(pos), uint64(n)}
			_, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r[0])))
			switch {
			case errno == 0:
				pos += n
				continue
			case errors.Is(errno, unix.ENOTTY), errors.Is(errno, unix.EOPNOTSUPP), errors.Is(errno, unix.EINVAL):
				ioctl = false
			default:
				return fmt.Errorf("BLKZEROOUT on %s at %d: %w", path, pos, errno)
			}
		}
		if buf == nil {
			buf = make([]byte, min(length, 1<<20))
		}
		w := min(n, int64(len(buf)))
		if _, err := f.WriteAt(buf[:w], pos); err != nil {
			return fmt.Errorf("zeroing %s: %w", path, err)
		}
		pos += w
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flushing %s: %w", path, err)
	}
	return f.Close()
}
