package sysinit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/errdefs"
	"golang.org/x/sys/unix"
)

// moduleInitCompressedFile is finit_module's MODULE_INIT_COMPRESSED_FILE
// flag (Linux 5.17+): the kernel decompresses the file itself.
const moduleInitCompressedFile = 4

// moduleSuffixes are the module file name endings, compressed ones last.
var moduleSuffixes = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

// LoadModules loads kernel modules with finit_module(2). Each entry of mods
// is a module name (dashes and underscores are equivalent) or an absolute
// path to a .ko file, optionally followed by space-separated parameters
// ("e1000e InterruptThrottleRate=3000"). Names are resolved through
// root/lib/modules/$(uname -r)/modules.dep; dependencies are loaded first,
// without parameters. Modules already loaded (/proc/modules, /sys/module) or
// built in (modules.builtin) are skipped, and EEXIST counts as success.
// Compressed modules (.ko.xz, .ko.zst, .ko.gz) are handed to the kernel with
// MODULE_INIT_COMPRESSED_FILE; a kernel that cannot take them yields an
// error wrapping errdefs.ErrNotImplemented. Errors name the module.
//
// It refuses (errdefs.ErrFailedPrecondition) unless the process is PID 1.
func LoadModules(ctx context.Context, log *slog.Logger, root string, mods []string) error {
	if len(mods) == 0 {
		return nil
	}
	if !IsPID1() {
		return fmt.Errorf("loading kernel modules: refusing, not PID 1: %w", errdefs.ErrFailedPrecondition)
	}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return fmt.Errorf("loading kernel modules: uname: %w", err)
	}
	l, err := newModuleLoader(orDiscard(log), root, unix.ByteSliceToString(uts.Release[:]))
	if err != nil {
		return err
	}
	return l.load(ctx, mods)
}

// modEntry is one line of modules.dep: paths relative to the module dir.
type modEntry struct {
	path string
	deps []string
	bad  bool // a path in the line escapes the module dir
}

// moduleLoader resolves and loads modules; finit and loaded are seams for
// tests.
type moduleLoader struct {
	log   *slog.Logger
	dir   string // root/lib/modules/<release>
	finit func(f *os.File, params string, flags int) error
	// loaded reports whether the running kernel already has the module.
	loaded func(name string) bool

	parsed  bool
	deps    map[string]modEntry
	depsErr error
	builtin map[string]bool
	done    map[string]bool // loaded or skipped during this run
}

func newModuleLoader(log *slog.Logger, root, release string) (*moduleLoader, error) {
	if root == "" {
		root = "/"
	}
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("loading kernel modules: root %q: must be an absolute path: %w", root, errdefs.ErrInvalidArgument)
	}
	if release == "" || !filepath.IsLocal(release) || strings.ContainsRune(release, '/') {
		return nil, fmt.Errorf("loading kernel modules: kernel release %q: not a single path element: %w", release, errdefs.ErrInvalidArgument)
	}
	l := &moduleLoader{
		log:  log,
		dir:  filepath.Join(root, "lib/modules", release),
		done: map[string]bool{},
		finit: func(f *os.File, params string, flags int) error {
			return unix.FinitModule(int(f.Fd()), params, flags)
		},
	}
	l.loaded = kernelHasModule()
	return l, nil
}

// kernelHasModule returns a check against /sys/module and a snapshot of
// /proc/modules (absent on kernels without module support).
func kernelHasModule() func(string) bool {
	inProc := map[string]bool{}
	if data, err := os.ReadFile("/proc/modules"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if f := strings.Fields(line); len(f) > 0 {
				inProc[f[0]] = true
			}
		}
	}
	return func(name string) bool {
		if inProc[name] {
			return true
		}
		_, err := os.Stat(filepath.Join("/sys/module", name))
		return err == nil
	}
}

// moduleRequest is one parsed entry of the mods list.
type moduleRequest struct {
	name   string // normalized
	path   string // absolute, when given as a path
	params string
}

func parseModuleRequest(i int, entry string) (moduleRequest, error) {
	f := strings.Fields(entry)
	if len(f) == 0 {
		return moduleRequest{}, fmt.Errorf("mods[%d]: empty module entry: %w", i, errdefs.ErrInvalidArgument)
	}
	if strings.ContainsRune(entry, 0) {
		return moduleRequest{}, fmt.Errorf("mods[%d]: NUL byte in module entry: %w", i, errdefs.ErrInvalidArgument)
	}
	req := moduleRequest{params: strings.Join(f[1:], " ")}
	target := f[0]
	if strings.HasPrefix(target, "/") {
		if filepath.Clean(target) != target {
			return moduleRequest{}, fmt.Errorf("mods[%d]: module path %q is not clean: %w", i, target, errdefs.ErrInvalidArgument)
		}
		name, ok := moduleNameFromPath(target)
		if !ok {
			return moduleRequest{}, fmt.Errorf("mods[%d]: module path %q: want a .ko, .ko.xz, .ko.zst or .ko.gz file: %w", i, target, errdefs.ErrInvalidArgument)
		}
		req.name, req.path = name, target
		return req, nil
	}
	if !validModuleName(target) {
		return moduleRequest{}, fmt.Errorf("mods[%d]: module name %q: want letters, digits, '-' and '_' (at most 55): %w", i, target, errdefs.ErrInvalidArgument)
	}
	req.name = normalizeModuleName(target)
	return req, nil
}

func validModuleName(s string) bool {
	if s == "" || len(s) > 55 { // MODULE_NAME_LEN is 56 with the NUL
		return false
	}
	for _, r := range s {
		if (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '_' && r != '-' {
			return false
		}
	}
	return true
}

func normalizeModuleName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// moduleNameFromPath returns the normalized module name of a module file.
func moduleNameFromPath(p string) (string, bool) {
	base := filepath.Base(p)
	for i := len(moduleSuffixes) - 1; i >= 0; i-- {
		if s := moduleSuffixes[i]; strings.HasSuffix(base, s) && len(base) > len(s) {
			name := strings.TrimSuffix(base, s)
			if !validModuleName(name) {
				return "", false
			}
			return normalizeModuleName(name), true
		}
	}
	return "", false
}

func compressedModule(p string) bool {
	return !strings.HasSuffix(p, ".ko")
}

func (l *moduleLoader) load(ctx context.Context, mods []string) error {
	reqs := make([]moduleRequest, 0, len(mods))
	for i, m := range mods {
		r, err := parseModuleRequest(i, m)
		if err != nil {
			return fmt.Errorf("loading kernel modules: %w", err)
		}
		reqs = append(reqs, r)
	}
	for _, r := range reqs {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("loading kernel modules: %w", err)
		}
		if err := l.loadModule(r.name, r.path, r.params, map[string]bool{}); err != nil {
			return err
		}
	}
	return nil
}

// loadModule loads name (from path, or as resolved through modules.dep when
// path is empty) after its dependencies. stack holds the modules being
// resolved, to stop on a dependency cycle.
func (l *moduleLoader) loadModule(name, path, params string, stack map[string]bool) error {
	if l.done[name] {
		if params != "" {
			l.log.Warn("module already loaded in this run; parameters ignored", "module", name)
		}
		return nil
	}
	if l.loaded(name) {
		l.log.Debug("module already loaded", "module", name)
		l.done[name] = true
		return nil
	}
	if stack[name] {
		return fmt.Errorf("module %s: dependency cycle in modules.dep: %w", name, errdefs.ErrInvalidArgument)
	}
	stack[name] = true
	defer delete(stack, name)

	l.parseIndex()
	entry, inDep := l.deps[name]
	if path == "" {
		switch {
		case inDep && entry.bad:
			return fmt.Errorf("module %s: modules.dep entry has a path outside %s: %w", name, l.dir, errdefs.ErrInvalidArgument)
		case inDep:
			path = filepath.Join(l.dir, entry.path)
		case l.builtin[name]:
			l.log.Debug("module is built in", "module", name)
			l.done[name] = true
			return nil
		case l.depsErr != nil:
			return fmt.Errorf("module %s: %w", name, l.depsErr)
		default:
			return fmt.Errorf("module %s: not in %s: %w", name, filepath.Join(l.dir, "modules.dep"), errdefs.ErrNotFound)
		}
	}
	if inDep && !entry.bad {
		// modules.dep lists dependencies so that the last is loaded first.
		for i := len(entry.deps) - 1; i >= 0; i-- {
			dep := entry.deps[i]
			depName, ok := moduleNameFromPath(dep)
			if !ok {
				return fmt.Errorf("module %s: bad dependency %q in modules.dep: %w", name, dep, errdefs.ErrInvalidArgument)
			}
			depPath := ""
			if _, listed := l.deps[depName]; !listed {
				depPath = filepath.Join(l.dir, dep)
			}
			if err := l.loadModule(depName, depPath, "", stack); err != nil {
				return fmt.Errorf("module %s: dependency: %w", name, err)
			}
		}
	}
	if err := l.loadFile(name, path, params); err != nil {
		return err
	}
	l.done[name] = true
	return nil
}

func (l *moduleLoader) loadFile(name, path, params string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("module %s: %w: %w", name, err, errdefs.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("module %s: %w", name, err)
	}
	defer f.Close()
	flags := 0
	compressed := compressedModule(path)
	if compressed {
		flags = moduleInitCompressedFile
	}
	err = l.finit(f, params, flags)
	switch {
	case err == nil:
		l.log.Debug("loaded module", "module", name)
		return nil
	case errors.Is(err, unix.EEXIST):
		l.log.Debug("module already loaded", "module", name)
		return nil
	case compressed && (errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS)):
		return fmt.Errorf("module %s: %s is compressed and this kernel cannot load compressed modules "+
			"(needs MODULE_INIT_COMPRESSED_FILE, Linux 5.17+, and CONFIG_MODULE_DECOMPRESS for this format); "+
			"ship it uncompressed: %w: %w", name, path, err, errdefs.ErrNotImplemented)
	default:
		return fmt.Errorf("module %s: loading %s: %w", name, path, err)
	}
}

// parseIndex reads modules.dep and modules.builtin once. A missing
// modules.dep is only an error when a name has to be resolved.
func (l *moduleLoader) parseIndex() {
	if l.parsed {
		return
	}
	l.parsed = true
	l.deps = map[string]modEntry{}
	l.builtin = map[string]bool{}
	if data, err := os.ReadFile(filepath.Join(l.dir, "modules.builtin")); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if name, ok := moduleNameFromPath(strings.TrimSpace(line)); ok {
				l.builtin[name] = true
			}
		}
	}
	data, err := os.ReadFile(filepath.Join(l.dir, "modules.dep"))
	if err != nil {
		l.depsErr = fmt.Errorf("reading modules.dep: %w", err)
		if errors.Is(err, fs.ErrNotExist) {
			l.depsErr = fmt.Errorf("%w: %w", l.depsErr, errdefs.ErrNotFound)
		}
		return
	}
	deps, err := parseModulesDep(data)
	if err != nil {
		l.depsErr = err
		return
	}
	l.deps = deps
}

// parseModulesDep parses "path: dep dep ..." lines.
func parseModulesDep(data []byte) (map[string]modEntry, error) {
	out := map[string]modEntry{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		path, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		path = strings.TrimSpace(path)
		name, ok := moduleNameFromPath(path)
		if !ok {
			continue
		}
		e := modEntry{path: path, deps: strings.Fields(rest)}
		if !filepath.IsLocal(path) {
			e.bad = true
		}
		for _, d := range e.deps {
			if !filepath.IsLocal(d) {
				e.bad = true
			}
		}
		if _, dup := out[name]; !dup {
			out[name] = e
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parsing modules.dep: %w", err)
	}
	return out, nil
}
