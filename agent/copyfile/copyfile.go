// Package copyfile implements the CopyFile RPC of the Kata agent API: the
// host pushes regular files (in chunks), directories and symlinks into the
// guest's shared directory (/run/kata-containers/shared/containers), where
// they become hostname, hosts, resolv.conf, ConfigMap, Secret and service
// account token volumes when the sandbox has no shared file system.
//
// The host is untrusted. Every request is validated before anything touches
// the file system, and all file system work happens through directory file
// descriptors resolved inside the root, so neither a hostile path nor a
// symlink planted earlier can make the agent write outside the root.
//
// Semantics follow kata-agent's do_copy_file, with these deliberate
// differences:
//
//   - A regular file is assembled in a hidden temporary file next to the
//     target (".<name>.cova-tmp") and renamed over the target only when the
//     last chunk has arrived and been synced. A partial transfer is never
//     visible at the target path, and an existing target stays intact until
//     the replacement is complete. Chunks must arrive in order without gaps.
//   - Symlinks are created under a temporary name and renamed into place, so
//     replacing a link (the Kubernetes "..data" swap) is atomic.
//   - Symlink targets must be relative and free of ".." components, and a
//     symlink may not sit directly under the root; kata leaves these checks
//     to the policy, Cova enforces them even with an allow-all policy.
//   - Setuid and setgid bits are dropped from regular files (kata loses them
//     as a side effect of chown after chmod; Cova does it on purpose).
//   - The immediate parent is chowned to the request's uid/gid only when it
//     is not the root itself.
package copyfile

import (
	"fmt"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// DefaultRoot is the directory that kata's runtime copies files into.
const DefaultRoot = "/run/kata-containers/shared/containers"

// MaxChunkSize is the largest data payload accepted in one request. It equals
// the ttrpc message limit; the Go shim sends 1 MiB chunks.
const MaxChunkSize = 4 << 20

const (
	maxPathLen = 4096 // PATH_MAX
	maxNameLen = 255  // NAME_MAX
	tmpSuffix  = ".cova-tmp"

	// implicitDirMask is applied to dir_mode for parents created on the way.
	implicitDirMask = 0o777
	// dirPermMask is applied to file_mode for directories.
	dirPermMask = 0o7777
	// filePermMask is applied to file_mode for regular files: no setuid/setgid.
	filePermMask = 0o1777
)

// Request is one CopyFile call (the fields of agent.CopyFileRequest).
//
// FileMode carries the S_IFMT type bits as the runtime sends them (the Go shim
// forwards lstat's st_mode): S_IFREG for a regular file, S_IFDIR for a
// directory, S_IFLNK for a symlink, whose target is then in Data.
type Request struct {
	Path     string
	FileSize int64
	FileMode uint32
	DirMode  uint32
	UID, GID int32
	Offset   int64
	Data     []byte
}

// FileType is the kind of object a request creates, spelled as kata's policy
// input spells it.
type FileType string

// The file types of PolicyView.FileType.
const (
	FileTypeUnknown   FileType = "Unknown"
	FileTypeRegular   FileType = "Regular"
	FileTypeDirectory FileType = "Directory"
	FileTypeSymlink   FileType = "Symlink"
)

// PolicyView is the object the policy engine evaluates for a CopyFile request
// (kata's PolicyCopyFileRequest): the request without its data, plus the
// derived file type and symlink target. SymlinkTarget is null unless the
// request creates a symlink.
type PolicyView struct {
	Path          string   `json:"path"`
	FileType      FileType `json:"file_type"`
	SymlinkTarget *string  `json:"symlink_target"`
	FileSize      int64    `json:"file_size"`
	FileMode      uint32   `json:"file_mode"`
	DirMode       uint32   `json:"dir_mode"`
	UID           int32    `json:"uid"`
	GID           int32    `json:"gid"`
	Offset        int64    `json:"offset"`
}

// TypeOf returns the file type encoded in a CopyFile file_mode.
func TypeOf(fileMode uint32) FileType {
	switch fileMode & unix.S_IFMT {
	case unix.S_IFREG:
		return FileTypeRegular
	case unix.S_IFDIR:
		return FileTypeDirectory
	case unix.S_IFLNK:
		return FileTypeSymlink
	default:
		return FileTypeUnknown
	}
}

// Describe returns the policy view of r. It never fails: a symlink target
// that is not valid UTF-8 (kata refuses to translate such a request) is shown
// with replacement characters, and Copy rejects the request anyway. Callers
// that want kata's behaviour call Copier.Validate before the policy.
func Describe(r Request) PolicyView {
	v := PolicyView{
		Path:     r.Path,
		FileType: TypeOf(r.FileMode),
		FileSize: r.FileSize,
		FileMode: r.FileMode,
		DirMode:  r.DirMode,
		UID:      r.UID,
		GID:      r.GID,
		Offset:   r.Offset,
	}
	if v.FileType == FileTypeSymlink {
		t := strings.ToValidUTF8(string(r.Data), "\uFFFD")
		v.SymlinkTarget = &t
	}
	return v
}

// parsed is a validated request: where it goes, relative to the root.
type parsed struct {
	kind   FileType
	dir    string // parent directory relative to the root, "" for the root
	name   string // final component
	target string // symlink target
}

func invalid(field, format string, args ...any) error {
	return fmt.Errorf("%s: %s: %w", field, fmt.Sprintf(format, args...), errdefs.ErrInvalidArgument)
}

// checkRequest validates r against root without touching the file system.
func checkRequest(root string, r Request) (parsed, error) {
	var p parsed
	rel, err := checkPath(root, r.Path)
	if err != nil {
		return p, err
	}
	p.dir, p.name = filepath.Split(rel)
	p.dir = strings.TrimSuffix(p.dir, "/")

	if r.UID < 0 {
		return p, invalid("uid", "must not be negative, got %d", r.UID)
	}
	if r.GID < 0 {
		return p, invalid("gid", "must not be negative, got %d", r.GID)
	}
	if r.FileMode&^uint32(unix.S_IFMT|0o7777) != 0 {
		return p, invalid("file_mode", "unknown bits in %#o", r.FileMode)
	}
	if r.Offset < 0 {
		return p, invalid("offset", "must not be negative, got %d", r.Offset)
	}
	if len(r.Data) > MaxChunkSize {
		return p, invalid("data", "chunk of %d bytes exceeds the %d byte limit", len(r.Data), MaxChunkSize)
	}

	p.kind = TypeOf(r.FileMode)
	switch p.kind {
	case FileTypeRegular:
		if r.FileSize < 0 {
			return p, invalid("file_size", "must not be negative, got %d", r.FileSize)
		}
		// Overflow-safe form of offset+len(data) <= file_size.
		if r.Offset > r.FileSize || int64(len(r.Data)) > r.FileSize-r.Offset {
			return p, invalid("offset", "chunk [%d, +%d) ends beyond file_size %d", r.Offset, len(r.Data), r.FileSize)
		}
	case FileTypeDirectory:
		if len(r.Data) != 0 {
			return p, invalid("data", "must be empty for a directory")
		}
		if r.Offset != 0 {
			return p, invalid("offset", "must be 0 for a directory")
		}
	case FileTypeSymlink:
		if r.Offset != 0 {
			return p, invalid("offset", "must be 0 for a symlink")
		}
		if p.dir == "" {
			return p, invalid("path", "a symlink must not be created directly under %s", root)
		}
		// The Go shim sends 0, runtime-rs the target length.
		if r.FileSize != 0 && r.FileSize != int64(len(r.Data)) {
			return p, invalid("file_size", "must be 0 or the target length for a symlink")
		}
		t, err := checkSymlinkTarget(r.Data)
		if err != nil {
			return p, err
		}
		p.target = t
	default:
		return p, invalid("file_mode", "file type %#o is not a regular file, directory or symlink", r.FileMode&unix.S_IFMT)
	}
	return p, nil
}

// checkPath returns path relative to root, or an error naming the field.
func checkPath(root, path string) (string, error) {
	switch {
	case path == "":
		return "", invalid("path", "must not be empty")
	case len(path) > maxPathLen:
		return "", invalid("path", "longer than %d bytes", maxPathLen)
	case strings.IndexByte(path, 0) >= 0:
		return "", invalid("path", "contains a NUL byte")
	case !utf8.ValidString(path):
		return "", invalid("path", "is not valid UTF-8")
	case !filepath.IsAbs(path):
		return "", invalid("path", "%q is not absolute", path)
	}
	for _, c := range strings.Split(path, "/") {
		if c == ".." {
			return "", invalid("path", "%q contains a \"..\" component", path)
		}
		if len(c) > maxNameLen {
			return "", invalid("path", "component longer than %d bytes", maxNameLen)
		}
	}
	if filepath.Clean(path) != path {
		return "", invalid("path", "%q is not clean", path)
	}
	rel, ok := strings.CutPrefix(path, root+"/")
	if !ok || rel == "" {
		return "", invalid("path", "%q is not under %s", path, root)
	}
	return rel, nil
}

func checkSymlinkTarget(data []byte) (string, error) {
	t := string(data)
	switch {
	case t == "":
		return "", invalid("data", "symlink target is empty")
	case len(t) >= maxPathLen:
		return "", invalid("data", "symlink target longer than %d bytes", maxPathLen-1)
	case strings.IndexByte(t, 0) >= 0:
		return "", invalid("data", "symlink target contains a NUL byte")
	case !utf8.ValidString(t):
		return "", invalid("data", "symlink target is not valid UTF-8")
	case strings.HasPrefix(t, "/"):
		return "", invalid("data", "symlink target %q is absolute", t)
	}
	// Reject ".." both as written (what kata's policy checks) and after
	// cleaning.
	for _, c := range strings.Split(t, "/") {
		if c == ".." {
			return "", invalid("data", "symlink target %q contains a \"..\" component", t)
		}
	}
	if c := filepath.Clean(t); c == ".." || strings.HasPrefix(c, "../") {
		return "", invalid("data", "symlink target %q leaves its directory", t)
	}
	return t, nil
}

// tempName is the name a regular file or symlink is assembled under.
func tempName(name string) string {
	t := "." + name + tmpSuffix
	if len(t) <= maxNameLen {
		return t
	}
	// Long names (Kubernetes keys go up to 253 bytes) get a shorter, still
	// deterministic, temporary name so later chunks find it.
	return fmt.Sprintf(".%s-%016x%s", name[:maxNameLen-len(tmpSuffix)-18], fnv64(name), tmpSuffix)
}

func fnv64(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}
