package faults

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/agent/config"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/initdata"
	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/attester/snp"
	"github.com/cova-project/cova/attester/tdx"
	"github.com/cova-project/cova/attester/tsm"
	"github.com/cova-project/cova/attester/tsm/tsmtest"
	"github.com/cova-project/cova/cdh/kbs"
	devkbs "github.com/cova-project/cova/test/kbs"
)

// eioFile is a real file whose read fails with EIO (offset 0 of a process's
// memory is never mapped), so the real os.Open/read path sees the error.
const eioFile = "/proc/self/mem"

// initdataImage is a valid initdata device image.
func initdataImage(t testing.TB) []byte {
	t.Helper()
	doc := "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"aa.toml\" = '''\n[token_configs.kbs]\nurl = \"https://kbs.example\"\n'''\n"
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(doc))
	_ = zw.Close()
	b := binary.LittleEndian.AppendUint64([]byte(initdata.Magic), uint64(gz.Len()))
	b = append(b, gz.Bytes()...)
	return append(b, make([]byte, 512-len(b)%512)...)
}

// devDir is a fake /dev holding files (regular files stand in for disks).
func devDir(t testing.TB, files map[string][]byte) string {
	t.Helper()
	dir := t.TempDir()
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// failAfter serves data, then err.
type failAfter struct {
	data []byte
	err  error
}

func (f *failAfter) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}
func (f *failAfter) Close() error { return nil }

// loadInitdata is the agent's boot step: it must return (nil, nil) only when
// there is no initdata device.
func loadInitdata(ctx context.Context, t *testing.T, d initdata.Devices, a attester.Attester) error {
	id, err := initdata.Load(ctx, initdata.Options{Devices: d, Attester: a, Dir: t.TempDir()})
	if err != nil && id != nil {
		t.Errorf("an error and a document: %v", err)
	}
	return err
}

// eioFiles is a TDX measurement sysfs whose reads fail with EIO.
type eioFiles struct{}

func (eioFiles) ReadFile(name string) ([]byte, error) {
	return nil, &fs.PathError{Op: "read", Path: name, Err: syscall.EIO}
}
func (eioFiles) WriteFile(name string, _ []byte) error {
	return &fs.PathError{Op: "write", Path: name, Err: syscall.EIO}
}

// zeroFiles is a TDX measurement sysfs whose MRCONFIGID is all zeros (no
// initdata bound by the host).
type zeroFiles struct{}

func (zeroFiles) ReadFile(string) ([]byte, error) { return make([]byte, tdx.RegisterSize), nil }
func (zeroFiles) WriteFile(string, []byte) error  { return nil }

// eioDevice is a /dev/sev-guest whose ioctls fail with EIO.
type eioDevice struct{}

func (eioDevice) Ioctl(uintptr, any) (uintptr, error) { return 0, syscall.EIO }
func (eioDevice) Close() error                        { return nil }

func bootFaults() []fault {
	const b = 5 * time.Second
	img := func(t *testing.T) initdata.Devices {
		return initdata.Devices{Dir: devDir(t, map[string][]byte{"vda": initdataImage(t)}), IncludeRegular: true}
	}
	cfgFile := func(t *testing.T, body string) string {
		p := filepath.Join(t.TempDir(), "agent.toml")
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	noEnv := func(string) string { return "" }
	return []fault{
		{
			area: "boot", name: "no initdata device: boots without initdata", want: succeeds, bound: b,
			run: func(ctx context.Context, t *testing.T) error {
				d := initdata.Devices{Dir: devDir(t, map[string][]byte{"vda": make([]byte, 4096)}), IncludeRegular: true}
				id, err := initdata.Load(ctx, initdata.Options{Devices: d, Attester: sample.New(), Dir: t.TempDir()})
				if id != nil {
					t.Errorf("a document from a blank disk: %v", id.Keys())
				}
				return err
			},
		},
		{
			area: "boot", name: "initdata device: EIO on open", want: failClosed, bound: b,
			classes: []error{initdata.ErrIO, syscall.EIO}, says: []string{"initdata"},
			run: func(ctx context.Context, t *testing.T) error {
				d := img(t)
				d.Open = func(p string) (io.ReadCloser, error) {
					return nil, &fs.PathError{Op: "open", Path: p, Err: syscall.EIO}
				}
				return loadInitdata(ctx, t, d, sample.New())
			},
		},
		{
			area: "boot", name: "initdata device: EIO inside the gzip data", want: failClosed, bound: b,
			classes: []error{initdata.ErrIO, syscall.EIO}, says: []string{"initdata"},
			run: func(ctx context.Context, t *testing.T) error {
				d := img(t)
				data := initdataImage(t)
				d.Open = func(string) (io.ReadCloser, error) {
					return &failAfter{data: data[:initdata.HeaderSize+30], err: syscall.EIO}, nil
				}
				return loadInitdata(ctx, t, d, sample.New())
			},
		},
		{
			area: "boot", name: "initdata device: EIO from the real read path", want: failClosed, bound: b,
			classes: []error{initdata.ErrIO, syscall.EIO}, says: []string{"initdata"},
			run: func(ctx context.Context, t *testing.T) error {
				return loadInitdata(ctx, t, initdata.Devices{Path: eioFile}, sample.New())
			},
		},
		{
			area: "boot", name: "initdata: device directory ENOENT", want: failClosed, bound: b,
			classes: []error{initdata.ErrIO, fs.ErrNotExist}, says: []string{"initdata"},
			run: func(ctx context.Context, t *testing.T) error {
				return loadInitdata(ctx, t, initdata.Devices{Dir: filepath.Join(t.TempDir(), "missing")}, sample.New())
			},
		},
		{
			area: "boot", name: "initdata: named device ENOENT", want: failClosed, bound: b,
			classes: []error{fs.ErrNotExist}, says: []string{"initdata"},
			run: func(ctx context.Context, t *testing.T) error {
				return loadInitdata(ctx, t, initdata.Devices{Path: filepath.Join(t.TempDir(), "vdz")}, sample.New())
			},
		},
		{
			area: "boot", name: "TEE: TDX MRCONFIGID read EIO while binding initdata", want: failClosed, bound: b,
			classes: []error{syscall.EIO}, says: []string{"MRCONFIGID"},
			run: func(ctx context.Context, t *testing.T) error {
				return loadInitdata(ctx, t, img(t), tdx.New(tdx.Config{Measurements: eioFiles{}}))
			},
		},
		{
			area: "boot", name: "TEE: TDREPORT ioctl EIO while binding initdata", want: failClosed, bound: b,
			classes: []error{syscall.EIO},
			run: func(ctx context.Context, t *testing.T) error {
				return loadInitdata(ctx, t, img(t), tdx.New(tdx.Config{TDReport: func(context.Context, [64]byte) ([]byte, error) {
					return nil, fmt.Errorf("TDX_CMD_GET_REPORT0: %w", syscall.EIO)
				}}))
			},
		},
		{
			area: "boot", name: "TEE: /dev/sev-guest ENOENT while binding initdata", want: failClosed, bound: b,
			classes: []error{fs.ErrNotExist}, says: []string{"sev-guest"},
			run: func(ctx context.Context, t *testing.T) error {
				return loadInitdata(ctx, t, img(t), snp.New(snp.DeviceSource{Open: func() (snp.Device, error) {
					return nil, &fs.PathError{Op: "open", Path: "/dev/sev-guest", Err: syscall.ENOENT}
				}}))
			},
		},
		{
			area: "boot", name: "TEE: SNP_GET_EXT_REPORT ioctl EIO while binding initdata", want: failClosed, bound: b,
			classes: []error{syscall.EIO},
			run: func(ctx context.Context, t *testing.T) error {
				return loadInitdata(ctx, t, img(t), snp.New(snp.DeviceSource{Open: func() (snp.Device, error) { return eioDevice{}, nil }}))
			},
		},
		{
			area: "boot", name: "TEE: MRCONFIGID does not bind the initdata", want: failClosed, bound: b,
			classes: []error{attester.ErrInitdataMismatch}, says: []string{"MRCONFIGID"},
			run: func(ctx context.Context, t *testing.T) error {
				return loadInitdata(ctx, t, img(t), tdx.New(tdx.Config{Measurements: zeroFiles{}}))
			},
		},
		{
			area: "boot", name: "TEE: TDX quote (configfs-tsm outblob) EIO: no resource", want: failClosed, bound: 10 * time.Second,
			// go-configfs-tsm flattens the EIO (%v), and the evidence step
			// carries no errdefs class: the message is all the caller has.
			says: []string{"evidence", "quote", "input/output error", "after 2 attempts"},
			run: func(ctx context.Context, t *testing.T) error {
				client := tsmtest.New(tsm.ProviderTDX+"\n", func([]byte, string) ([]byte, []byte, error) {
					return nil, nil, &fs.PathError{Op: "read", Path: "outblob", Err: syscall.EIO}
				})
				vs := devkbs.DefaultVerifiers()
				vs[attester.TeeTDX] = func(context.Context, json.RawMessage, []byte, []byte) (map[string]any, error) {
					return nil, errors.New("no TDX evidence expected")
				}
				r := newKBSRig(t, devkbs.Options{Verifiers: vs}, func(c *kbs.Config) {
					c.Primary = tdx.New(tdx.Config{TSM: client})
					c.RCARAttempts = 2
				})
				err := r.fetch(ctx)
				var ke *kbs.Error
				if !errors.As(err, &ke) || ke.Step != kbs.StepEvidence {
					t.Errorf("not a kbs evidence error: %v", err)
				}
				if st := r.s.Stats(); st.Attested != 0 || st.Resource != 0 {
					t.Errorf("the KBS saw %+v", st)
				}
				return err
			},
		},
		{
			area: "boot", name: "config: kernel command line EIO", want: clearError, bound: b,
			classes: []error{syscall.EIO}, says: []string{"kernel command line"},
			run: func(ctx context.Context, t *testing.T) error {
				_, _, err := config.Load(ctx, config.LoadOptions{CmdlinePath: eioFile, Getenv: noEnv})
				return err
			},
		},
		{
			area: "boot", name: "config: kernel command line ENOENT", want: clearError, bound: b,
			classes: []error{fs.ErrNotExist}, says: []string{"kernel command line"},
			run: func(ctx context.Context, t *testing.T) error {
				_, _, err := config.Load(ctx, config.LoadOptions{CmdlinePath: filepath.Join(t.TempDir(), "cmdline"), Getenv: noEnv})
				return err
			},
		},
		{
			area: "boot", name: "config: --config file ENOENT", want: clearError, bound: b,
			classes: []error{errdefs.ErrNotFound}, says: []string{"config file"},
			run: func(ctx context.Context, t *testing.T) error {
				_, _, err := config.Load(ctx, config.LoadOptions{ConfigFileFlag: filepath.Join(t.TempDir(), "agent.toml"), Getenv: noEnv})
				return err
			},
		},
		{
			area: "boot", name: "config: --config file EIO", want: clearError, bound: b,
			classes: []error{syscall.EIO}, says: []string{"config file"},
			run: func(ctx context.Context, t *testing.T) error {
				_, _, err := config.Load(ctx, config.LoadOptions{ConfigFileFlag: eioFile, Getenv: noEnv})
				return err
			},
		},
		{
			area: "boot", name: "config: agent.config_file on the command line ENOENT", want: clearError, bound: b,
			classes: []error{errdefs.ErrNotFound}, says: []string{"agent.config_file"},
			run: func(ctx context.Context, t *testing.T) error {
				cmdline := cfgFile(t, "console=ttyS0 agent.config_file="+filepath.Join(t.TempDir(), "missing.toml")+"\n")
				_, _, err := config.Load(ctx, config.LoadOptions{CmdlinePath: cmdline, Getenv: noEnv})
				return err
			},
		},
		{
			area: "boot", name: "config: agent.config_file on the command line EIO", want: clearError, bound: b,
			classes: []error{syscall.EIO}, says: []string{"agent.config_file"},
			run: func(ctx context.Context, t *testing.T) error {
				cmdline := cfgFile(t, "agent.config_file="+eioFile+"\n")
				_, _, err := config.Load(ctx, config.LoadOptions{CmdlinePath: cmdline, Getenv: noEnv})
				if errors.Is(err, errdefs.ErrNotFound) {
					t.Errorf("EIO reported as a missing file: %v", err)
				}
				return err
			},
		},
	}
}
