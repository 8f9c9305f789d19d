package mount

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const (
	fsGroupRWMask   = 0o660
	fsGroupExecMask = 0o110
	maxFSGroupDepth = 256
)

// applyFSGroup gives every file under dir the group g.GroupID plus group
// read/write permission (and execute and setgid on directories), as kubelet
// does for fsGroup. Symlinks are skipped and never followed; every
// operation goes through a file descriptor opened with O_NOFOLLOW relative
// to its parent, so a crafted volume cannot redirect it.
func applyFSGroup(dir *os.File, g FSGroup) error {
	fd := int(dir.Fd())
	if g.ChangePolicy == FSGroupChangeOnRootMismatch {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return err
		}
		want := uint32(fsGroupRWMask | fsGroupExecMask | unix.S_ISGID)
		if st.Gid == g.GroupID && st.Mode&want == want {
			return nil
		}
	}
	if err := walkFSGroup(dir, g.GroupID, 0); err != nil {
		return err
	}
	return setGroup(fd, "", g.GroupID, true)
}

func walkFSGroup(dir *os.File, gid uint32, depth int) error {
	if depth >= maxFSGroupDepth {
		return fmt.Errorf("directory tree deeper than %d levels", maxFSGroupDepth)
	}
	names, err := dir.Readdirnames(-1)
	if err != nil {
		return err
	}
	dfd := int(dir.Fd())
	for _, name := range names {
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFLNK:
			continue
		case unix.S_IFDIR:
			cfd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("opening %s: %w", name, err)
			}
			child := os.NewFile(uintptr(cfd), name)
			err = walkFSGroup(child, gid, depth+1)
			if err == nil {
				err = setGroup(cfd, "", gid, true)
			}
			_ = child.Close()
			if err != nil {
				return err
			}
		default:
			// O_PATH: opening a device or FIFO must have no side effect.
			cfd, err := unix.Openat(dfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("opening %s: %w", name, err)
			}
			err = setGroup(cfd, fmt.Sprintf("/proc/self/fd/%d", cfd), gid, false)
			_ = unix.Close(cfd)
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// setGroup changes the group of fd and adds the fsGroup permission bits.
// For O_PATH handles, procPath names the fd in /proc (fchmod needs a real
// file descriptor).
func setGroup(fd int, procPath string, gid uint32, isDir bool) error {
	if err := unix.Fchownat(fd, "", -1, int(gid), unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	mode := st.Mode&0o7777 | fsGroupRWMask
	if isDir {
		mode |= fsGroupExecMask | unix.S_ISGID
	}
	if procPath == "" {
		return unix.Fchmod(fd, mode)
	}
	return unix.Fchmodat(unix.AT_FDCWD, procPath, mode, 0)
}
