package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/agent/config"
	"github.com/mdlayher/vsock"
)

// Dial defaults.
const (
	// DefaultDialTimeout bounds Dial when ctx has no deadline.
	DefaultDialTimeout = 30 * time.Second
	// DefaultHandshakeTimeout bounds the wait for the hybrid vsock OK line
	// of one attempt, as in Kata's runtime.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultRetryInterval is the pause between hybrid vsock attempts.
	DefaultRetryInterval = 20 * time.Millisecond
)

// maxHandshakeLine bounds the hybrid vsock answer ("OK <port>\n").
const maxHandshakeLine = 64

// Dialer holds the knobs of Dial. The zero value uses the defaults above.
type Dialer struct {
	// HandshakeTimeout bounds one hybrid vsock handshake; 0 means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// RetryInterval is the pause between hybrid vsock attempts; 0 means
	// DefaultRetryInterval.
	RetryInterval time.Duration
}

// Dial connects to an agent with the default Dialer.
func Dial(ctx context.Context, addr string) (net.Conn, error) {
	return Dialer{}.Dial(ctx, addr)
}

// Dial connects to the agent at addr, one of:
//
//	unix:///path            unix socket (unix://@name for the abstract namespace)
//	mock:PATH, remote:PATH  unix socket (Kata's test and peer-pods schemes)
//	vsock://CID:PORT        AF_VSOCK
//	hvsock://UDS_PATH:PORT  hybrid vsock: unix socket plus "CONNECT PORT\n" / "OK ...\n"
//	tcp://HOST:PORT         TCP (also tcp:HOST:PORT)
//
// Hybrid vsock handshakes are retried until ctx is done, as Kata's runtime
// does, because the VMM accepts the unix connection before the guest listens.
// Without a deadline on ctx, Dial gives up after DefaultDialTimeout.
func (d Dialer) Dial(ctx context.Context, addr string) (net.Conn, error) {
	da, err := parseDialAddr(addr)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultDialTimeout)
		defer cancel()
	}
	var nd net.Dialer
	switch da.scheme {
	case "unix":
		c, err := nd.DialContext(ctx, "unix", da.path)
		if err != nil {
			return nil, fmt.Errorf("dialing %s: %w", addr, err)
		}
		return c, nil
	case "tcp":
		c, err := nd.DialContext(ctx, "tcp", da.hostPort)
		if err != nil {
			return nil, fmt.Errorf("dialing %s: %w", addr, err)
		}
		return c, nil
	case "vsock":
		c, err := vsock.DialContext(ctx, da.cid, da.port, nil)
		if err != nil {
			return nil, fmt.Errorf("dialing %s: %w", addr, err)
		}
		return c, nil
	case "hvsock":
		return d.dialHybrid(ctx, addr, da)
	}
	return nil, fmt.Errorf("dialing %s: unsupported scheme: %w", addr, errdefs.ErrInvalidArgument)
}

// dialAddr is a parsed client address.
type dialAddr struct {
	scheme   string // unix, tcp, vsock, hvsock
	path     string // unix, hvsock
	hostPort string // tcp
	cid      uint32 // vsock
	port     uint32 // vsock, hvsock
}

func parseDialAddr(s string) (dialAddr, error) {
	bad := func(why string) (dialAddr, error) {
		return dialAddr{}, fmt.Errorf("invalid agent address %q: %s: %w", s, why, errdefs.ErrInvalidArgument)
	}
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok {
		return bad("missing scheme (want unix://, vsock://, hvsock://, tcp://, mock: or remote:)")
	}
	switch scheme {
	case "unix", "vsock", "tcp":
		a, err := config.ParseAddr(s)
		if err != nil {
			return dialAddr{}, err
		}
		switch a.Scheme {
		case config.SchemeUnix:
			return dialAddr{scheme: "unix", path: a.Path}, nil
		case config.SchemeTCP:
			return dialAddr{scheme: "tcp", hostPort: net.JoinHostPort(a.Host, strconv.FormatUint(uint64(a.Port), 10))}, nil
		case config.SchemeVsock:
			if a.CID == config.CIDAny {
				return bad("CID -1 (any) cannot be dialed")
			}
			return dialAddr{scheme: "vsock", cid: a.CID, port: a.Port}, nil
		}
	case "mock", "remote":
		p := rest
		if strings.HasPrefix(p, "///") {
			p = p[2:]
		}
		if p == "" || strings.ContainsRune(p, 0) {
			return bad("want " + scheme + ":PATH")
		}
		return dialAddr{scheme: "unix", path: p}, nil
	case "hvsock":
		if !strings.HasPrefix(rest, "//") {
			return bad("want hvsock://UDS_PATH:PORT")
		}
		rest = rest[2:]
		i := strings.LastIndexByte(rest, ':')
		if i <= 0 {
			return bad("want hvsock://UDS_PATH:PORT")
		}
		path, portStr := rest[:i], rest[i+1:]
		port, err := strconv.ParseUint(portStr, 10, 32)
		if err != nil || port == 0 {
			return bad("port must be an integer in 1..4294967295")
		}
		if strings.ContainsRune(path, 0) {
			return bad("path contains NUL")
		}
		return dialAddr{scheme: "hvsock", path: path, port: uint32(port)}, nil
	}
	return bad("unsupported scheme " + strconv.Quote(scheme))
}

// dialHybrid connects through a hybrid vsock unix socket, retrying until ctx
// is done. The last attempt's error is returned.
func (d Dialer) dialHybrid(ctx context.Context, addr string, da dialAddr) (net.Conn, error) {
	interval := d.RetryInterval
	if interval <= 0 {
		interval = DefaultRetryInterval
	}
	var lastErr error
	for attempt := 1; ; attempt++ {
		c, err := d.hybridOnce(ctx, da)
		if err == nil {
			return c, nil
		}
		lastErr = err
		t := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("dialing %s: gave up after %d attempts: %w (%w)", addr, attempt, lastErr, ctx.Err())
		case <-t.C:
		}
	}
}

// hybridOnce makes one hybrid vsock connection: dial, send CONNECT, read one
// line that must start with "OK".
func (d Dialer) hybridOnce(ctx context.Context, da dialAddr) (net.Conn, error) {
	timeout := d.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	var nd net.Dialer
	c, err := nd.DialContext(ctx, "unix", da.path)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	if err := c.SetDeadline(deadline); err != nil {
		c.Close()
		return nil, err
	}
	// Unblock the handshake if ctx is cancelled without a deadline.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := fmt.Fprintf(c, "CONNECT %d\n", da.port); err != nil {
		c.Close()
		return nil, fmt.Errorf("sending hybrid vsock CONNECT: %w", err)
	}
	line, err := readLine(c, maxHandshakeLine)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading hybrid vsock answer: %w", err)
	}
	if !strings.HasPrefix(line, "OK") {
		c.Close()
		return nil, fmt.Errorf("hybrid vsock CONNECT %d refused: answer %q: %w", da.port, line, errdefs.ErrUnavailable)
	}
	if !stop() {
		c.Close()
		return nil, ctx.Err()
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

var errLineTooLong = errors.New("line too long")

// readLine reads up to and including '\n' one byte at a time, so nothing of
// the stream after the line is consumed. The newline is not returned.
func readLine(c net.Conn, limit int) (string, error) {
	buf := make([]byte, 0, limit)
	var b [1]byte
	for len(buf) < limit {
		n, err := c.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return string(buf), nil
			}
			buf = append(buf, b[0])
			continue
		}
		if err != nil {
			return string(buf), err
		}
	}
	return string(buf), errLineTooLong
}
