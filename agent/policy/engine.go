package policy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/containerd/errdefs"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown/print"
	"google.golang.org/protobuf/proto"

	pb "github.com/cova-project/cova/protocols/grpc"
)

// Package is the Rego package every policy must declare.
const Package = "agent_policy"

// MaxPolicySize is the largest policy text accepted (kata's regorus limit).
const MaxPolicySize = 16 << 20

// allowFailuresRule is kata's debugging switch: when the policy sets it to
// true, requests the policy denies (or leaves undefined) are allowed, with a
// warning in the log.
const allowFailuresRule = "AllowRequestsFailingPolicy"

// readStreamEntry is the entry point of ReadStdout and ReadStderr.
const readStreamEntry = "ReadStreamRequest"

// maxReasonLen caps the policy output quoted in a denial.
const maxReasonLen = 512

// maxDebugPrints caps the print output kept for the debug log.
const maxDebugPrints = 64 << 10

// ErrDenyDrain marks the denial of a ReadStdout/ReadStderr request. The agent
// must not fail the call: it reads (drains) the process output as usual and
// returns empty data, so a denied reader cannot make the container block on
// a full pipe (kata behaves the same). The error also matches
// errdefs.ErrPermissionDenied, so an agent that ignores it still refuses the
// read.
var ErrDenyDrain = errors.New("stream read denied by policy: drain and drop the output")

// DeniedError is the error of a request the policy refuses. It matches
// errdefs.ErrPermissionDenied (gRPC PERMISSION_DENIED) and, for
// ReadStreamRequest, ErrDenyDrain.
type DeniedError struct {
	// Entry is the policy entry point, the request message name.
	Entry string
	// Reason is one line: the last print output of the evaluation (env
	// values scrubbed), or a note that the rule was false or undefined.
	Reason string
}

// Error returns "<Entry> is blocked by policy: <Reason>", as kata words it.
func (e *DeniedError) Error() string {
	return e.Entry + " is blocked by policy: " + e.Reason
}

// Unwrap makes errors.Is see the error classes.
func (e *DeniedError) Unwrap() []error {
	if e.Entry == readStreamEntry {
		return []error{errdefs.ErrPermissionDenied, ErrDenyDrain}
	}
	return []error{errdefs.ErrPermissionDenied}
}

// Options configure an Engine.
type Options struct {
	// Logger receives the debug trace (redacted inputs, print output) and
	// warnings. Nil discards.
	Logger *slog.Logger
	// Name labels the policy in compile errors, e.g. "initdata:policy.rego".
	// Default "policy.rego".
	Name string
}

// Engine evaluates requests against a Rego policy. It implements the agent's
// Gate interface. It is safe for concurrent use.
type Engine struct {
	log     *slog.Logger
	methods map[string]string // AgentService rpc name -> request message name

	mu  sync.RWMutex // read: evaluate; write: change state or policy
	cur *compiled
}

// New compiles policy text and returns an Engine enforcing it.
func New(policy string, opts Options) (*Engine, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name := opts.Name
	if name == "" {
		name = "policy.rego"
	}
	e := &Engine{log: log, methods: agentMethods()}
	c, err := e.compile(name, policy)
	if err != nil {
		return nil, err
	}
	e.cur = c
	return e, nil
}

// SetPolicy replaces the policy and resets the policy state, as kata's
// SetPolicy does. It does not consult the current policy: the agent's gate
// has already asked it about SetPolicyRequest. A text that does not compile
// leaves the current policy in place and returns an INVALID_ARGUMENT error.
func (e *Engine) SetPolicy(policy string) error {
	c, err := e.compile("set-policy.rego", policy)
	if err != nil {
		return err
	}
	e.mu.Lock()
	e.cur = c
	e.mu.Unlock()
	e.log.Info("policy replaced by SetPolicy", "bytes", len(policy))
	return nil
}

// State returns a copy of the policy state document (data.pstate).
func (e *Engine) State() map[string]any {
	e.mu.RLock()
	defer e.mu.RUnlock()
	s, _ := deepCopy(e.cur.data["pstate"]).(map[string]any)
	return s
}

// Allow decides whether the rpc method may run with request req (a
// *grpc.XxxRequest). It returns nil to allow, a *DeniedError (PERMISSION_
// DENIED; for ReadStdout/ReadStderr also ErrDenyDrain) to deny, and another
// error (INTERNAL or INVALID_ARGUMENT) when the policy cannot decide; the
// request must not run in either of the last two cases.
func (e *Engine) Allow(ctx context.Context, method string, req any) error {
	msg, ok := req.(proto.Message)
	if !ok || msg == nil {
		return fmt.Errorf("policy: %s: request %T is not a protobuf message: %w", method, req, errdefs.ErrInternal)
	}
	entry := EntryPoint(msg)
	if want, known := e.methods[method]; known && want != entry {
		return fmt.Errorf("policy: %s takes %s, got %s: %w", method, want, entry, errdefs.ErrInternal)
	}
	n, err := inputNode(msg)
	if err != nil {
		return fmt.Errorf("policy: %s: %w", method, err)
	}
	debug := e.log.Enabled(ctx, slog.LevelDebug)
	if debug && entry != readStreamEntry && entry != "StatsContainerRequest" {
		var b bytes.Buffer
		writeJSON(&b, redacted(n))
		e.log.DebugContext(ctx, "policy input", "rpc", method, "entry", entry, "input", b.String())
	}
	input := toTerm(n).Value

	e.mu.RLock()
	c := e.cur
	version := c.version
	d, err := c.eval(ctx, entry, input, debug)
	e.mu.RUnlock()
	if err == nil && d.allowed && len(d.ops) > 0 {
		// The decision changes the state. Apply it under the write lock if
		// neither the policy nor the state changed since it was made;
		// otherwise decide again under the lock. Either way the decision
		// and its patch are atomic (kata serialises every evaluation).
		e.mu.Lock()
		if e.cur != c || c.version != version {
			c = e.cur
			d, err = c.eval(ctx, entry, input, debug)
		}
		if err == nil && d.allowed && len(d.ops) > 0 {
			if perr := c.applyOps(d.ops); perr != nil {
				err = fmt.Errorf("apply state patch: %w", perr)
			}
		}
		e.mu.Unlock()
	}
	return e.verdict(ctx, method, entry, n, c.allowFailures, d, err)
}

// verdict turns a decision into Allow's result and logs it.
func (e *Engine) verdict(ctx context.Context, method, entry string, n node, allowFailures bool, d decision, err error) error {
	if err != nil {
		e.log.WarnContext(ctx, "policy evaluation failed", "rpc", method, "entry", entry, "err", err)
		return fmt.Errorf("%s: policy evaluation failed: %w: %w", entry, err, errdefs.ErrInternal)
	}
	if d.defined && d.allowed {
		return nil
	}
	scrub := scrubberFor(n)
	if e.log.Enabled(ctx, slog.LevelDebug) && len(d.prints) > 0 {
		e.log.DebugContext(ctx, "policy print output", "rpc", method, "entry", entry,
			"lines", d.printCount, "output", scrub.Replace(strings.Join(d.prints, "\n")))
	}
	var reason string
	switch {
	case d.lastPrint != "": // the last rule that printed before failing
		reason = oneLine(scrub.Replace(d.lastPrint))
	case !d.defined:
		reason = "no rule and no default for " + entry
	default:
		reason = "data." + Package + "." + entry + " is false"
	}
	if allowFailures {
		e.log.WarnContext(ctx, "policy: allowing a denied request (AllowRequestsFailingPolicy)", "rpc", method, "entry", entry, "reason", reason)
		return nil
	}
	e.log.DebugContext(ctx, "policy denied", "rpc", method, "entry", entry, "reason", reason)
	return &DeniedError{Entry: entry, Reason: reason}
}

// oneLine flattens and caps s for an error message.
func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > maxReasonLen {
		cut := maxReasonLen
		for cut > 0 && s[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// agentMethods maps each AgentService rpc to its request message name,
// from the generated descriptors.
func agentMethods() map[string]string {
	sd := pb.File_grpc_agent_proto.Services().ByName("AgentService")
	m := map[string]string{}
	if sd == nil {
		return m
	}
	for i := range sd.Methods().Len() {
		md := sd.Methods().Get(i)
		m[string(md.Name())] = string(md.Input().Name())
	}
	return m
}

// compiled is one policy, compiled, with its state.
type compiled struct {
	compiler      *ast.Compiler
	store         storage.Store
	queries       map[string]*rego.PreparedEvalQuery // read-only after compile
	lazy          sync.Map                           // other entries: string -> *rego.PreparedEvalQuery
	data          map[string]any                     // the data document: {"pstate": {...}}
	version       uint64                             // bumped by every state change
	allowFailures bool
}

// compile parses, compiles and prepares policy text.
func (e *Engine) compile(name, text string) (*compiled, error) {
	ctx := context.Background()
	if len(text) > MaxPolicySize {
		return nil, fmt.Errorf("policy %s: %d bytes exceeds %d: %w", name, len(text), MaxPolicySize, errdefs.ErrInvalidArgument)
	}
	mod, err := parseModule(name, text)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w: %w", name, err, errdefs.ErrInvalidArgument)
	}
	if got := strings.TrimPrefix(mod.Package.Path.String(), "data."); got != Package {
		return nil, fmt.Errorf("policy %s: package is %s, want %s: %w", name, got, Package, errdefs.ErrInvalidArgument)
	}
	comp := newCompiler()
	comp.Compile(map[string]*ast.Module{name: mod})
	if comp.Failed() && onlyTypeErrors(comp.Errors) {
		// OPA type-checks references into constant documents; regorus
		// does not, and genpolicy output can refer to policy_data keys its
		// settings did not emit (such a reference is simply undefined at
		// evaluation). Accept what kata accepts.
		e.log.Warn("policy has type errors; compiling it without type checking, as kata does",
			"policy", name, "first", comp.Errors[0].Error())
		if mod, err = parseModule(name, text); err != nil {
			return nil, fmt.Errorf("policy %s: %w: %w", name, err, errdefs.ErrInvalidArgument)
		}
		comp = newCompiler().WithSkipStages(ast.StageCheckTypes)
		comp.Compile(map[string]*ast.Module{name: mod})
	}
	if comp.Failed() {
		return nil, fmt.Errorf("policy %s: compile: %w: %w", name, comp.Errors, errdefs.ErrInvalidArgument)
	}
	data := map[string]any{"pstate": map[string]any{}}
	c := &compiled{
		compiler: comp,
		store:    inmem.NewFromObjectWithOpts(deepCopy(data).(map[string]any), inmem.OptRoundTripOnWrite(false)),
		queries:  map[string]*rego.PreparedEvalQuery{},
		data:     data,
	}
	entries := []string{allowFailuresRule}
	for _, in := range e.methods {
		entries = append(entries, in)
	}
	for _, entry := range entries {
		if _, done := c.queries[entry]; done {
			continue
		}
		pq, err := c.prepare(ctx, entry)
		if err != nil {
			return nil, fmt.Errorf("policy %s: prepare %s: %w: %w", name, entry, err, errdefs.ErrInvalidArgument)
		}
		c.queries[entry] = pq
	}
	d, err := c.eval(ctx, allowFailuresRule, ast.NewObject(), false)
	if err == nil && d.defined && d.allowed {
		c.allowFailures = true
		e.log.Warn("policy sets AllowRequestsFailingPolicy: denied requests will be allowed", "policy", name)
	}
	return c, nil
}

func newCompiler() *ast.Compiler {
	return ast.NewCompiler().
		WithCapabilities(capabilities()).
		WithEnablePrintStatements(true)
}

// onlyTypeErrors reports whether errs are all type errors.
func onlyTypeErrors(errs ast.Errors) bool {
	if len(errs) == 0 {
		return false
	}
	for _, err := range errs {
		if err.Code != ast.TypeErr && (err.Code != ast.CompileErr || err.Message != "error limit reached") {
			return false
		}
	}
	return true
}

// parseModule accepts Rego v1, and v0 (what regorus and genpolicy's
// rules.rego speak) when the text is not valid v1.
func parseModule(name, text string) (*ast.Module, error) {
	m, errV1 := ast.ParseModuleWithOpts(name, text, ast.ParserOptions{RegoVersion: ast.RegoV1})
	if errV1 == nil {
		return m, nil
	}
	m, errV0 := ast.ParseModuleWithOpts(name, text, ast.ParserOptions{RegoVersion: ast.RegoV0})
	if errV0 == nil {
		return m, nil
	}
	return nil, fmt.Errorf("parse: %w (as Rego v0: %v)", errV1, errV0)
}

// unsafeBuiltins reach outside the guest or into the agent's environment.
var unsafeBuiltins = map[string]bool{
	"http.send":          true, // network
	"net.lookup_ip_addr": true, // DNS
	"opa.runtime":        true, // the agent's environment variables and config
	"json.verify_schema": true, // JSON schema $ref may be fetched remotely
	"json.match_schema":  true,
}

// capabilities are this OPA's builtins minus unsafeBuiltins, with no
// network access.
func capabilities() *ast.Capabilities {
	caps := ast.CapabilitiesForThisVersion()
	kept := caps.Builtins[:0]
	for _, b := range caps.Builtins {
		if !unsafeBuiltins[b.Name] {
			kept = append(kept, b)
		}
	}
	caps.Builtins = kept
	caps.AllowNet = []string{}
	return caps
}

// prepare readies the query data.agent_policy.<entry>.
func (c *compiled) prepare(ctx context.Context, entry string) (*rego.PreparedEvalQuery, error) {
	ref := ast.Ref{ast.DefaultRootDocument, ast.StringTerm(Package), ast.StringTerm(entry)}
	pq, err := rego.New(
		rego.ParsedQuery(ast.NewBody(ast.NewExpr(ast.NewTerm(ref)))),
		rego.Compiler(c.compiler),
		rego.Store(c.store),
		rego.EnablePrintStatements(true),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, err
	}
	return &pq, nil
}

func (c *compiled) query(ctx context.Context, entry string) (*rego.PreparedEvalQuery, error) {
	if pq, ok := c.queries[entry]; ok {
		return pq, nil
	}
	if pq, ok := c.lazy.Load(entry); ok {
		return pq.(*rego.PreparedEvalQuery), nil
	}
	pq, err := c.prepare(ctx, entry)
	if err != nil {
		return nil, err
	}
	v, _ := c.lazy.LoadOrStore(entry, pq)
	return v.(*rego.PreparedEvalQuery), nil
}

// decision is the outcome of one evaluation.
type decision struct {
	defined    bool
	allowed    bool
	ops        []patchOp
	lastPrint  string
	printCount int
	prints     []string // kept only for the debug log
}

// printHook collects print output.
type printHook struct {
	d     *decision
	keep  bool
	bytes int
}

func (h *printHook) Print(_ print.Context, s string) error {
	h.d.printCount++
	h.d.lastPrint = s
	if h.keep && h.bytes < maxDebugPrints {
		h.d.prints = append(h.d.prints, s)
		h.bytes += len(s)
	}
	return nil
}

// eval evaluates data.agent_policy.<entry> against input. The caller holds
// the engine lock (read or write).
func (c *compiled) eval(ctx context.Context, entry string, input ast.Value, keepPrints bool) (decision, error) {
	var d decision
	pq, err := c.query(ctx, entry)
	if err != nil {
		return d, err
	}
	hook := &printHook{d: &d, keep: keepPrints}
	rs, err := pq.Eval(ctx, rego.EvalParsedInput(input), rego.EvalPrintHook(hook))
	if err != nil {
		return d, err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return d, nil // undefined
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return d, fmt.Errorf("%s: %d results, want one", entry, len(rs))
	}
	d.defined = true
	switch v := rs[0].Expressions[0].Value.(type) {
	case bool:
		d.allowed = v
	case map[string]any:
		allowed, ok := v["allowed"].(bool)
		if !ok {
			return d, fmt.Errorf("%s: result object has no boolean \"allowed\"", entry)
		}
		d.allowed = allowed
		if allowed {
			if d.ops, err = parsePatch(v["ops"]); err != nil {
				return d, fmt.Errorf("%s: %w", entry, err)
			}
		}
	default:
		return d, fmt.Errorf("%s: result is %T, want a boolean or {allowed, ops}", entry, v)
	}
	return d, nil
}

// applyOps patches the data document and the store. The caller holds the
// engine's write lock.
func (c *compiled) applyOps(ops []patchOp) error {
	next, err := applyPatch(c.data, ops)
	if err != nil {
		return err
	}
	if _, ok := next["pstate"].(map[string]any); !ok {
		// Rules read data.pstate as an object; a patch that made it
		// anything else would silently turn every stateful rule undefined.
		return errors.New("the patch makes data.pstate a non-object")
	}
	ctx := context.Background()
	txn, err := c.store.NewTransaction(ctx, storage.WriteParams)
	if err != nil {
		return err
	}
	if err := c.store.Write(ctx, txn, storage.ReplaceOp, storage.RootPath, deepCopy(next)); err != nil {
		c.store.Abort(ctx, txn)
		return err
	}
	if err := c.store.Commit(ctx, txn); err != nil {
		return err
	}
	c.data = next
	c.version++
	return nil
}

// PulledImageEntry is Cova's policy entry point for images pulled in the
// guest (not a kata request): data.agent_policy.PulledImage is evaluated
// after an image_guest_pull storage resolved its image and before the
// rootfs is mounted, with input {"container_id", "image", "digest"} where
// digest is the manifest digest actually pulled. A policy pins a tag to a
// digest with it. Policies that do not define it (every kata policy) allow
// every pull, so it adds no constraint to existing genpolicy output; a
// policy that has the rule is enforced like a request rule (undefined is a
// denial).
const PulledImageEntry = "PulledImage"

// CheckPulledImage decides whether the image pulled for containerID may be
// used (see PulledImageEntry). It returns nil when the policy allows it or
// has no PulledImage rule, a *DeniedError when it refuses, and an INTERNAL
// error when the evaluation fails.
func (e *Engine) CheckPulledImage(ctx context.Context, containerID, image, digest string) error {
	input, err := ast.InterfaceToValue(map[string]any{"container_id": containerID, "image": image, "digest": digest})
	if err != nil {
		return fmt.Errorf("policy: %s input: %w: %w", PulledImageEntry, err, errdefs.ErrInternal)
	}
	e.mu.RLock()
	c := e.cur
	ref := ast.Ref{ast.DefaultRootDocument, ast.StringTerm(Package), ast.StringTerm(PulledImageEntry)}
	if len(c.compiler.GetRulesExact(ref)) == 0 {
		e.mu.RUnlock()
		return nil // the policy does not use the extension
	}
	d, err := c.eval(ctx, PulledImageEntry, input, false)
	e.mu.RUnlock()
	return e.verdict(ctx, PulledImageEntry, PulledImageEntry, nil, c.allowFailures, d, err)
}
