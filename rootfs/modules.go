package rootfs

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/errdefs"
)

// moduleSuffixes are the file name endings of kernel modules.
var moduleSuffixes = []string{".ko.zst", ".ko.xz", ".ko.gz", ".ko"}

// maxIndexSize bounds the modules.* index files read from a kernel tree.
const maxIndexSize = 64 << 20

// KernelModules is the module directory of one kernel release, as depmod
// left it: the modules and their modules.dep.
type KernelModules struct {
	// Dir is the .../lib/modules/<release> directory.
	Dir string
	// Release is the kernel release (uname -r).
	Release string

	deps    map[string]depEntry // by normalized module name
	lines   []string            // names in modules.dep order
	builtin map[string]bool
}

// depEntry is one modules.dep line: paths relative to Dir.
type depEntry struct {
	path string
	deps []string
}

// Module is a module to load, with its path relative to the module
// directory.
type Module struct {
	Name string // normalized: '-' becomes '_'
	Path string // e.g. kernel/drivers/virtio/virtio.ko
}

// OpenKernelModules reads the module index under dir, which is either an
// extracted kernel package (holding lib/modules/<release> or
// usr/lib/modules/<release>) or a lib/modules/<release> directory itself.
// release may be empty when the tree holds a single release.
func OpenKernelModules(dir, release string) (*KernelModules, error) {
	if release != "" && (!filepath.IsLocal(release) || strings.ContainsRune(release, '/')) {
		return nil, fmt.Errorf("kernel release %q: must be a single path element: %w", release, errdefs.ErrInvalidArgument)
	}
	modDir, rel, err := findModuleDir(dir, release)
	if err != nil {
		return nil, err
	}
	km := &KernelModules{Dir: modDir, Release: rel, deps: map[string]depEntry{}, builtin: map[string]bool{}}
	data, err := readIndex(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w (run depmod -b ROOT %s)", err, rel)
	}
	if err := km.parseDep(data); err != nil {
		return nil, err
	}
	if data, err := readIndex(filepath.Join(modDir, "modules.builtin")); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if name, ok := moduleName(strings.TrimSpace(line)); ok {
				km.builtin[name] = true
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	return km, nil
}

func findModuleDir(dir, release string) (string, string, error) {
	if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err == nil {
		base := filepath.Base(filepath.Clean(dir))
		if release != "" && release != base {
			return "", "", fmt.Errorf("kernel modules %s: directory is for release %q, not %q: %w", dir, base, release, errdefs.ErrInvalidArgument)
		}
		return dir, base, nil
	}
	var found []string
	for _, sub := range []string{"lib/modules", "usr/lib/modules"} {
		base := filepath.Join(dir, sub)
		if release != "" {
			if fi, err := os.Stat(filepath.Join(base, release)); err == nil && fi.IsDir() {
				return filepath.Join(base, release), release, nil
			}
			continue
		}
		entries, err := os.ReadDir(base)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() {
				found = append(found, filepath.Join(base, e.Name()))
			}
		}
	}
	switch {
	case release != "":
		return "", "", fmt.Errorf("kernel modules: no lib/modules/%s under %s: %w", release, dir, errdefs.ErrNotFound)
	case len(found) == 0:
		return "", "", fmt.Errorf("kernel modules: no modules.dep in %s and no lib/modules/<release> under it: %w", dir, errdefs.ErrNotFound)
	case len(found) > 1:
		return "", "", fmt.Errorf("kernel modules: %s holds several releases %v: name one: %w", dir, found, errdefs.ErrInvalidArgument)
	}
	return found[0], filepath.Base(found[0]), nil
}

func readIndex(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > maxIndexSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", p, maxIndexSize)
	}
	return os.ReadFile(p)
}

// moduleName returns the normalized module name of a module path.
func moduleName(p string) (string, bool) {
	base := path.Base(p)
	for _, s := range moduleSuffixes {
		if n, ok := strings.CutSuffix(base, s); ok && n != "" {
			return normalizeName(n), true
		}
	}
	return "", false
}

func normalizeName(s string) string { return strings.ReplaceAll(s, "-", "_") }

func (km *KernelModules) parseDep(data []byte) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p, rest, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("modules.dep line %d: no ':': %w", n, errdefs.ErrInvalidArgument)
		}
		e := depEntry{path: p, deps: strings.Fields(rest)}
		for _, q := range append([]string{p}, e.deps...) {
			if !filepath.IsLocal(q) {
				return fmt.Errorf("modules.dep line %d: path %q leaves the module directory: %w", n, q, errdefs.ErrInvalidArgument)
			}
		}
		name, ok := moduleName(p)
		if !ok {
			return fmt.Errorf("modules.dep line %d: %q is not a module file: %w", n, p, errdefs.ErrInvalidArgument)
		}
		if _, dup := km.deps[name]; dup {
			continue // depmod lists a name once; keep the first like modprobe
		}
		km.deps[name] = e
		km.lines = append(km.lines, name)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading modules.dep: %w", err)
	}
	return nil
}

// Resolve returns the modules to load for names, in load order (each
// module's dependencies before it, as `modprobe --show-depends` prints
// them), without repeats, and the names that are built into the kernel.
// A name that is neither a module nor built in is an error wrapping
// errdefs.ErrNotFound.
func (km *KernelModules) Resolve(names []string) ([]Module, []string, error) {
	var (
		out     []Module
		builtin []string
		seen    = map[string]bool{}
	)
	add := func(p string) error {
		name, ok := moduleName(p)
		if !ok {
			return fmt.Errorf("modules.dep: %q is not a module file: %w", p, errdefs.ErrInvalidArgument)
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, Module{Name: name, Path: p})
		}
		return nil
	}
	for i, raw := range names {
		if !validModuleName(raw) {
			return nil, nil, fmt.Errorf("modules[%d]: %q: want letters, digits, '-' and '_': %w", i, raw, errdefs.ErrInvalidArgument)
		}
		name := normalizeName(raw)
		e, ok := km.deps[name]
		if !ok {
			if km.builtin[name] {
				if !slices.Contains(builtin, name) {
					builtin = append(builtin, name)
				}
				continue
			}
			return nil, nil, fmt.Errorf("modules[%d]: %s: not in %s/modules.dep nor built in: %w", i, raw, km.Dir, errdefs.ErrNotFound)
		}
		// depmod orders a module's (transitive) dependencies so that the
		// last one is loaded first.
		for j := len(e.deps) - 1; j >= 0; j-- {
			if err := add(e.deps[j]); err != nil {
				return nil, nil, err
			}
		}
		if err := add(e.path); err != nil {
			return nil, nil, err
		}
	}
	return out, builtin, nil
}

func validModuleName(s string) bool {
	if s == "" || len(s) > 55 {
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '_' && r != '-' {
			return false
		}
	}
	return true
}

// AddModules adds mods (from Resolve) to im under
// /lib/modules/<release>/, with a modules.dep and modules.alias that list
// only them, and the kernel's modules.builtin, so that the agent (or
// modprobe) resolves names inside the initrd.
func (km *KernelModules) AddModules(im *Image, mods []Module) error {
	base := path.Join("lib/modules", km.Release)
	in := map[string]bool{}
	for _, m := range mods {
		e, ok := km.deps[m.Name]
		if !ok || e.path != m.Path {
			return fmt.Errorf("module %s: not from this tree's modules.dep: %w", m.Name, errdefs.ErrInvalidArgument)
		}
		in[m.Name] = true
		if err := im.AddFile(path.Join(base, m.Path), filepath.Join(km.Dir, filepath.FromSlash(m.Path)), 0o644); err != nil {
			return fmt.Errorf("module %s: %w", m.Name, err)
		}
	}
	// Every dependency of an included module must be included too.
	var dep strings.Builder
	for _, name := range km.lines {
		if !in[name] {
			continue
		}
		e := km.deps[name]
		for _, d := range e.deps {
			dn, _ := moduleName(d)
			if !in[dn] {
				return fmt.Errorf("module %s: dependency %s is not in the image: %w", name, dn, errdefs.ErrFailedPrecondition)
			}
		}
		dep.WriteString(e.path + ":")
		for _, d := range e.deps {
			dep.WriteString(" " + d)
		}
		dep.WriteString("\n")
	}
	if err := im.AddBytes(path.Join(base, "modules.dep"), []byte(dep.String()), 0o644); err != nil {
		return err
	}
	alias, err := km.filteredAliases(in)
	if err != nil {
		return err
	}
	if err := im.AddBytes(path.Join(base, "modules.alias"), alias, 0o644); err != nil {
		return err
	}
	data, err := readIndex(filepath.Join(km.Dir, "modules.builtin"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("kernel modules: %w", err)
	}
	return im.AddBytes(path.Join(base, "modules.builtin"), data, 0o644)
}

// filteredAliases returns the lines of modules.alias that name an included
// module ("alias PATTERN MODULE").
func (km *KernelModules) filteredAliases(in map[string]bool) ([]byte, error) {
	data, err := readIndex(filepath.Join(km.Dir, "modules.alias"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kernel modules: %w", err)
	}
	var out bytes.Buffer
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "alias" && in[normalizeName(f[2])] {
			out.WriteString(line + "\n")
		}
	}
	return out.Bytes(), nil
}
