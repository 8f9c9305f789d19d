// Package ocispec converts between the OCI runtime spec as the agent API
// carries it (the grpc.Spec family of messages in protocols/grpc/oci.proto)
// and the runtime-spec Go types (github.com/opencontainers/runtime-spec/specs-go)
// that libcontainer consumes.
//
// ToSpec, ToProcess and ToResources read what the host sent; they copy every
// field the proto carries, never alias the message's slices or maps, and
// reject values that do not fit the runtime-spec types with an error wrapping
// errdefs.ErrInvalidArgument that names the wire field path (for example
// "OCI.Linux.Resources.BlockIO.Weight"). They do not judge whether the spec is
// sensible; that is libcontainer's and the policy's job.
//
// FromSpec, FromProcess and FromResources go the other way, for cova-ctl and
// tests. A runtime-spec field the proto has no place for is never dropped: it
// is an error wrapping errdefs.ErrNotImplemented naming the config.json path
// (for example "linux.resources.unified").
//
// LogSpec, LogProcess, Redacted and RedactedProcess make specs safe to log:
// environment values are replaced by "<redacted>".
//
// # Zero values on the wire
//
// Proto3 scalars cannot say "unset". The Kata runtime fills the messages by
// copying a runtime-spec struct field by field, so a nil pointer arrives as 0
// and 0 is the only way the host can say "unset". ToSpec reads 0 as unset
// wherever runtime-spec has a pointer, with the exceptions below that follow
// kata-agent. The last column is kata-agent's own conversion
// (src/libs/protocols/src/trans.rs), for comparison.
//
//	wire field (under OCI.)                 ToSpec                       kata-agent
//	Process.OOMScoreAdj                     0 → nil                      same
//	Process.User absent                     zero User                    same
//	Process.User.Umask                      (not on the wire) nil        same
//	Hooks.*[].Timeout                       0 → nil                      >0 kept, others dropped
//	Linux.Resources.Devices[].Major, Minor  0 → nil (wildcard)           >0 kept, others dropped
//	Linux.Resources.Memory.Limit,
//	  Reservation, Swap, Kernel, KernelTCP  0 → nil, -1 kept             >0 kept (drops -1)
//	Linux.Resources.Memory.Swappiness       0 → nil                      same
//	Linux.Resources.Memory.DisableOOMKiller false → nil                  always set (libcontainer
//	                                                                     treats nil and false alike)
//	Linux.Resources.CPU.Shares, Quota,
//	  Period, RealtimeRuntime,
//	  RealtimePeriod                        0 → nil, -1 kept             >0 kept (drops -1)
//	Linux.Resources.Pids.Limit              0 → nil                      always set
//	Linux.Resources.BlockIO.Weight,
//	  LeafWeight                            0 → nil, >65535 rejected     >0 kept, truncated to 16 bits
//	Linux.Resources.BlockIO.WeightDevice[]
//	  .Weight, .LeafWeight                  0 → nil, >65535 rejected     always set, truncated
//	Linux.Resources.Network.ClassID         0 → nil                      same
//	Linux.Devices[].FileMode, UID, GID      always set, 0 → &0           same
//	Linux.Seccomp.Syscalls[].ErrnoRet       oneof unset → nil,           always set (unset → &0)
//	                                        set → &value (even 0)
//	Solaris, Windows                        ignored (placeholders)       same
//	any empty repeated or map field         nil                          None
//	any absent sub-message                  nil pointer                  None
//
// Pids.Limit matters most: with runtime-spec v1.3 (a *int64) runc writes &0
// as pids.max=1, while hosts built on older specs (a plain int64) send 0 for
// "no limit", so 0 must be nil.
// ErrnoRet is the other deliberate difference from kata-agent: with
// SCMP_ACT_ERRNO a nil ErrnoRet means EPERM, &0 would make the filtered
// syscall "succeed", so the oneof is honoured.
//
// FromSpec mirrors the table. Where runtime-spec holds a set zero that the
// wire would turn into "unset" and libcontainer gives the two different
// meanings (process.oomScoreAdj, hooks timeout, linux.resources.devices
// major/minor, memory.swappiness, pids.limit) FromSpec fails with
// errdefs.ErrInvalidArgument; the other set zeros (memory and CPU limits,
// weights, classID) mean the same as unset to libcontainer and are sent as 0.
// A nil linux.devices[].fileMode is sent as 0666, the mode runc gives it, and
// nil uid/gid as 0. Values too large for the wire's 32-bit fields
// (process.consoleSize, errnoRet) are rejected with ErrInvalidArgument.
package ocispec

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// Roots of the field paths in error messages. Wire paths use the proto
// field names of the request that carries the message.
const (
	wireSpecRoot      = "OCI"       // CreateContainerRequest.OCI
	wireProcessRoot   = "process"   // ExecProcessRequest.process
	wireResourcesRoot = "resources" // UpdateContainerRequest.resources
)

// fieldError is a bad value at a field path. The path is built from the leaf
// up while the error travels back through the converters, so nothing is
// formatted unless something is wrong.
type fieldError struct {
	path string
	msg  string
	kind error // an errdefs class
}

func (e *fieldError) Error() string {
	return e.path + ": " + e.msg + ": " + e.kind.Error()
}

func (e *fieldError) Unwrap() error { return e.kind }

func invalid(field, format string, args ...any) error {
	return &fieldError{path: field, msg: fmt.Sprintf(format, args...), kind: errdefs.ErrInvalidArgument}
}

func unsupported(field string) error {
	return &fieldError{path: field, msg: "not carried by the agent API", kind: errdefs.ErrNotImplemented}
}

// under prefixes the path of a fieldError with parent; other errors pass
// through unchanged.
func under(parent string, err error) error {
	if err == nil {
		return nil
	}
	var fe *fieldError
	if errors.As(err, &fe) {
		switch {
		case fe.path == "":
			fe.path = parent
		case strings.HasPrefix(fe.path, "["):
			fe.path = parent + fe.path
		default:
			fe.path = parent + "." + fe.path
		}
	}
	return err
}

// index names element i of a list field.
func index(field string, i int) string {
	return field + "[" + strconv.Itoa(i) + "]"
}

func nullEntry(field string, i int) error {
	return invalid(index(field, i), "null entry")
}
