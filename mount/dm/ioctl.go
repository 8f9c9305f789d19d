package dm

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/containerd/errdefs"
)

// Facts from the kernel's uapi header include/uapi/linux/dm-ioctl.h.
const (
	nameLen        = 128 // DM_NAME_LEN
	uuidLen        = 129 // DM_UUID_LEN
	maxTypeNameLen = 16  // DM_MAX_TYPE_NAME

	// ioctlSize is sizeof(struct dm_ioctl): version[3], data_size,
	// data_start, target_count, open_count, flags, event_nr, padding (4
	// bytes each), dev (u64 at 40), name[128] at 48, uuid[129] at 176,
	// data[7] at 305.
	ioctlSize = 312
	// specSize is sizeof(struct dm_target_spec): sector_start, length (u64),
	// status (s32), next (u32), target_type[16].
	specSize = 40

	offVersion     = 0
	offDataSize    = 12
	offDataStart   = 16
	offTargetCount = 20
	offOpenCount   = 24
	offFlags       = 28
	offEventNr     = 32
	offPadding     = 36
	offDev         = 40
	offName        = 48
	offUUID        = 176
	offData        = 305

	offSpecSectorStart = 0
	offSpecLength      = 8
	offSpecStatus      = 16
	offSpecNext        = 20
	offSpecTargetType  = 24

	// versionMajor is the interface major the kernel must match; minor
	// 0 asks for nothing newer than the first 4.x interface.
	versionMajor = 4
)

// Commands (enum in dm-ioctl.h, in order).
const (
	cmdVersion       = 0
	cmdRemoveAll     = 1
	cmdListDevices   = 2
	cmdDevCreate     = 3
	cmdDevRemove     = 4
	cmdDevRename     = 5
	cmdDevSuspend    = 6
	cmdDevStatus     = 7
	cmdDevWait       = 8
	cmdTableLoad     = 9
	cmdTableClear    = 10
	cmdTableDeps     = 11
	cmdTableStatus   = 12
	cmdListVersions  = 13
	cmdTargetMsg     = 14
	cmdSetGeometry   = 15
	cmdDevArmPoll    = 16
	cmdGetTargetVers = 17
)

// Flags (DM_*_FLAG).
const (
	flagReadOnly        = 1 << 0
	flagSuspend         = 1 << 1
	flagPersistentDev   = 1 << 3
	flagStatusTable     = 1 << 4
	flagActivePresent   = 1 << 5
	flagInactivePresent = 1 << 6
	flagBufferFull      = 1 << 8
	flagSkipBdget       = 1 << 9
	flagSkipLockfs      = 1 << 10
	flagNoFlush         = 1 << 11
	flagQueryInactive   = 1 << 12
	flagUeventGenerated = 1 << 13
	flagUUID            = 1 << 14
	flagSecureData      = 1 << 15
	flagDataOut         = 1 << 16
	flagDeferredRemove  = 1 << 17
	flagInternalSuspend = 1 << 18
	flagIMAMeasurement  = 1 << 19
)

const dmIoctlType = 0xfd // DM_IOCTL

// ioctlRequest is _IOWR(DM_IOCTL, cmd, struct dm_ioctl) with the asm-generic
// encoding x86 and arm64 use: dir (read|write = 3) in bits 30-31, size in
// bits 16-29, type in 8-15, number in 0-7.
func ioctlRequest(cmd uint) uint {
	const iocRead, iocWrite = 2, 1
	return (iocRead|iocWrite)<<30 | ioctlSize<<16 | dmIoctlType<<8 | cmd
}

// header is struct dm_ioctl in Go form.
type header struct {
	Version     [3]uint32
	DataSize    uint32
	DataStart   uint32
	TargetCount uint32
	OpenCount   int32
	Flags       uint32
	EventNr     uint32
	Dev         uint64
	Name        string
	UUID        string
}

var le = binary.LittleEndian

// marshal writes h into the first ioctlSize bytes of buf.
func (h *header) marshal(buf []byte) error {
	if len(buf) < ioctlSize {
		return fmt.Errorf("dm ioctl buffer of %d bytes: %w", len(buf), errdefs.ErrInvalidArgument)
	}
	if len(h.Name) >= nameLen {
		return fmt.Errorf("name %q: longer than %d bytes: %w", h.Name, nameLen-1, errdefs.ErrInvalidArgument)
	}
	if len(h.UUID) >= uuidLen {
		return fmt.Errorf("uuid %q: longer than %d bytes: %w", h.UUID, uuidLen-1, errdefs.ErrInvalidArgument)
	}
	clear(buf[:ioctlSize])
	for i, v := range h.Version {
		le.PutUint32(buf[offVersion+4*i:], v)
	}
	le.PutUint32(buf[offDataSize:], h.DataSize)
	le.PutUint32(buf[offDataStart:], h.DataStart)
	le.PutUint32(buf[offTargetCount:], h.TargetCount)
	le.PutUint32(buf[offOpenCount:], uint32(h.OpenCount))
	le.PutUint32(buf[offFlags:], h.Flags)
	le.PutUint32(buf[offEventNr:], h.EventNr)
	le.PutUint64(buf[offDev:], h.Dev)
	copy(buf[offName:offName+nameLen], h.Name)
	copy(buf[offUUID:offUUID+uuidLen], h.UUID)
	return nil
}

// unmarshalHeader reads struct dm_ioctl from buf.
func unmarshalHeader(buf []byte) (header, error) {
	var h header
	if len(buf) < ioctlSize {
		return h, fmt.Errorf("dm ioctl answer of %d bytes: %w", len(buf), errdefs.ErrInvalidArgument)
	}
	for i := range h.Version {
		h.Version[i] = le.Uint32(buf[offVersion+4*i:])
	}
	h.DataSize = le.Uint32(buf[offDataSize:])
	h.DataStart = le.Uint32(buf[offDataStart:])
	h.TargetCount = le.Uint32(buf[offTargetCount:])
	h.OpenCount = int32(le.Uint32(buf[offOpenCount:]))
	h.Flags = le.Uint32(buf[offFlags:])
	h.EventNr = le.Uint32(buf[offEventNr:])
	h.Dev = le.Uint64(buf[offDev:])
	h.Name = cString(buf[offName : offName+nameLen])
	h.UUID = cString(buf[offUUID : offUUID+uuidLen])
	return h, nil
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

func align8(n int) int { return (n + 7) &^ 7 }

// marshalLoad builds a DM_TABLE_LOAD buffer: the header, then for each
// target a dm_target_spec followed by its NUL-terminated parameter string,
// padded so the next spec starts 8-byte aligned; spec.next is the distance
// from this spec to the next one.
func marshalLoad(h header, targets []Target) ([]byte, error) {
	size := ioctlSize
	for _, t := range targets {
		size += align8(specSize + len(t.Params) + 1)
	}
	buf := make([]byte, size)
	off := ioctlSize
	for _, t := range targets {
		n := align8(specSize + len(t.Params) + 1)
		s := buf[off : off+n]
		le.PutUint64(s[offSpecSectorStart:], t.Start)
		le.PutUint64(s[offSpecLength:], t.Length)
		le.PutUint32(s[offSpecStatus:], 0)
		le.PutUint32(s[offSpecNext:], uint32(n))
		copy(s[offSpecTargetType:offSpecTargetType+maxTypeNameLen], t.Type)
		copy(s[specSize:], t.Params)
		off += n
	}
	h.DataSize = uint32(size)
	h.DataStart = ioctlSize
	h.TargetCount = uint32(len(targets))
	if err := h.marshal(buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// TargetStatus is one line of a table or status answer.
type TargetStatus struct {
	Start, Length uint64
	Type          string
	// Params is the target's status line, or its table line with
	// TableStatus (which, for crypt targets, holds the key in hex).
	Params string
}

// unmarshalStatus reads the targets of a DM_TABLE_STATUS answer: specs
// start at data_start, and each spec.next counts from data_start.
func unmarshalStatus(buf []byte) (header, []TargetStatus, error) {
	h, err := unmarshalHeader(buf)
	if err != nil {
		return h, nil, err
	}
	end := min(int(h.DataSize), len(buf))
	start := int(h.DataStart)
	if start < ioctlSize || start > end {
		return h, nil, fmt.Errorf("dm status: data_start %d outside the %d-byte answer: %w", start, end, errdefs.ErrInvalidArgument)
	}
	if h.TargetCount > uint32(end-start)/specSize {
		return h, nil, fmt.Errorf("dm status: %d targets do not fit in %d bytes: %w", h.TargetCount, end-start, errdefs.ErrInvalidArgument)
	}
	out := make([]TargetStatus, 0, h.TargetCount)
	pos := start
	for i := uint32(0); i < h.TargetCount; i++ {
		if pos+specSize > end {
			return h, nil, fmt.Errorf("dm status: target %d at %d past the end %d: %w", i, pos, end, errdefs.ErrInvalidArgument)
		}
		s := buf[pos:end]
		ts := TargetStatus{
			Start:  le.Uint64(s[offSpecSectorStart:]),
			Length: le.Uint64(s[offSpecLength:]),
			Type:   cString(s[offSpecTargetType : offSpecTargetType+maxTypeNameLen]),
		}
		p := s[specSize:]
		nul := bytes.IndexByte(p, 0)
		if nul < 0 {
			return h, nil, fmt.Errorf("dm status: target %d parameters are not terminated: %w", i, errdefs.ErrInvalidArgument)
		}
		ts.Params = string(p[:nul])
		out = append(out, ts)
		next := int(le.Uint32(s[offSpecNext:]))
		if i+1 < h.TargetCount && start+next <= pos {
			return h, nil, fmt.Errorf("dm status: target %d next offset %d does not move forward: %w", i, next, errdefs.ErrInvalidArgument)
		}
		pos = start + next
	}
	return h, out, nil
}
