package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"

	"github.com/containerd/errdefs"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cova-project/cova/agent/copyfile"
	pb "github.com/cova-project/cova/protocols/grpc"
)

// This file is the one place where policy input documents are built.
//
// The shape is kata-agent's: the agent serialises its rust-protobuf messages
// with serde, so the rules (genpolicy's rules.rego and anything written for
// it) see
//
//   - every field, under its name as written in the .proto (container_id,
//     OCI, Process, hwAddr), in declaration order; a field named "type"
//     appears as "type_" (Rust's keyword escape);
//   - an unset singular message as null, a repeated field as an array (never
//     omitted, [] when empty), a map as an object;
//   - integers of every width, and enums, as JSON numbers; bytes as an array
//     of numbers; a proto3 optional scalar as null when unset;
//   - unknown fields dropped.
//
// CopyFileRequest is the exception: its input is the derived object of
// copyfile.Describe (file type and symlink target instead of the data).

// Input returns the policy input document for req as JSON text, byte-for-byte
// in the layout kata-agent produces (field order as declared, serde's string
// escaping; map keys sorted, where kata's order is arbitrary).
func Input(req proto.Message) ([]byte, error) {
	n, err := inputNode(req)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	writeJSON(&b, n)
	return b.Bytes(), nil
}

// EntryPoint returns the name of the rule that decides req: the short name of
// its request message (CreateContainerRequest; ReadStreamRequest for both
// ReadStdout and ReadStderr). The policy is queried at
// data.agent_policy.<EntryPoint>.
func EntryPoint(req proto.Message) string {
	return string(req.ProtoReflect().Descriptor().Name())
}

// node is one value of an input document: nil, bool, string, json.Number,
// []node or *object.
type node = any

// object is a JSON object that keeps its keys in insertion order.
type object struct {
	keys []string
	vals []node
}

func (o *object) add(k string, v node) {
	o.keys = append(o.keys, k)
	o.vals = append(o.vals, v)
}

// inputNode builds the input document of req.
func inputNode(req proto.Message) (node, error) {
	if req == nil || !req.ProtoReflect().IsValid() {
		return nil, fmt.Errorf("policy input: nil request: %w", errdefs.ErrInvalidArgument)
	}
	if cf, ok := req.(*pb.CopyFileRequest); ok {
		return copyFileNode(cf)
	}
	return messageNode(req.ProtoReflect()), nil
}

// copyFileNode is the derived CopyFile input.
func copyFileNode(r *pb.CopyFileRequest) (node, error) {
	view := copyfile.Describe(copyfile.Request{
		Path:     r.GetPath(),
		FileSize: r.GetFileSize(),
		FileMode: r.GetFileMode(),
		DirMode:  r.GetDirMode(),
		UID:      r.GetUid(),
		GID:      r.GetGid(),
		Offset:   r.GetOffset(),
		Data:     r.GetData(),
	})
	text, err := json.Marshal(view)
	if err != nil {
		return nil, fmt.Errorf("policy input: CopyFileRequest: %w", err)
	}
	return parseJSON(text)
}

// fieldName is the serde name of a field: the .proto name, with Rust
// keywords escaped the way rust-protobuf does it. Only "type" occurs in the
// agent protocol; input_test.go fails if another keyword appears.
func fieldName(fd protoreflect.FieldDescriptor) string {
	name := string(fd.Name())
	if name == "type" {
		return "type_"
	}
	return name
}

func messageNode(m protoreflect.Message) *object {
	fields := m.Descriptor().Fields()
	o := &object{keys: make([]string, 0, fields.Len()), vals: make([]node, 0, fields.Len())}
	for i := range fields.Len() {
		fd := fields.Get(i)
		o.add(fieldName(fd), fieldNode(m, fd))
	}
	return o
}

func fieldNode(m protoreflect.Message, fd protoreflect.FieldDescriptor) node {
	switch {
	case fd.IsMap():
		mp := m.Get(fd).Map()
		type entry struct {
			k string
			v protoreflect.Value
		}
		entries := make([]entry, 0, mp.Len())
		mp.Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
			entries = append(entries, entry{k.String(), v})
			return true
		})
		slices.SortFunc(entries, func(a, b entry) int {
			switch {
			case a.k < b.k:
				return -1
			case a.k > b.k:
				return 1
			}
			return 0
		})
		o := &object{keys: make([]string, 0, len(entries)), vals: make([]node, 0, len(entries))}
		for _, e := range entries {
			o.add(e.k, valueNode(fd.MapValue(), e.v))
		}
		return o
	case fd.IsList():
		l := m.Get(fd).List()
		a := make([]node, l.Len())
		for i := range l.Len() {
			a[i] = valueNode(fd, l.Get(i))
		}
		return a
	case fd.Message() != nil, fd.HasPresence():
		// Singular message (MessageField in Rust) or proto3 optional
		// scalar (Option in Rust): null when unset.
		if !m.Has(fd) {
			return nil
		}
	}
	return valueNode(fd, m.Get(fd))
}

// valueNode converts one scalar or message value of field fd.
func valueNode(fd protoreflect.FieldDescriptor, v protoreflect.Value) node {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return v.Bool()
	case protoreflect.EnumKind:
		return json.Number(strconv.FormatInt(int64(v.Enum()), 10))
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return json.Number(strconv.FormatInt(v.Int(), 10))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return json.Number(strconv.FormatUint(v.Uint(), 10))
	case protoreflect.FloatKind:
		return floatNode(v.Float(), 32)
	case protoreflect.DoubleKind:
		return floatNode(v.Float(), 64)
	case protoreflect.StringKind:
		return v.String()
	case protoreflect.BytesKind:
		b := v.Bytes()
		a := make([]node, len(b))
		for i, c := range b {
			a[i] = json.Number(strconv.Itoa(int(c)))
		}
		return a
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return messageNode(v.Message())
	}
	return nil
}

// floatNode formats a float as serde_json does: always with a fraction or
// exponent, and null for NaN and infinities.
func floatNode(f float64, bits int) node {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil
	}
	s := strconv.FormatFloat(f, 'g', -1, bits)
	if !bytes.ContainsAny([]byte(s), ".e") {
		s += ".0"
	}
	return json.Number(s)
}

// parseJSON decodes JSON text into a node, keeping object key order.
func parseJSON(text []byte) (node, error) {
	d := json.NewDecoder(bytes.NewReader(text))
	d.UseNumber()
	n, err := decodeNode(d)
	if err != nil {
		return nil, fmt.Errorf("decode json: %w", err)
	}
	if _, err := d.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("decode json: trailing data")
	}
	return n, nil
}

func decodeNode(d *json.Decoder) (node, error) {
	t, err := d.Token()
	if err != nil {
		return nil, err
	}
	switch t := t.(type) {
	case json.Delim:
		switch t {
		case '{':
			o := &object{}
			for d.More() {
				kt, err := d.Token()
				if err != nil {
					return nil, err
				}
				k, ok := kt.(string)
				if !ok {
					return nil, fmt.Errorf("object key %v is not a string", kt)
				}
				v, err := decodeNode(d)
				if err != nil {
					return nil, err
				}
				o.add(k, v)
			}
			_, err := d.Token() // '}'
			return o, err
		case '[':
			a := []node{}
			for d.More() {
				v, err := decodeNode(d)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
			_, err := d.Token() // ']'
			return a, err
		}
		return nil, fmt.Errorf("unexpected %v", t)
	case nil, bool, string, json.Number:
		return t, nil
	}
	return nil, fmt.Errorf("unexpected token %v", t)
}

// keyTerms holds one shared term per field name of the agent protocol (and
// of the CopyFile view), so that building an input does not allocate its
// keys. Filled at init, read-only afterwards; OPA shares interned terms the
// same way.
var keyTerms = func() map[string]*ast.Term {
	m := map[string]*ast.Term{}
	seen := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		for i := range md.Fields().Len() {
			fd := md.Fields().Get(i)
			m[fieldName(fd)] = ast.StringTerm(fieldName(fd))
			if fd.IsMap() {
				fd = fd.MapValue()
			}
			if fd.Message() != nil {
				walk(fd.Message())
			}
		}
	}
	if sd := pb.File_grpc_agent_proto.Services().ByName("AgentService"); sd != nil {
		for i := range sd.Methods().Len() {
			walk(sd.Methods().Get(i).Input())
		}
	}
	for _, k := range []string{"path", "file_type", "symlink_target", "file_size", "file_mode", "dir_mode", "uid", "gid", "offset"} {
		m[k] = ast.StringTerm(k)
	}
	return m
}()

// toTerm converts a node to an OPA term.
func toTerm(n node) *ast.Term {
	switch n := n.(type) {
	case nil:
		return ast.NullTerm()
	case bool:
		return ast.InternedTerm(n)
	case string:
		return ast.InternedTerm(n) // shared only for "" and OPA's own set
	case json.Number:
		if t := ast.InternedIntNumberTermFromString(string(n)); t != nil {
			return t
		}
		return ast.NumberTerm(n)
	case []node:
		if len(n) == 0 {
			return ast.ArrayTerm()
		}
		ts := make([]*ast.Term, len(n))
		for i, v := range n {
			ts[i] = toTerm(v)
		}
		return ast.ArrayTerm(ts...)
	case *object:
		items := make([][2]*ast.Term, len(n.keys))
		for i, k := range n.keys {
			kt, ok := keyTerms[k]
			if !ok {
				kt = ast.StringTerm(k)
			}
			items[i] = [2]*ast.Term{kt, toTerm(n.vals[i])}
		}
		return ast.ObjectTerm(items...)
	}
	return ast.NullTerm()
}

// writeJSON writes n as compact JSON, escaping strings as serde_json does.
func writeJSON(b *bytes.Buffer, n node) {
	switch n := n.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(n))
	case string:
		writeString(b, n)
	case json.Number:
		b.WriteString(string(n))
	case []node:
		b.WriteByte('[')
		for i, v := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			writeJSON(b, v)
		}
		b.WriteByte(']')
	case *object:
		b.WriteByte('{')
		for i, k := range n.keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, k)
			b.WriteByte(':')
			writeJSON(b, n.vals[i])
		}
		b.WriteByte('}')
	default:
		b.WriteString("null")
	}
}

// writeString quotes s like serde_json: only '"', '\\' and control
// characters are escaped.
func writeString(b *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		default:
			if c < 0x20 {
				b.WriteString(`\u00`)
				b.WriteByte(hex[c>>4])
				b.WriteByte(hex[c&0xf])
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('"')
}
