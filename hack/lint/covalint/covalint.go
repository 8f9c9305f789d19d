// Package covalint holds go/analysis checkers for Cova's security habits:
//
//   - pathjoin: filepath.Join / path.Join with an argument that is not a
//     constant (or the result of a vetted path-safety helper) in the packages
//     that handle host- or image-controlled paths (agent/..., mount/...,
//     imagepull/unpack, cdh/...), outside the path-safety packages. A
//     host-controlled component joined onto a guest path can climb out with
//     "..", or be followed through a symlink; such code must use
//     openat2(RESOLVE_IN_ROOT), securejoin or validated ids. The check is an
//     approximation (no data flow): every non-constant join is reported and
//     each reviewed one is listed, with its reason, in the allowlist.
//   - oscreate: os.Create in the same packages plus the rest of imagepull:
//     it follows symlinks and truncates, so a guest path the host or an
//     image can influence must be opened with O_NOFOLLOW/O_EXCL or through
//     a root (openat2, os.Root).
//   - errcompare: an error compared with == or != (or a switch case) against
//     a package-level error variable: wrapped errors never match; use
//     errors.Is. Comparisons with nil and inside Is methods are fine.
//   - errassert: a type assertion or type switch on an error value: wrapped
//     errors never match; use errors.As. Inside As and Unwrap methods it is
//     fine.
//
// Test files are not checked. Reviewed findings are allowed by entries of
// an allowlist (SetAllowlist): analyzer, package path and function, and a
// reason — so a new finding, even in an allowed package, needs a review.
package covalint

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/token"
	"go/types"
	"strings"
	"sync"

	"golang.org/x/tools/go/analysis"
	"golang.org/x/tools/go/analysis/passes/inspect"
	"golang.org/x/tools/go/ast/inspector"
)

// Module is the import path prefix of Cova's packages.
const Module = "github.com/cova-project/cova"

// PathScope are the packages (and their subpackages) pathjoin checks,
// relative to Module.
var PathScope = []string{"agent", "mount", "imagepull/unpack", "cdh"}

// CreateScope are the packages (and their subpackages) oscreate checks.
var CreateScope = []string{"agent", "mount", "imagepull", "cdh"}

// PathSafe are the path-safety packages: their joins are the vetted ones.
var PathSafe = []string{"agent/copyfile"}

// VettedHelpers are functions whose result is a path made safe (resolved
// inside a root); joining constants onto it is fine.
var VettedHelpers = []string{
	"github.com/cyphar/filepath-securejoin.SecureJoin",
	"github.com/cyphar/filepath-securejoin.SecureJoinVFS",
}

// Analyzers are every checker.
var Analyzers = []*analysis.Analyzer{PathJoin, OSCreate, ErrCompare, ErrAssert}

// Entry allows one analyzer's findings in one function of one package.
type Entry struct {
	Analyzer, Package, Func, Reason string
}

var (
	allowMu sync.RWMutex
	allow   = map[string]Entry{}
)

func allowKey(analyzer, pkg, fn string) string { return analyzer + " " + pkg + " " + fn }

// ParseAllowlist reads lines "analyzer package function reason…"; blank
// lines and lines starting with # are skipped. The reason is required.
func ParseAllowlist(text string) ([]Entry, error) {
	var out []Entry
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 {
			return nil, fmt.Errorf("allowlist line %d: want \"analyzer package function reason…\", got %q", n, line)
		}
		known := false
		for _, a := range Analyzers {
			known = known || a.Name == f[0]
		}
		if !known {
			return nil, fmt.Errorf("allowlist line %d: unknown analyzer %q", n, f[0])
		}
		out = append(out, Entry{Analyzer: f[0], Package: f[1], Func: f[2], Reason: strings.Join(f[3:], " ")})
	}
	return out, sc.Err()
}

// SetAllowlist replaces the allowlist.
func SetAllowlist(es []Entry) {
	allowMu.Lock()
	defer allowMu.Unlock()
	allow = map[string]Entry{}
	for _, e := range es {
		allow[allowKey(e.Analyzer, e.Package, e.Func)] = e
	}
}

func allowed(analyzer, pkg, fn string) bool {
	allowMu.RLock()
	defer allowMu.RUnlock()
	_, ok := allow[allowKey(analyzer, pkg, fn)]
	return ok
}

// inScope reports whether pkg is Module/p or below it for a p in scope.
func inScope(pkg string, scope []string) bool {
	for _, p := range scope {
		full := Module + "/" + p
		if pkg == full || strings.HasPrefix(pkg, full+"/") {
			return true
		}
	}
	return false
}

// inModule reports whether pkg is one of Cova's packages.
func inModule(pkg string) bool { return pkg == Module || strings.HasPrefix(pkg, Module+"/") }

// funcName names the function declaration enclosing a node: "F", "T.M"
// (pointer receivers too), or "init" for package-level initializers.
func funcName(stack []ast.Node) string {
	for i := len(stack) - 1; i >= 0; i-- {
		fd, ok := stack[i].(*ast.FuncDecl)
		if !ok {
			continue
		}
		if fd.Recv == nil || len(fd.Recv.List) == 0 {
			return fd.Name.Name
		}
		t := fd.Recv.List[0].Type
		for {
			switch x := t.(type) {
			case *ast.StarExpr:
				t = x.X
				continue
			case *ast.IndexExpr:
				t = x.X
				continue
			case *ast.IndexListExpr:
				t = x.X
				continue
			}
			break
		}
		if id, ok := t.(*ast.Ident); ok {
			return id.Name + "." + fd.Name.Name
		}
		return fd.Name.Name
	}
	return "init"
}

// isTestFile reports whether pos is in a _test.go file.
func isTestFile(pass *analysis.Pass, pos token.Pos) bool {
	return strings.HasSuffix(pass.Fset.Position(pos).Filename, "_test.go")
}

// report emits a diagnostic unless the enclosing function is allowed.
func report(pass *analysis.Pass, stack []ast.Node, n ast.Node, format string, args ...any) {
	fn := funcName(stack)
	if allowed(pass.Analyzer.Name, pass.Pkg.Path(), fn) {
		return
	}
	msg := fmt.Sprintf(format, args...)
	pass.Reportf(n.Pos(), "%s (in %s %s; fix it or add \"%s %s %s <reason>\" to hack/lint/allow.txt after review)",
		msg, pass.Pkg.Path(), fn, pass.Analyzer.Name, pass.Pkg.Path(), fn)
}

// calleeFunc returns the function a call invokes, if it is a named one.
func calleeFunc(pass *analysis.Pass, call *ast.CallExpr) *types.Func {
	var id *ast.Ident
	switch f := ast.Unparen(call.Fun).(type) {
	case *ast.Ident:
		id = f
	case *ast.SelectorExpr:
		id = f.Sel
	default:
		return nil
	}
	fn, _ := pass.TypesInfo.Uses[id].(*types.Func)
	return fn
}

func fullName(fn *types.Func) string {
	if fn.Pkg() == nil {
		return fn.Name()
	}
	return fn.Pkg().Path() + "." + fn.Name()
}

// PathJoin reports joins of non-constant path components.
var PathJoin = &analysis.Analyzer{
	Name:     "pathjoin",
	Doc:      "report filepath.Join/path.Join of non-constant components where paths come from the host or images",
	Requires: []*analysis.Analyzer{inspect.Analyzer},
	Run:      runPathJoin,
}

func runPathJoin(pass *analysis.Pass) (any, error) {
	if !inScope(pass.Pkg.Path(), PathScope) || inScope(pass.Pkg.Path(), PathSafe) {
		return nil, nil
	}
	ins := pass.ResultOf[inspect.Analyzer].(*inspector.Inspector)
	safe := vettedVars(pass, ins)
	ins.WithStack([]ast.Node{(*ast.CallExpr)(nil)}, func(n ast.Node, push bool, stack []ast.Node) bool {
		if !push || isTestFile(pass, n.Pos()) {
			return true
		}
		call := n.(*ast.CallExpr)
		fn := calleeFunc(pass, call)
		if fn == nil {
			return true
		}
		if name := fullName(fn); name != "path/filepath.Join" && name != "path.Join" {
			return true
		}
		// The base (argument 0) is usually a configured root; the
		// components after it are where ".." and host ids come in, so they
		// are named first.
		var bad []string
		for i, arg := range call.Args {
			if !vetted(pass, safe, arg) {
				bad = append(bad, fmt.Sprintf("%d (%s)", i, types.ExprString(arg)))
			}
		}
		if len(bad) > 1 && strings.HasPrefix(bad[0], "0 ") {
			bad = append(bad[1:], bad[0])
		}
		if len(bad) > 0 {
			report(pass, stack, call, "%s.Join of non-constant components: argument %s", fn.Pkg().Name(), strings.Join(bad, ", argument "))
		}
		return true
	})
	return nil, nil
}

// vetted reports whether a join argument is a constant, a vetted helper's
// result, or a variable only ever assigned from one.
func vetted(pass *analysis.Pass, safe map[types.Object]bool, arg ast.Expr) bool {
	arg = ast.Unparen(arg)
	if tv, ok := pass.TypesInfo.Types[arg]; ok && tv.Value != nil {
		return true
	}
	if call, ok := arg.(*ast.CallExpr); ok {
		return isVettedCall(pass, call)
	}
	if id, ok := arg.(*ast.Ident); ok {
		return safe[pass.TypesInfo.Uses[id]]
	}
	return false
}

func isVettedCall(pass *analysis.Pass, call *ast.CallExpr) bool {
	fn := calleeFunc(pass, call)
	if fn == nil {
		return false
	}
	for _, h := range VettedHelpers {
		if fullName(fn) == h {
			return true
		}
	}
	return false
}

// vettedVars finds the string variables every assignment of which takes the
// (first) result of a vetted helper, e.g. p, err := securejoin.SecureJoin(…).
func vettedVars(pass *analysis.Pass, ins *inspector.Inspector) map[types.Object]bool {
	safe := map[types.Object]bool{}
	unsafe := map[types.Object]bool{}
	mark := func(lhs ast.Expr, ok bool) {
		id, isID := ast.Unparen(lhs).(*ast.Ident)
		if !isID || id.Name == "_" {
			return
		}
		obj := pass.TypesInfo.ObjectOf(id)
		if obj == nil {
			return
		}
		if ok && !unsafe[obj] {
			safe[obj] = true
		} else {
			unsafe[obj] = true
			delete(safe, obj)
		}
	}
	ins.Preorder([]ast.Node{(*ast.AssignStmt)(nil), (*ast.ValueSpec)(nil), (*ast.UnaryExpr)(nil)}, func(n ast.Node) {
		var lhs, rhs []ast.Expr
		switch x := n.(type) {
		case *ast.AssignStmt:
			lhs, rhs = x.Lhs, x.Rhs
		case *ast.ValueSpec:
			for _, name := range x.Names {
				lhs = append(lhs, name)
			}
			rhs = x.Values
		case *ast.UnaryExpr:
			if x.Op == token.AND { // &v: may be written through a pointer
				mark(x.X, false)
			}
			return
		}
		for i, l := range lhs {
			ok := false
			switch {
			case len(rhs) == len(lhs):
				c, isCall := ast.Unparen(rhs[i]).(*ast.CallExpr)
				ok = isCall && isVettedCall(pass, c)
			case len(rhs) == 1 && i == 0:
				c, isCall := ast.Unparen(rhs[0]).(*ast.CallExpr)
				ok = isCall && isVettedCall(pass, c)
			}
			mark(l, ok)
		}
	})
	return safe
}

// OSCreate reports os.Create on guest paths.
var OSCreate = &analysis.Analyzer{
	Name:     "oscreate",
	Doc:      "report os.Create (follows symlinks, truncates) in packages that write guest paths",
	Requires: []*analysis.Analyzer{inspect.Analyzer},
	Run:      runOSCreate,
}

func runOSCreate(pass *analysis.Pass) (any, error) {
	if !inScope(pass.Pkg.Path(), CreateScope) {
		return nil, nil
	}
	ins := pass.ResultOf[inspect.Analyzer].(*inspector.Inspector)
	ins.WithStack([]ast.Node{(*ast.CallExpr)(nil)}, func(n ast.Node, push bool, stack []ast.Node) bool {
		if !push || isTestFile(pass, n.Pos()) {
			return true
		}
		call := n.(*ast.CallExpr)
		if fn := calleeFunc(pass, call); fn != nil && fullName(fn) == "os.Create" {
			report(pass, stack, call, "os.Create follows symlinks and truncates: open guest paths with O_NOFOLLOW|O_EXCL or through a root")
		}
		return true
	})
	return nil, nil
}

var errorType = types.Universe.Lookup("error").Type().Underlying().(*types.Interface)

// isError reports whether e's type is, or implements, error.
func isError(pass *analysis.Pass, e ast.Expr) bool {
	t := pass.TypesInfo.TypeOf(e)
	return t != nil && types.Implements(t, errorType)
}

// sentinel returns the package-level error variable e names, if it does.
func sentinel(pass *analysis.Pass, e ast.Expr) *types.Var {
	var id *ast.Ident
	switch x := ast.Unparen(e).(type) {
	case *ast.Ident:
		id = x
	case *ast.SelectorExpr:
		id = x.Sel
	default:
		return nil
	}
	v, ok := pass.TypesInfo.Uses[id].(*types.Var)
	if !ok || v.IsField() || v.Pkg() == nil || v.Parent() != v.Pkg().Scope() {
		return nil
	}
	if !types.Implements(v.Type(), errorType) {
		return nil
	}
	return v
}

// inMethod reports whether the innermost function declaration is a method
// with one of names.
func inMethod(stack []ast.Node, names ...string) bool {
	for i := len(stack) - 1; i >= 0; i-- {
		if fd, ok := stack[i].(*ast.FuncDecl); ok {
			if fd.Recv == nil {
				return false
			}
			for _, n := range names {
				if fd.Name.Name == n {
					return true
				}
			}
			return false
		}
	}
	return false
}

// ErrCompare reports == / != / switch cases against sentinel errors.
var ErrCompare = &analysis.Analyzer{
	Name:     "errcompare",
	Doc:      "report errors compared with ==, != or switch cases against sentinel error variables (use errors.Is)",
	Requires: []*analysis.Analyzer{inspect.Analyzer},
	Run:      runErrCompare,
}

func runErrCompare(pass *analysis.Pass) (any, error) {
	if !inModule(pass.Pkg.Path()) {
		return nil, nil
	}
	ins := pass.ResultOf[inspect.Analyzer].(*inspector.Inspector)
	ins.WithStack([]ast.Node{(*ast.BinaryExpr)(nil), (*ast.SwitchStmt)(nil)}, func(n ast.Node, push bool, stack []ast.Node) bool {
		if !push || isTestFile(pass, n.Pos()) || inMethod(stack, "Is") {
			return true
		}
		switch x := n.(type) {
		case *ast.BinaryExpr:
			if x.Op != token.EQL && x.Op != token.NEQ {
				return true
			}
			for _, pair := range [][2]ast.Expr{{x.X, x.Y}, {x.Y, x.X}} {
				if v := sentinel(pass, pair[1]); v != nil && isError(pass, pair[0]) {
					report(pass, stack, x, "error compared with %s against %s.%s: use errors.Is", x.Op, v.Pkg().Name(), v.Name())
					return true
				}
			}
		case *ast.SwitchStmt:
			if x.Tag == nil || !isError(pass, x.Tag) {
				return true
			}
			for _, s := range x.Body.List {
				for _, e := range s.(*ast.CaseClause).List {
					if v := sentinel(pass, e); v != nil {
						report(pass, stack, e, "switch on an error with case %s.%s: use errors.Is", v.Pkg().Name(), v.Name())
					}
				}
			}
		}
		return true
	})
	return nil, nil
}

// ErrAssert reports type assertions and type switches on errors.
var ErrAssert = &analysis.Analyzer{
	Name:     "errassert",
	Doc:      "report type assertions and type switches on error values (use errors.As)",
	Requires: []*analysis.Analyzer{inspect.Analyzer},
	Run:      runErrAssert,
}

func runErrAssert(pass *analysis.Pass) (any, error) {
	if !inModule(pass.Pkg.Path()) {
		return nil, nil
	}
	ins := pass.ResultOf[inspect.Analyzer].(*inspector.Inspector)
	ins.WithStack([]ast.Node{(*ast.TypeAssertExpr)(nil)}, func(n ast.Node, push bool, stack []ast.Node) bool {
		if !push || isTestFile(pass, n.Pos()) || inMethod(stack, "As", "Unwrap") {
			return true
		}
		x := n.(*ast.TypeAssertExpr)
		if !isErrorIface(pass, x.X) {
			return true
		}
		if x.Type == nil {
			report(pass, stack, x, "type switch on error %s: use errors.As", types.ExprString(x.X))
		} else {
			report(pass, stack, x, "type assertion on error %s: use errors.As", types.ExprString(x.X))
		}
		return true
	})
	return nil, nil
}

// isErrorIface reports whether e's static type is the error interface (or
// an interface that embeds it).
func isErrorIface(pass *analysis.Pass, e ast.Expr) bool {
	t := pass.TypesInfo.TypeOf(e)
	if t == nil {
		return false
	}
	if _, ok := t.Underlying().(*types.Interface); !ok {
		return false
	}
	return types.Implements(t, errorType)
}
