// Package vm boots Cova's initrd under QEMU (TCG, never KVM: the hosts'
// /dev/kvm cannot run a normal guest) and drives the agent the way the Kata
// shim does, over a virtio-serial port whose host side is a unix socket
// (the agent's test transport agent.test_transport=vport:NAME).
//
// The guest kernel is Debian's cloud kernel, downloaded and unpacked but
// never installed (fetch-kernel.sh). The tests beside this file build the
// initrd with package rootfs, boot it, run busybox containers and assert
// that DestroySandbox powers the VM off. Config.TPM adds a TPM 2.0 (TIS)
// backed by a swtpm (SWTPM), which the guest kernel's built-in tpm_tis
// driver turns into the agent's /dev/tpm0.
package vm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"

	pb "github.com/cova-project/cova/protocols/grpc"
)

// PortName is the name of the virtio-serial port the agent listens on.
const PortName = "agent.0"

// BaseCmdline is the kernel command line of every boot; Config.Append
// follows it.
const BaseCmdline = "console=ttyS0 panic=-1 quiet agent.test_transport=vport:" + PortName

// Kernel is an unpacked kernel package.
type Kernel struct {
	Release string // uname -r
	Root    string // the extracted package (holds lib/modules/<release>)
	Image   string // the bzImage
}

// FetchKernel runs fetch-kernel.sh (idempotent: it reuses its cache) and
// returns what it printed.
func FetchKernel(ctx context.Context, script string) (Kernel, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "bash", script)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Kernel{}, fmt.Errorf("%s: %w: %s", script, err, strings.TrimSpace(stderr.String()))
	}
	var k Kernel
	for _, line := range strings.Split(string(out), "\n") {
		key, val, _ := strings.Cut(strings.TrimSpace(line), "=")
		switch key {
		case "KVER":
			k.Release = val
		case "ROOT":
			k.Root = val
		case "KERNEL":
			k.Image = val
		}
	}
	if k.Release == "" || k.Root == "" || k.Image == "" {
		return Kernel{}, fmt.Errorf("%s: unexpected output %q", script, out)
	}
	if _, err := os.Stat(k.Image); err != nil {
		return Kernel{}, fmt.Errorf("%s: %w", script, err)
	}
	return k, nil
}

// Disk is a raw disk image attached as a virtio-blk PCI device behind its
// own PCIe root port at Slot of the root bus, so the guest sees it at the
// Kata PCI path "<Slot>/00".
type Disk struct {
	Path     string
	ReadOnly bool
	Slot     uint8 // 1..31 on pcie.0; must not collide with another disk
}

// PCIPath is the Kata PCI path of the disk: root port slot / device slot.
func (d Disk) PCIPath() string { return fmt.Sprintf("%02x/%02x", d.Slot, 0) }

// Config describes one boot.
type Config struct {
	QEMU   string // default qemu-system-x86_64
	Kernel string // bzImage
	Initrd string
	// Append is added to BaseCmdline (agent.kernel_modules=..., agent.log=...).
	Append string
	// Dir receives the socket and the console log; it must be short enough
	// for a unix socket path.
	Dir    string
	Memory string // default 512M
	Disks  []Disk
	// Net adds a virtio-net NIC (MAC GuestMAC) on QEMU user networking: the
	// guest reaches the host's loopback services at 10.0.2.2.
	Net bool
	// TPM is the control socket of a swtpm (SWTPM.CtrlSocket): QEMU adds a
	// TPM 2.0 TIS device backed by it. The guest kernel's built-in tpm_tis
	// driver then gives the agent /dev/tpm0 (use the bzImage: the PVH
	// vmlinux entry disables PnP ACPI, which hides the TIS device).
	TPM string
	// OVMF, when set, boots UEFI firmware instead of QEMU's default
	// SeaBIOS: a measured boot whose PCRs cover the kernel and the initrd
	// (see package rootfs/refvalues).
	OVMF *OVMF
}

// OVMF is a UEFI firmware for Config.OVMF, split as Debian's ovmf package
// ships it: the code (/usr/share/OVMF/OVMF_CODE_4M.fd, built with TPM 2.0
// support and without SMM, so plain q35 under TCG runs it) and a variable
// store template (OVMF_VARS_4M.fd). Start copies the template into
// Config.Dir (VarsFile) because QEMU writes the store the guest sees.
type OVMF struct {
	Code string
	Vars string
}

// Debian's ovmf package.
const (
	DebianOVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	DebianOVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// VarsFile is the VM's own copy of the OVMF variable store, in dir.
func (o OVMF) VarsFile(dir string) string { return filepath.Join(dir, "ovmf-vars.fd") }

// GuestMAC is the MAC of the NIC Config.Net adds.
const GuestMAC = "52:54:00:c0:7a:01"

// Args returns QEMU's arguments for c: q35 under TCG, one vCPU, no
// defaults, serial console on stdio, no reboot (a guest reboot or panic
// ends QEMU), the agent port and the disks.
func (c Config) Args() []string {
	mem := c.Memory
	if mem == "" {
		mem = "512M"
	}
	sock := filepath.Join(c.Dir, "agent.sock")
	args := []string{
		"-machine", "q35,accel=tcg", "-m", mem, "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "stdio", "-monitor", "none", "-no-reboot",
	}
	if c.OVMF != nil {
		args = append(args,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+c.OVMF.Code,
			"-drive", "if=pflash,format=raw,unit=1,file="+c.OVMF.VarsFile(c.Dir))
	}
	args = append(args,
		"-kernel", c.Kernel, "-initrd", c.Initrd,
		"-append", strings.TrimSpace(BaseCmdline+" "+c.Append),
		"-device", "virtio-serial-pci,id=vser0,romfile=",
		"-chardev", "socket,id=ch0,path="+sock+",server=on,wait=off",
		"-device", "virtserialport,bus=vser0.0,chardev=ch0,name="+PortName,
	)
	if c.TPM != "" {
		args = append(args,
			"-chardev", "socket,id=chrtpm,path="+c.TPM,
			"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
			"-device", "tpm-tis,tpmdev=tpm0")
	}
	if c.Net {
		args = append(args, "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,mac="+GuestMAC+",romfile=")
	}
	for i, d := range c.Disks {
		ro := ""
		if d.ReadOnly {
			ro = ",readonly=on"
		}
		args = append(args,
			"-device", fmt.Sprintf("pcie-root-port,id=rp%d,bus=pcie.0,chassis=%d,addr=0x%x", i, i+1, d.Slot),
			"-drive", fmt.Sprintf("file=%s,if=none,id=disk%d,format=raw%s", d.Path, i, ro),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=disk%d,bus=rp%d,addr=0x0,romfile=", i, i),
		)
	}
	return args
}

// VM is a running QEMU.
type VM struct {
	// Socket is the host side of the agent port; ConsoleLog the serial
	// console's copy on disk.
	Socket, ConsoleLog string
	// Started is when QEMU was started.
	Started time.Time

	cmd  *exec.Cmd
	done chan struct{}
	err  error // QEMU's exit, valid after done

	mu        sync.Mutex
	console   bytes.Buffer
	startupMS float64
	listening bool
}

// Start starts QEMU with c. The caller must Kill (or Wait for) it.
func Start(c Config) (*VM, error) {
	if c.Dir == "" || c.Kernel == "" || c.Initrd == "" {
		return nil, errors.New("vm: Dir, Kernel and Initrd are required")
	}
	qemu := c.QEMU
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	for _, d := range c.Disks {
		if d.Slot == 0 || d.Slot > 31 {
			return nil, fmt.Errorf("vm: disk %s: slot %d not in 1..31", d.Path, d.Slot)
		}
	}
	v := &VM{
		Socket:     filepath.Join(c.Dir, "agent.sock"),
		ConsoleLog: filepath.Join(c.Dir, "console.log"),
		done:       make(chan struct{}),
	}
	if len(v.Socket) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("vm: socket path %s is too long for a unix socket", v.Socket)
	}
	if c.OVMF != nil {
		if c.OVMF.Code == "" || c.OVMF.Vars == "" {
			return nil, errors.New("vm: OVMF needs Code and Vars")
		}
		if _, err := os.Stat(c.OVMF.Code); err != nil {
			return nil, fmt.Errorf("vm: OVMF code: %w", err)
		}
		vars, err := os.ReadFile(c.OVMF.Vars)
		if err != nil {
			return nil, fmt.Errorf("vm: OVMF variable store: %w", err)
		}
		if err := os.WriteFile(c.OVMF.VarsFile(c.Dir), vars, 0o600); err != nil {
			return nil, fmt.Errorf("vm: OVMF variable store copy: %w", err)
		}
	}
	logf, err := os.OpenFile(v.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("vm: console log: %w", err)
	}
	v.cmd = exec.Command(qemu, c.Args()...)
	v.cmd.Stdin = nil // /dev/null
	// If the test binary dies (a go test timeout), QEMU dies with it.
	v.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	v.cmd.Stdout, v.cmd.Stderr = pw, pw
	v.Started = time.Now()
	if err := v.cmd.Start(); err != nil {
		logf.Close()
		pr.Close()
		pw.Close()
		return nil, fmt.Errorf("vm: starting %s: %w", qemu, err)
	}
	pw.Close()
	go func() {
		v.readConsole(pr, logf)
		pr.Close()
		logf.Close()
	}()
	go func() {
		v.err = v.cmd.Wait()
		close(v.done)
	}()
	return v, nil
}

// readConsole copies the console to the log and the buffer and notes the
// agent's "agent listening" line.
func (v *VM) readConsole(r io.Reader, logf io.Writer) {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			_, _ = io.WriteString(logf, line)
			v.mu.Lock()
			v.console.WriteString(line)
			if !v.listening {
				if ms, ok := parseListening(line); ok {
					v.listening, v.startupMS = true, ms
				}
			}
			v.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// parseListening extracts startup_ms from the agent's JSON log line
// {"msg":"agent listening",...,"startup_ms":12.3}.
func parseListening(line string) (float64, bool) {
	i := strings.IndexByte(line, '{')
	if i < 0 || !strings.Contains(line, "agent listening") {
		return 0, false
	}
	var rec struct {
		Msg       string   `json:"msg"`
		StartupMS *float64 `json:"startup_ms"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(line[i:])), &rec); err != nil || rec.Msg != "agent listening" || rec.StartupMS == nil {
		return 0, false
	}
	return *rec.StartupMS, true
}

// Console returns the console output so far.
func (v *VM) Console() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.console.String()
}

// AgentStartup returns the agent's own exec-to-listening time, once its log
// line has been seen.
func (v *VM) AgentStartup() (ms float64, ok bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.startupMS, v.listening
}

// Done is closed when QEMU has exited.
func (v *VM) Done() <-chan struct{} { return v.done }

// Wait waits for QEMU to exit by itself and returns its exit error; when ctx
// ends first it kills QEMU and says so.
func (v *VM) Wait(ctx context.Context) error {
	select {
	case <-v.done:
		return v.err
	case <-ctx.Done():
		v.Kill()
		return fmt.Errorf("vm: QEMU did not exit by itself: %w", ctx.Err())
	}
}

// Kill ends QEMU (by its pid) and waits for it. It is safe to call after it
// exited.
func (v *VM) Kill() {
	select {
	case <-v.done:
		return
	default:
	}
	_ = v.cmd.Process.Kill()
	<-v.done
}

// Dial connects to the host side of the agent port, retrying until QEMU has
// created the socket.
func (v *VM) Dial(ctx context.Context) (*Agent, error) {
	for {
		c, err := net.Dial("unix", v.Socket)
		if err == nil {
			return newAgent(c), nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("vm: dialing %s: %w (last error %v)", v.Socket, ctx.Err(), err)
		case <-v.done:
			return nil, fmt.Errorf("vm: QEMU exited before its socket could be dialed: %v", v.err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Agent is a ttrpc client of the agent over one connection.
type Agent struct {
	pb.AgentServiceService
	Health pb.HealthService
	client *ttrpc.Client
}

func newAgent(c net.Conn) *Agent {
	cl := ttrpc.NewClient(c)
	return &Agent{AgentServiceService: pb.NewAgentServiceClient(cl), Health: pb.NewHealthClient(cl), client: cl}
}

// Close closes the connection.
func (a *Agent) Close() error { return a.client.Close() }

// WaitReady repeats Health.Check, each attempt bounded by attempt, until one
// answers SERVING or ctx ends. The port is one byte stream that QEMU only
// reads once the guest opened it, so early requests wait in the socket
// rather than get lost; retrying covers a guest that re-opens the port.
func (a *Agent) WaitReady(ctx context.Context, attempt time.Duration) error {
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, attempt)
		r, err := a.Health.Check(actx, &pb.CheckRequest{})
		cancel()
		if err == nil && r.GetStatus() == pb.HealthCheckResponse_SERVING {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("status %v", r.GetStatus())
		}
		last = err
		if errors.Is(err, ttrpc.ErrClosed) {
			return fmt.Errorf("vm: agent connection closed (did QEMU exit?): %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("vm: agent not ready: %w (last: %v)", ctx.Err(), last)
		case <-time.After(50 * time.Millisecond): // a fast failure must not spin
		}
	}
}

// chunkSize is the data size of each CopyFile request (the Go shim's).
const chunkSize = 1 << 20

// CopyDir copies the host directory src into the guest directory dst (under
// /run/kata-containers/shared/containers) with CopyFile: directories,
// symlinks and regular files in chunks, parents first, as the shim does
// for a sandbox without a shared file system. It returns the number of
// requests and file bytes sent.
func (a *Agent) CopyDir(ctx context.Context, src, dst string) (reqs int, n int64, err error) {
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		guest := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		perm := uint32(fi.Mode().Perm())
		base := pb.CopyFileRequest{Path: guest, DirMode: 0o755}
		switch {
		case d.IsDir():
			r := &base
			r.FileMode = unix.S_IFDIR | perm
			reqs++
			_, err = a.CopyFile(ctx, r)
		case d.Type() == fs.ModeSymlink:
			target, lerr := os.Readlink(p)
			if lerr != nil {
				return lerr
			}
			r := &base
			r.FileMode, r.Data = unix.S_IFLNK|0o777, []byte(target)
			reqs++
			_, err = a.CopyFile(ctx, r)
		case d.Type().IsRegular():
			data, rerr := os.ReadFile(p)
			if rerr != nil {
				return rerr
			}
			for off := 0; off == 0 || off < len(data); off += chunkSize {
				end := min(off+chunkSize, len(data))
				r := &pb.CopyFileRequest{Path: guest, DirMode: 0o755, FileMode: unix.S_IFREG | perm,
					FileSize: int64(len(data)), Offset: int64(off), Data: data[off:end]}
				reqs++
				if _, err = a.CopyFile(ctx, r); err != nil {
					break
				}
			}
			n += int64(len(data))
		default:
			return fmt.Errorf("%s: cannot copy a %v", p, d.Type())
		}
		if err != nil {
			return fmt.Errorf("CopyFile %s: %w", guest, err)
		}
		return nil
	})
	return reqs, n, err
}

// ReadAll reads a process's stdout (or stderr with stderr=true) until the
// agent answers with no data or an error (the end of the stream).
func (a *Agent) ReadAll(ctx context.Context, cid, eid string, stderr bool) []byte {
	var out []byte
	for {
		req := &pb.ReadStreamRequest{ContainerId: cid, ExecId: eid, Len: 32 << 10}
		var (
			r   *pb.ReadStreamResponse
			err error
		)
		if stderr {
			r, err = a.ReadStderr(ctx, req)
		} else {
			r, err = a.ReadStdout(ctx, req)
		}
		if err != nil || len(r.GetData()) == 0 {
			return out
		}
		out = append(out, r.GetData()...)
	}
}
