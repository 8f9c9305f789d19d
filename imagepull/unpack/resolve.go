package unpack

import (
	"errors"
	"os"
	"sync/atomic"
	"unsafe"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"golang.org/x/sys/unix"
)

// noOpenat2 is set once openat2 turned out to be unavailable.
var noOpenat2 atomic.Bool

// openInRoot opens rel below root with every symlink resolved as if root
// were "/" (RESOLVE_IN_ROOT), no magic links and no mount crossings. flags
// are open flags (O_CLOEXEC is added). The result is a new fd.
func openInRoot(rootFD int, rootF *os.File, rel string, flags int) (int, error) {
	for try := 0; !noOpenat2.Load(); try++ {
		fd, err := unix.Openat2(rootFD, rel, &unix.OpenHow{
			Flags:   uint64(flags | unix.O_CLOEXEC),
			Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
		})
		switch {
		case err == nil:
			return fd, nil
		case errors.Is(err, unix.EAGAIN) && try < 8:
			// A rename elsewhere on the system raced the lookup; retry.
			continue
		case errors.Is(err, unix.ENOSYS):
			noOpenat2.Store(true)
		default:
			return -1, err
		}
	}
	// Kernels before 5.6: pathrs-lite walks the path in userspace with the
	// same semantics and returns an O_PATH handle; reopen it as asked.
	f, err := pathrs.OpenatInRoot(rootF, rel)
	if err != nil {
		return -1, err
	}
	defer f.Close()
	if flags&unix.O_PATH != 0 {
		if flags&unix.O_DIRECTORY != 0 {
			var st unix.Stat_t
			if err := unix.Fstat(int(f.Fd()), &st); err != nil {
				return -1, err
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return -1, unix.ENOTDIR
			}
		}
		return unix.Dup(int(f.Fd()))
	}
	g, err := pathrs.Reopen(f, flags)
	if err != nil {
		return -1, err
	}
	defer g.Close()
	return unix.Dup(int(g.Fd()))
}

// futimens sets the times of fd itself: utimensat(fd, NULL, ts, 0). Unlike
// unix.Futimes it does not need /proc.
func futimens(fd int, ts []unix.Timespec) error {
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
