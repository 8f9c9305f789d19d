package container

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"
)

// Process is one process of a container: its init or an exec.
type Process struct {
	ExecID string
	Pid    int

	lp     *libcontainer.Process
	tty    *os.File // pty master, nil without a terminal
	stdinW *os.File // pipe write end, nil with a terminal

	stdout *outStream
	stderr *outStream

	stdinMu     sync.Mutex
	stdinClosed bool

	exited   chan struct{}
	status   int
	exitedAt time.Time
}

// stdio is the parent side of a process's standard streams, built before the
// process starts.
type stdio struct {
	childIn, childOut, childErr *os.File // given to the child, closed after start
	parentIn                    *os.File
	parentOut, parentErr        *os.File
	consoleParent, consoleChild *os.File
}

func newStdio(terminal bool) (_ *stdio, retErr error) {
	s := &stdio{}
	defer func() {
		if retErr != nil {
			s.closeAll()
		}
	}()
	if terminal {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("console socket pair: %w", err)
		}
		s.consoleParent = os.NewFile(uintptr(fds[0]), "console-parent")
		s.consoleChild = os.NewFile(uintptr(fds[1]), "console-child")
		return s, nil
	}
	var err error
	if s.childIn, s.parentIn, err = os.Pipe(); err != nil {
		return nil, fmt.Errorf("stdin pipe: %w", err)
	}
	if s.parentOut, s.childOut, err = os.Pipe(); err != nil {
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	if s.parentErr, s.childErr, err = os.Pipe(); err != nil {
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	return s, nil
}

func (s *stdio) attach(lp *libcontainer.Process) {
	if s.consoleChild != nil {
		lp.ConsoleSocket = s.consoleChild
		return
	}
	lp.Stdin, lp.Stdout, lp.Stderr = s.childIn, s.childOut, s.childErr
}

// closeChild closes the ends the child now owns.
func (s *stdio) closeChild() {
	for _, f := range []*os.File{s.childIn, s.childOut, s.childErr, s.consoleChild} {
		if f != nil {
			f.Close()
		}
	}
	s.childIn, s.childOut, s.childErr, s.consoleChild = nil, nil, nil, nil
}

func (s *stdio) closeAll() {
	s.closeChild()
	for _, f := range []*os.File{s.parentIn, s.parentOut, s.parentErr, s.consoleParent} {
		if f != nil {
			f.Close()
		}
	}
}

// start runs after libcontainer has started the process: it receives the pty
// master, starts the output pumps and the waiter.
func (s *stdio) finish(p *Process, width, height uint16) error {
	s.closeChild()
	if s.consoleParent != nil {
		master, err := recvFd(s.consoleParent)
		s.consoleParent.Close()
		if err != nil {
			return fmt.Errorf("receive pty master: %w", err)
		}
		if width > 0 && height > 0 {
			_ = unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: height, Col: width})
		}
		out, err := dupFile(master, "pty-out")
		if err != nil {
			master.Close()
			return err
		}
		p.tty = master
		p.stdout = newOutStream(out)
		p.stderr = closedStream()
		return nil
	}
	p.stdinW = s.parentIn
	p.stdout = newOutStream(s.parentOut)
	p.stderr = newOutStream(s.parentErr)
	return nil
}

func dupFile(f *os.File, name string) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// recvFd receives one file descriptor sent with SCM_RIGHTS.
func recvFd(sock *os.File) (*os.File, error) {
	name := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4))
	var (
		n, oobn int
		err     error
	)
	conn, err := sock.SyscallConn()
	if err != nil {
		return nil, err
	}
	cerr := conn.Read(func(fd uintptr) bool {
		n, oobn, _, _, err = unix.Recvmsg(int(fd), name, oob, unix.MSG_CMSG_CLOEXEC)
		return err != unix.EAGAIN
	})
	if cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, err
	}
	if n == 0 || oobn == 0 {
		return nil, errors.New("no file descriptor received")
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		return nil, err
	}
	if len(msgs) != 1 {
		return nil, fmt.Errorf("expected 1 control message, got %d", len(msgs))
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil {
		return nil, err
	}
	if len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("expected 1 fd, got %d", len(fds))
	}
	return os.NewFile(uintptr(fds[0]), string(name[:n])), nil
}

// wait reaps the process (a wait on this pid only, so it never steals another
// waiter's child) and records its status as a shell does: the exit code, or
// 128+signal.
func (p *Process) wait() error {
	defer close(p.exited)
	ps, err := p.lp.Wait()
	p.exitedAt = time.Now()
	if ps == nil {
		p.status = 255 // no status to report: the wait itself failed
		return err
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok {
		switch {
		case ws.Exited():
			p.status = ws.ExitStatus()
		case ws.Signaled():
			p.status = 128 + int(ws.Signal())
		default:
			p.status = 255
		}
		return nil
	}
	p.status = ps.ExitCode()
	return nil
}

// Exited is closed when the process has been reaped.
func (p *Process) Exited() <-chan struct{} { return p.exited }

// Wait blocks until the process exits and returns its status.
func (p *Process) Wait(ctx context.Context) (int, error) {
	select {
	case <-p.exited:
		return p.status, nil
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Status returns the exit status and true once the process has exited.
func (p *Process) Status() (int, bool) {
	select {
	case <-p.exited:
		return p.status, true
	default:
		return 0, false
	}
}

// Signal sends sig to the process unless it has already exited.
func (p *Process) Signal(sig syscall.Signal) error {
	if _, done := p.Status(); done {
		return fmt.Errorf("process %d has exited: %w", p.Pid, errdefs.ErrNotFound)
	}
	if err := unix.Kill(p.Pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("signal %d to pid %d: %w", sig, p.Pid, err)
	}
	return nil
}

// ReadStdout returns up to n bytes of output; io.EOF at the end.
func (p *Process) ReadStdout(ctx context.Context, n int) ([]byte, error) {
	return p.stdout.Read(ctx, n)
}

// ReadStderr returns up to n bytes of error output; io.EOF at the end.
func (p *Process) ReadStderr(ctx context.Context, n int) ([]byte, error) {
	return p.stderr.Read(ctx, n)
}

// DrainOutput discards the process's output so it can never block on a full
// pipe (used when the host may not read it).
func (p *Process) DrainOutput() {
	p.stdout.Drain()
	p.stderr.Drain()
}

// DrainStream discards one output stream (stdout or stderr).
func (p *Process) DrainStream(stdout bool) {
	if stdout {
		p.stdout.Drain()
	} else {
		p.stderr.Drain()
	}
}

// OutputEnded reports whether both output streams were consumed to EOF.
func (p *Process) OutputEnded() bool { return p.stdout.Ended() && p.stderr.Ended() }

// WriteStdin writes data to the process's stdin and returns the count.
func (p *Process) WriteStdin(ctx context.Context, data []byte) (int, error) {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdinClosed {
		return 0, fmt.Errorf("stdin is closed: %w", errdefs.ErrFailedPrecondition)
	}
	w := p.stdinW
	if p.tty != nil {
		w = p.tty
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = w.SetWriteDeadline(dl)
		defer w.SetWriteDeadline(time.Time{})
	}
	n, err := w.Write(data)
	if err != nil {
		return n, fmt.Errorf("write stdin: %w", err)
	}
	return n, nil
}

// CloseStdin closes stdin (with a terminal, it sends end-of-transmission).
func (p *Process) CloseStdin() error {
	p.stdinMu.Lock()
	defer p.stdinMu.Unlock()
	if p.stdinClosed {
		return nil
	}
	p.stdinClosed = true
	if p.tty != nil {
		_, err := p.tty.Write([]byte{4})
		return err
	}
	return p.stdinW.Close()
}

// Resize sets the terminal size.
func (p *Process) Resize(rows, cols uint32) error {
	if p.tty == nil {
		return fmt.Errorf("process has no terminal: %w", errdefs.ErrFailedPrecondition)
	}
	if rows > 0xffff || cols > 0xffff {
		return fmt.Errorf("row/column out of range: %w", errdefs.ErrInvalidArgument)
	}
	return unix.IoctlSetWinsize(int(p.tty.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
}

// release closes the parent ends once the process is gone.
func (p *Process) release() {
	p.stdinMu.Lock()
	if !p.stdinClosed && p.stdinW != nil {
		p.stdinW.Close()
	}
	p.stdinClosed = true
	p.stdinMu.Unlock()
	if p.tty != nil {
		p.tty.Close()
	}
}
