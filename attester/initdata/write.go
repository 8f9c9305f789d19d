package initdata

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester"
)

// Where kata-agent puts the document and the configurations it carries.
const (
	DefaultDir    = "/run/confidential-containers/initdata"
	TOMLFile      = "initdata.toml"
	AAConfigFile  = "aa.toml"
	CDHConfigFile = "cdh.toml"
)

// Write writes the document to dir/initdata.toml and the aa.toml and
// cdh.toml data entries to dir/aa.toml and dir/cdh.toml (DefaultDir when dir
// is empty). A configuration the document lacks is removed, so no stale file
// outlives it. The directory is created 0700 and the files 0600 (only the
// agent and its in-process components read them); each file is replaced
// atomically.
func (d *Initdata) Write(dir string) error {
	if dir == "" {
		dir = DefaultDir
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("initdata: create %s: %w", dir, err)
	}
	if err := writeFile(filepath.Join(dir, TOMLFile), d.TOML); err != nil {
		return err
	}
	for _, f := range []struct{ key, name string }{{KeyAAConfig, AAConfigFile}, {KeyCDHConfig, CDHConfigFile}} {
		p := filepath.Join(dir, f.name)
		v, ok := d.Data[f.key]
		if !ok {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("initdata: remove stale %s: %w", p, err)
			}
			continue
		}
		if err := writeFile(p, []byte(v)); err != nil {
			return err
		}
	}
	return nil
}

// writeFile replaces path with b through a synced temporary file.
func writeFile(path string, b []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("initdata: write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(b)
	if err == nil {
		err = f.Chmod(0o600)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("initdata: write %s: %w", path, err)
	}
	return nil
}

// Bind has a check or establish the hardware binding of digest through its
// attester.InitdataBinder: TDX compares MRCONFIGID with the digest
// zero-padded or truncated to 48 bytes, SNP compares HOST_DATA with it fitted
// to 32 bytes, vTPM attesters extend PCR 8 with it (it must then be a 32-byte
// sha256 digest). bound is false when a cannot bind initdata (sample, CCA):
// not an error, as upstream. A differing hardware value is an error matching
// ErrMismatch.
func Bind(ctx context.Context, a attester.Attester, digest []byte) (bound bool, err error) {
	if a == nil {
		return false, fmt.Errorf("initdata: bind: attester: nil: %w", errdefs.ErrInvalidArgument)
	}
	bound, err = attester.BindInitdata(ctx, a, digest)
	if err != nil {
		return false, fmt.Errorf("initdata: %w", err)
	}
	return bound, nil
}

// Options configures Load.
type Options struct {
	// Devices is where the initdata device is looked for.
	Devices Devices
	// Attester is the primary attester; it binds the digest.
	Attester attester.Attester
	// Dir receives initdata.toml, aa.toml and cdh.toml; DefaultDir when
	// empty.
	Dir string
	// Logger receives progress; discarded when nil. The document's
	// contents are never logged.
	Logger *slog.Logger
}

// Load is the agent's boot-time initdata step: find and check the document,
// bind its digest with the primary attester, then write its files. It
// returns (nil, nil) when there is no initdata device; every other failure
// is an error and the agent must not serve. Binding happens before anything
// from the document is written, so an unbound document never configures the
// guest.
func Load(ctx context.Context, o Options) (*Initdata, error) {
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Attester == nil {
		return nil, fmt.Errorf("initdata: options: Attester: nil: %w", errdefs.ErrInvalidArgument)
	}
	id, err := Find(ctx, o.Devices, log)
	if IsNotPresent(err) {
		log.Info("initdata: no initdata device", "detail", err.Error())
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("initdata: %w", err)
	}
	bound, err := Bind(ctx, o.Attester, id.Digest)
	if err != nil {
		return nil, err
	}
	if !bound {
		log.Warn("initdata: the TEE cannot bind initdata; only a remote verifier can check it",
			"tee", o.Attester.Tee().String())
	}
	if err := id.Write(o.Dir); err != nil {
		return nil, err
	}
	log.Info("initdata: loaded", "device", id.Device, "algorithm", id.Algorithm,
		"digest", fmt.Sprintf("%x", id.Digest), "keys", id.Keys(), "bound", bound, "tee", o.Attester.Tee().String())
	return id, nil
}
