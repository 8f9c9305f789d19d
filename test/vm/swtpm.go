package vm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/sys/unix"

	"github.com/cova-project/cova/attester/tpm"
)

// SWTPM is a swtpm process holding one VM's vTPM state. A VM reaches it
// through Config.TPM = CtrlSocket (QEMU's tpm emulator backend, which hands
// swtpm the data channel over the control socket). The same state directory
// can first be served with a command socket (StartSWTPMServer) so the host
// provisions keys (an AK) before the boot. After QEMU is killed, Open
// reaches the TPM as the guest left it, PCRs included.
type SWTPM struct {
	// StateDir holds the TPM state (tpm2-00.permall).
	StateDir string
	// CtrlSocket is the control channel's unix socket.
	CtrlSocket string
	// CmdSocket is the command channel's unix socket, or "" when QEMU owns
	// the data channel.
	CmdSocket string

	cmd    *exec.Cmd
	done   chan struct{}
	stderr bytes.Buffer // read only after done
}

// StartSWTPM starts `swtpm socket --tpm2` on stateDir with its control
// socket in sockDir, for QEMU. The firmware (SeaBIOS) sends TPM2_Startup,
// as on a real machine. The caller must Stop it.
func StartSWTPM(ctx context.Context, bin, stateDir, sockDir string) (*SWTPM, error) {
	return startSWTPM(ctx, bin, stateDir, sockDir, false)
}

// StartSWTPMServer starts swtpm on stateDir with a command socket as well,
// initialized and started (startup-clear), for the host to talk to with
// Open. The caller must Stop it before another swtpm uses stateDir.
func StartSWTPMServer(ctx context.Context, bin, stateDir, sockDir string) (*SWTPM, error) {
	return startSWTPM(ctx, bin, stateDir, sockDir, true)
}

func startSWTPM(ctx context.Context, bin, stateDir, sockDir string, server bool) (*SWTPM, error) {
	if bin == "" {
		bin = "swtpm"
	}
	s := &SWTPM{StateDir: stateDir, CtrlSocket: filepath.Join(sockDir, "swtpm-ctrl.sock"), done: make(chan struct{})}
	if len(s.CtrlSocket) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("swtpm: socket path %s is too long", s.CtrlSocket)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("swtpm: state dir: %w", err)
	}
	for _, p := range []string{s.CtrlSocket, filepath.Join(sockDir, "swtpm-cmd.sock")} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("swtpm: %w", err)
		}
	}
	args := []string{"socket", "--tpm2", "--tpmstate", "dir=" + stateDir, "--ctrl", "type=unixio,path=" + s.CtrlSocket}
	if server {
		s.CmdSocket = filepath.Join(sockDir, "swtpm-cmd.sock")
		args = append(args, "--server", "type=unixio,path="+s.CmdSocket, "--flags", "not-need-init,startup-clear")
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout = &s.stderr
	s.cmd.Stderr = &s.stderr
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("swtpm: start %s: %w", bin, err)
	}
	go func() {
		_ = s.cmd.Wait()
		close(s.done)
	}()
	// Wait until the sockets accept: QEMU connects once, at start. A probe
	// connection is harmless (no --terminate).
	want := []string{s.CtrlSocket}
	if server {
		want = append(want, s.CmdSocket)
	}
	for _, p := range want {
		for {
			c, err := net.Dial("unix", p)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-s.done:
				return nil, fmt.Errorf("swtpm exited at start: %s", bytes.TrimSpace(s.stderr.Bytes()))
			case <-ctx.Done():
				s.Stop()
				return nil, fmt.Errorf("swtpm: %s never accepted: %w", p, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return s, nil
}

// Open returns a go-tpm transport to the TPM: over the command socket
// when there is one (StartSWTPMServer), else over a socket pair whose end
// it hands swtpm on the control channel (CMD_SET_DATAFD, what QEMU does at
// start). The latter works once QEMU is gone — killed, not powered off: a
// clean QEMU exit sends CMD_SHUTDOWN, which ends swtpm — and reads the
// TPM exactly as the guest left it. No resource manager sits in between:
// flush transient objects before closing.
func (s *SWTPM) Open() (transport.TPMCloser, error) {
	if s.CmdSocket != "" {
		c, err := net.DialTimeout("unix", s.CmdSocket, 2*time.Second)
		if err != nil {
			return nil, fmt.Errorf("swtpm: %w", err)
		}
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		return tpm.StreamTransport(c), nil
	}
	return s.openDataFD()
}

// Control channel commands (swtpm's tpm_ioctl.h; big-endian u32 codes,
// answered by a big-endian u32 result, 0 = success).
const (
	cmdSetDataFD = 0x10
)

func (s *SWTPM) openDataFD() (transport.TPMCloser, error) {
	c, err := net.DialTimeout("unix", s.CtrlSocket, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("swtpm control channel: %w", err)
	}
	ctrl := c.(*net.UnixConn)
	_ = ctrl.SetDeadline(time.Now().Add(10 * time.Second))
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		ctrl.Close()
		return nil, fmt.Errorf("swtpm: socketpair: %w", err)
	}
	ours := os.NewFile(uintptr(fds[0]), "swtpm-data")
	theirs := fds[1]
	var cmd [4]byte
	binary.BigEndian.PutUint32(cmd[:], cmdSetDataFD)
	_, _, err = ctrl.WriteMsgUnix(cmd[:], unix.UnixRights(theirs), nil)
	unix.Close(theirs)
	var res [4]byte
	if err == nil {
		_, err = io.ReadFull(ctrl, res[:])
	}
	if err == nil && binary.BigEndian.Uint32(res[:]) != 0 {
		err = fmt.Errorf("result %#x", binary.BigEndian.Uint32(res[:]))
	}
	if err != nil {
		ours.Close()
		ctrl.Close()
		return nil, fmt.Errorf("swtpm: CMD_SET_DATAFD: %w", err)
	}
	data, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		ctrl.Close()
		return nil, fmt.Errorf("swtpm: data channel: %w", err)
	}
	_ = data.SetDeadline(time.Now().Add(30 * time.Second))
	return tpm.StreamTransport(both{data, ctrl}), nil
}

// both is the data connection; closing it closes the control one too.
type both struct {
	net.Conn
	ctrl io.Closer
}

func (b both) Close() error { return errors.Join(b.Conn.Close(), b.ctrl.Close()) }

// Stop ends swtpm (SIGTERM, then SIGKILL after 5 s) and waits for it. The
// persistent state is on disk already: swtpm writes NV changes as they
// happen. Safe to call twice.
func (s *SWTPM) Stop() {
	select {
	case <-s.done:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}
