package config

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/containerd/errdefs"
)

// Address schemes understood by ParseAddr.
const (
	SchemeVsock = "vsock" // vsock://CID:PORT (kata-agent)
	SchemeUnix  = "unix"  // unix:///abs/path or unix://@abstract (kata-agent)
	SchemeVport = "vport" // vport:NAME or vport:/dev/vportNpM (Cova, tests only)
	SchemeTCP   = "tcp"   // tcp:HOST:PORT or tcp://HOST:PORT (Cova, tests only)
)

// CIDAny is VMADDR_CID_ANY, written -1 in kata addresses.
const CIDAny uint32 = 0xFFFFFFFF

// Addr is a parsed listen address.
type Addr struct {
	Scheme string // one of the Scheme* constants
	// Path is the socket path for unix (a leading '@' means the abstract
	// namespace), and for vport either a /dev/vportNpM device path or a
	// virtio-serial port name (as in /sys/class/virtio-ports/*/name).
	Path string
	Host string // tcp only; may be empty (all addresses)
	CID  uint32 // vsock only; CIDAny for -1
	Port uint32 // vsock and tcp
}

// String renders the address in the form ParseAddr reads.
func (a Addr) String() string {
	switch a.Scheme {
	case SchemeVsock:
		cid := strconv.FormatUint(uint64(a.CID), 10)
		if a.CID == CIDAny {
			cid = "-1"
		}
		return fmt.Sprintf("vsock://%s:%d", cid, a.Port)
	case SchemeUnix:
		return "unix://" + a.Path
	case SchemeVport:
		return "vport:" + a.Path
	case SchemeTCP:
		return "tcp:" + net.JoinHostPort(a.Host, strconv.FormatUint(uint64(a.Port), 10))
	}
	return ""
}

var (
	vportDevRE  = regexp.MustCompile(`^/dev/vport[0-9]{1,4}p[0-9]{1,5}$`)
	vportNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,126}$`)
)

// maxSunPath is sizeof(sockaddr_un.sun_path) minus the terminating NUL.
const maxSunPath = 107

// ParseAddr parses a listen address:
//
//	vsock://CID:PORT          CID is -1 (any) or a uint32, PORT a uint32 in 1..2^32-2
//	unix:///absolute/path     or unix://@name for the abstract namespace
//	vport:NAME                Cova test transport: a virtio-serial port name or /dev/vportNpM
//	tcp:HOST:PORT             Cova test transport (tcp://HOST:PORT also accepted)
//
// Scheme names are case-sensitive, as in kata's ttrpc.
func ParseAddr(s string) (Addr, error) {
	bad := func(why string) (Addr, error) {
		return Addr{}, fmt.Errorf("invalid address %s: %s: %w", quoteValue(s), why, errdefs.ErrInvalidArgument)
	}
	switch {
	case strings.HasPrefix(s, "vsock://"):
		rest := s[len("vsock://"):]
		cidStr, portStr, ok := strings.Cut(rest, ":")
		if !ok || strings.Contains(portStr, ":") {
			return bad("want vsock://CID:PORT")
		}
		var cid uint32
		if cidStr == "-1" {
			cid = CIDAny
		} else {
			n, ok := parseUint(cidStr, 0xFFFFFFFF)
			if !ok || strings.HasPrefix(cidStr, "+") {
				return bad("CID must be -1 or a 32-bit unsigned integer")
			}
			cid = uint32(n)
		}
		port, ok := parseUint(portStr, 0xFFFFFFFE)
		if !ok || port == 0 || strings.HasPrefix(portStr, "+") {
			return bad("port must be an integer in 1..4294967294")
		}
		return Addr{Scheme: SchemeVsock, CID: cid, Port: uint32(port)}, nil

	case strings.HasPrefix(s, "unix://"):
		p := s[len("unix://"):]
		if strings.ContainsRune(p, 0) {
			return bad("path contains NUL")
		}
		if len(p) > maxSunPath {
			return bad(fmt.Sprintf("socket path longer than %d bytes", maxSunPath))
		}
		if strings.HasPrefix(p, "@") {
			if len(p) < 2 {
				return bad("empty abstract socket name")
			}
			return Addr{Scheme: SchemeUnix, Path: p}, nil
		}
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
			return bad("want unix:///absolute/clean/path or unix://@name")
		}
		return Addr{Scheme: SchemeUnix, Path: p}, nil

	case strings.HasPrefix(s, "vport:"):
		p := strings.TrimPrefix(s[len("vport:"):], "//")
		if vportDevRE.MatchString(p) || vportNameRE.MatchString(p) {
			return Addr{Scheme: SchemeVport, Path: p}, nil
		}
		return bad("want vport:NAME (letters, digits, . _ -) or vport:/dev/vportNpM")

	case strings.HasPrefix(s, "tcp:"):
		hp := strings.TrimPrefix(s[len("tcp:"):], "//")
		host, portStr, err := net.SplitHostPort(hp)
		if err != nil {
			return bad("want tcp:HOST:PORT")
		}
		port, ok := parseUint(portStr, 65535)
		if !ok || port == 0 || strings.HasPrefix(portStr, "+") {
			return bad("port must be an integer in 1..65535")
		}
		if strings.ContainsAny(host, " \t\r\n\x00/@") || len(host) > 253 {
			return bad("bad host")
		}
		return Addr{Scheme: SchemeTCP, Host: host, Port: uint32(port)}, nil
	}
	return bad("unsupported scheme (want vsock://, unix://, vport: or tcp:)")
}
