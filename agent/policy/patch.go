package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// JSON Patch (RFC 6902) over the policy data document, as kata applies a
// stateful rule's "ops" to {"pstate": {...}}. Documents are the values OPA
// returns: map[string]any, []any, string, bool, json.Number and nil.

// patchOp is one operation of a patch.
type patchOp struct {
	Op    string
	Path  string
	From  string
	Value any
	has   bool // Value was given (null is a value)
}

// parsePatch validates the "ops" of a policy result.
func parsePatch(v any) ([]patchOp, error) {
	if v == nil {
		return nil, nil
	}
	list, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("ops is %T, want an array", v)
	}
	ops := make([]patchOp, 0, len(list))
	for i, e := range list {
		if e == nil {
			continue // concat_op_if_not_null style leftovers are harmless
		}
		m, ok := e.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("ops[%d] is %T, want an object", i, e)
		}
		var op patchOp
		if op.Op, ok = m["op"].(string); !ok {
			return nil, fmt.Errorf("ops[%d].op is missing or not a string", i)
		}
		if op.Path, ok = m["path"].(string); !ok {
			return nil, fmt.Errorf("ops[%d].path is missing or not a string", i)
		}
		op.Value, op.has = m["value"]
		switch op.Op {
		case "add", "replace", "test":
			if !op.has {
				return nil, fmt.Errorf("ops[%d]: %s needs a value", i, op.Op)
			}
		case "remove":
		case "move", "copy":
			if op.From, ok = m["from"].(string); !ok {
				return nil, fmt.Errorf("ops[%d]: %s needs from", i, op.Op)
			}
		default:
			return nil, fmt.Errorf("ops[%d]: unknown op %q", i, op.Op)
		}
		ops = append(ops, op)
	}
	return ops, nil
}

// applyPatch applies ops to a copy of doc and returns it; doc is untouched,
// and nothing changes unless every op succeeds (RFC 6902 §5).
func applyPatch(doc map[string]any, ops []patchOp) (map[string]any, error) {
	var root any = deepCopy(doc)
	for i, op := range ops {
		var err error
		root, err = applyOp(root, op)
		if err != nil {
			return nil, fmt.Errorf("ops[%d] %s %q: %w", i, op.Op, op.Path, err)
		}
	}
	m, ok := root.(map[string]any)
	if !ok {
		return nil, errors.New("patch replaced the data document with a non-object")
	}
	return m, nil
}

func applyOp(root any, op patchOp) (any, error) {
	switch op.Op {
	case "add":
		return addAt(root, op.Path, deepCopy(op.Value))
	case "remove":
		root, _, err := removeAt(root, op.Path)
		return root, err
	case "replace":
		root, _, err := removeAt(root, op.Path)
		if err != nil {
			return nil, err
		}
		return addAt(root, op.Path, deepCopy(op.Value))
	case "test":
		v, err := get(root, op.Path)
		if err != nil {
			return nil, err
		}
		if !jsonEqual(v, op.Value) {
			return nil, errors.New("test failed")
		}
		return root, nil
	case "move":
		if op.Path != op.From && strings.HasPrefix(op.Path, op.From+"/") {
			return nil, errors.New("cannot move a value into itself")
		}
		root, v, err := removeAt(root, op.From)
		if err != nil {
			return nil, err
		}
		return addAt(root, op.Path, v)
	case "copy":
		v, err := get(root, op.From)
		if err != nil {
			return nil, err
		}
		return addAt(root, op.Path, deepCopy(v))
	}
	return nil, fmt.Errorf("unknown op %q", op.Op)
}

// pointer splits an RFC 6901 JSON pointer into unescaped tokens.
func pointer(p string) ([]string, error) {
	if p == "" {
		return nil, nil
	}
	if p[0] != '/' {
		return nil, fmt.Errorf("pointer %q does not start with /", p)
	}
	toks := strings.Split(p[1:], "/")
	for i, t := range toks {
		if strings.Contains(t, "~") {
			// Only ~0 and ~1 are valid escapes.
			if strings.Contains(strings.NewReplacer("~0", "", "~1", "").Replace(t), "~") {
				return nil, fmt.Errorf("pointer %q has a bad ~ escape", p)
			}
			toks[i] = strings.NewReplacer("~1", "/", "~0", "~").Replace(t)
		}
	}
	return toks, nil
}

// arrayIndex parses an array index token; "-" (append) is allowed when
// appendOK, and then returns n.
func arrayIndex(tok string, n int, appendOK bool) (int, error) {
	if tok == "-" && appendOK {
		return n, nil
	}
	if tok == "" || (len(tok) > 1 && tok[0] == '0') {
		return 0, fmt.Errorf("bad array index %q", tok)
	}
	i, err := strconv.Atoi(tok)
	if err != nil || i < 0 {
		return 0, fmt.Errorf("bad array index %q", tok)
	}
	limit := n - 1
	if appendOK {
		limit = n
	}
	if i > limit {
		return 0, fmt.Errorf("array index %d out of range", i)
	}
	return i, nil
}

func get(root any, path string) (any, error) {
	toks, err := pointer(path)
	if err != nil {
		return nil, err
	}
	cur := root
	for _, t := range toks {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[t]
			if !ok {
				return nil, fmt.Errorf("no member %q", t)
			}
			cur = v
		case []any:
			i, err := arrayIndex(t, len(c), false)
			if err != nil {
				return nil, err
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("cannot descend into %T at %q", cur, t)
		}
	}
	return cur, nil
}

// addAt sets the value at path, returning the (possibly new) root.
func addAt(root any, path string, v any) (any, error) {
	toks, err := pointer(path)
	if err != nil {
		return nil, err
	}
	if len(toks) == 0 {
		return v, nil
	}
	parent, err := get(root, joinPointer(toks[:len(toks)-1]))
	if err != nil {
		return nil, err
	}
	last := toks[len(toks)-1]
	switch p := parent.(type) {
	case map[string]any:
		p[last] = v
		return root, nil
	case []any:
		i, err := arrayIndex(last, len(p), true)
		if err != nil {
			return nil, err
		}
		p = append(p, nil)
		copy(p[i+1:], p[i:])
		p[i] = v
		return setAt(root, toks[:len(toks)-1], p)
	}
	return nil, fmt.Errorf("parent of %q is %T, not a container", path, parent)
}

// removeAt deletes the value at path and returns the root and the value.
func removeAt(root any, path string) (any, any, error) {
	toks, err := pointer(path)
	if err != nil {
		return nil, nil, err
	}
	if len(toks) == 0 {
		return nil, nil, errors.New("cannot remove the whole document")
	}
	parent, err := get(root, joinPointer(toks[:len(toks)-1]))
	if err != nil {
		return nil, nil, err
	}
	last := toks[len(toks)-1]
	switch p := parent.(type) {
	case map[string]any:
		v, ok := p[last]
		if !ok {
			return nil, nil, fmt.Errorf("no member %q", last)
		}
		delete(p, last)
		return root, v, nil
	case []any:
		i, err := arrayIndex(last, len(p), false)
		if err != nil {
			return nil, nil, err
		}
		v := p[i]
		p = append(p[:i:i], p[i+1:]...)
		root, err = setAt(root, toks[:len(toks)-1], p)
		return root, v, err
	}
	return nil, nil, fmt.Errorf("parent of %q is %T, not a container", path, parent)
}

// setAt stores v at the location named by toks (which exists).
func setAt(root any, toks []string, v any) (any, error) {
	if len(toks) == 0 {
		return v, nil
	}
	parent, err := get(root, joinPointer(toks[:len(toks)-1]))
	if err != nil {
		return nil, err
	}
	last := toks[len(toks)-1]
	switch p := parent.(type) {
	case map[string]any:
		p[last] = v
	case []any:
		i, err := arrayIndex(last, len(p), false)
		if err != nil {
			return nil, err
		}
		p[i] = v
	}
	return root, nil
}

func joinPointer(toks []string) string {
	var b strings.Builder
	esc := strings.NewReplacer("~", "~0", "/", "~1")
	for _, t := range toks {
		b.WriteByte('/')
		b.WriteString(esc.Replace(t))
	}
	return b.String()
}

func deepCopy(v any) any {
	switch v := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = deepCopy(e)
		}
		return m
	case []any:
		a := make([]any, len(v))
		for i, e := range v {
			a[i] = deepCopy(e)
		}
		return a
	}
	return v
}

// jsonEqual compares two documents as JSON values (numbers by value).
func jsonEqual(a, b any) bool {
	na, aok := a.(json.Number)
	nb, bok := b.(json.Number)
	if aok && bok {
		fa, errA := na.Float64()
		fb, errB := nb.Float64()
		return errA == nil && errB == nil && fa == fb
	}
	switch a := a.(type) {
	case map[string]any:
		b, ok := b.(map[string]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for k, v := range a {
			w, ok := b[k]
			if !ok || !jsonEqual(v, w) {
				return false
			}
		}
		return true
	case []any:
		b, ok := b.([]any)
		if !ok || len(a) != len(b) {
			return false
		}
		for i := range a {
			if !jsonEqual(a[i], b[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(a, b)
}
