package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// sealedPrefix marks a CoCo sealed secret.
const sealedPrefix = "sealed."

// unsealEnv replaces every env value that is a sealed secret with its
// plaintext. Unlike the reference, which only warns, a secret that cannot be
// unsealed fails the request: the workload must not start without it. Error
// messages name the variable, never a value.
func (a *Agent) unsealEnv(ctx context.Context, field string, env []string) error {
	for i, e := range env {
		name, value, ok := strings.Cut(e, "=")
		if !ok || !strings.HasPrefix(value, sealedPrefix) {
			continue
		}
		if a.opts.Unseal == nil {
			return fmt.Errorf("%s[%d] (%s) is a sealed secret but no Confidential Data Hub is configured: %w", field, i, name, errdefs.ErrFailedPrecondition)
		}
		plain, err := a.opts.Unseal(ctx, value)
		if err != nil {
			return fmt.Errorf("unseal %s[%d] (%s): %w", field, i, name, err)
		}
		env[i] = name + "=" + string(plain)
	}
	return nil
}

// maxSealedFile bounds how much of a shared file is read to look for a
// sealed secret.
const maxSealedFile = 1 << 20

// unsealMounts unseals sealed secrets in the files the host shared for the
// container's bind mounts (Kubernetes secret volumes arrive by CopyFile
// under the copyfile root): for a secret volume, each top-level symlink
// ("key" -> "..data/key") whose file holds a sealed secret is repointed to a
// sibling "<file>.unsealed" with the plaintext; a mounted file (subPath)
// gets its mount source replaced. Only paths inside the copyfile root are
// considered, and no symlink may lead out of the mounted directory.
func (a *Agent) unsealMounts(ctx context.Context, s *specs.Spec) error {
	root := strings.TrimSuffix(a.opts.Copier.Root(), "/") + "/"
	for i := range s.Mounts {
		m := &s.Mounts[i]
		if m.Type != "bind" && !slices.Contains(m.Options, "bind") && !slices.Contains(m.Options, "rbind") {
			continue
		}
		src := filepath.Clean(m.Source)
		if !strings.HasPrefix(src, root) {
			continue
		}
		fi, err := os.Lstat(src)
		if err != nil {
			continue // not shared (yet): not ours to judge here
		}
		field := fmt.Sprintf("OCI.Mounts[%d]", i)
		switch {
		case fi.Mode().IsRegular():
			out, changed, err := a.unsealFile(ctx, field, src)
			if err != nil {
				return err
			}
			if changed {
				m.Source = out
			}
		case fi.IsDir():
			if err := a.unsealDir(ctx, field, src); err != nil {
				return err
			}
		}
	}
	return nil
}

// unsealDir handles a Kubernetes secret volume directory.
func (a *Agent) unsealDir(ctx context.Context, field, dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("%s: read %s: %w", field, dir, err)
	}
	realDir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("%s: resolve %s: %w", field, dir, err)
	}
	for _, e := range ents {
		if e.Type()&os.ModeSymlink == 0 || strings.HasPrefix(e.Name(), "..") {
			continue
		}
		link := filepath.Join(dir, e.Name())
		target, err := os.Readlink(link)
		if err != nil || filepath.IsAbs(target) || filepath.Clean(target) == ".." || strings.HasPrefix(filepath.Clean(target), "../") {
			continue
		}
		file, err := filepath.EvalSymlinks(link)
		if err != nil || !strings.HasPrefix(file, strings.TrimSuffix(realDir, "/")+"/") {
			continue // dangling, or leads out of the volume: never followed
		}
		_, changed, err := a.unsealFile(ctx, field+" "+e.Name(), file)
		if err != nil {
			return err
		}
		if !changed {
			continue
		}
		// Repoint key -> <target>.unsealed atomically (as the reference does).
		tmp := link + ".cova-tmp"
		_ = os.Remove(tmp)
		if err := os.Symlink(target+".unsealed", tmp); err != nil {
			return fmt.Errorf("%s: repoint %s: %w", field, e.Name(), err)
		}
		if err := os.Rename(tmp, link); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("%s: repoint %s: %w", field, e.Name(), err)
		}
	}
	return nil
}

// unsealFile writes "<path>.unsealed" when path holds a sealed secret and
// returns that path.
func (a *Agent) unsealFile(ctx context.Context, field, path string) (string, bool, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", false, nil
	}
	data, err := io.ReadAll(io.LimitReader(f, maxSealedFile+1))
	fi, serr := f.Stat()
	f.Close()
	if err != nil || serr != nil || len(data) > maxSealedFile || !strings.HasPrefix(string(data), sealedPrefix) {
		return "", false, nil
	}
	if a.opts.Unseal == nil {
		return "", false, fmt.Errorf("%s holds a sealed secret but no Confidential Data Hub is configured: %w", field, errdefs.ErrFailedPrecondition)
	}
	plain, err := a.opts.Unseal(ctx, strings.TrimSpace(string(data)))
	if err != nil {
		return "", false, fmt.Errorf("unseal %s: %w", field, err)
	}
	out := path + ".unsealed"
	tmp := out + ".cova-tmp"
	_ = os.Remove(tmp)
	w, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, fi.Mode().Perm())
	if err != nil {
		return "", false, fmt.Errorf("%s: write unsealed file: %w", field, err)
	}
	_, werr := w.Write(plain)
	cerr := w.Close()
	if werr != nil || cerr != nil {
		_ = os.Remove(tmp)
		return "", false, fmt.Errorf("%s: write unsealed file: %w", field, errors.Join(werr, cerr))
	}
	if err := os.Rename(tmp, out); err != nil {
		_ = os.Remove(tmp)
		return "", false, fmt.Errorf("%s: write unsealed file: %w", field, err)
	}
	return out, true, nil
}
