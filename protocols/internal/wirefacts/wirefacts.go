// Package wirefacts turns compiled protobuf descriptors into a sorted list of
// the facts that decide the wire format (and the JSON policy input), so tests
// can compare our .proto files with fact tables dumped from upstream ones.
// One line per message, field (number, label, type, oneof), enum value,
// service and rpc (request and response); file names and Go options are left
// out on purpose, since they differ from upstream.
package wirefacts

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// Facts lists, sorted, everything in files that decides what goes on the
// wire or into the JSON policy input: message and field names, field numbers,
// labels, types, oneofs, enum values, and each rpc's request and response.
// File names and Go options are left out on purpose: they differ from Kata's.
func Facts(files ...protoreflect.FileDescriptor) []string {
	var out []string
	var msgs func(protoreflect.MessageDescriptors)
	var enums func(protoreflect.EnumDescriptors)
	typeName := func(f protoreflect.FieldDescriptor) string {
		switch f.Kind() {
		case protoreflect.MessageKind, protoreflect.GroupKind:
			return string(f.Message().FullName())
		case protoreflect.EnumKind:
			return string(f.Enum().FullName())
		default:
			return f.Kind().String()
		}
	}
	enums = func(es protoreflect.EnumDescriptors) {
		for i := 0; i < es.Len(); i++ {
			e := es.Get(i)
			out = append(out, "enum "+string(e.FullName()))
			for j := 0; j < e.Values().Len(); j++ {
				v := e.Values().Get(j)
				out = append(out, fmt.Sprintf("enumvalue %s.%s %d", e.FullName(), v.Name(), v.Number()))
			}
		}
	}
	msgs = func(ms protoreflect.MessageDescriptors) {
		for i := 0; i < ms.Len(); i++ {
			m := ms.Get(i)
			if m.IsMapEntry() {
				continue // shown as map<K,V> on the field that uses it
			}
			out = append(out, "message "+string(m.FullName()))
			for j := 0; j < m.Fields().Len(); j++ {
				f := m.Fields().Get(j)
				var t string
				switch {
				case f.IsMap():
					t = fmt.Sprintf("map<%s,%s>", typeName(f.MapKey()), typeName(f.MapValue()))
				case f.Cardinality() == protoreflect.Repeated:
					t = "repeated " + typeName(f)
				case f.HasOptionalKeyword():
					t = "optional " + typeName(f)
				default:
					t = typeName(f)
				}
				if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() {
					t += " oneof " + string(o.Name())
				}
				out = append(out, fmt.Sprintf("%s %d %s", f.FullName(), f.Number(), t))
			}
			enums(m.Enums())
			msgs(m.Messages())
		}
	}
	for _, fd := range files {
		enums(fd.Enums())
		msgs(fd.Messages())
		for i := 0; i < fd.Services().Len(); i++ {
			s := fd.Services().Get(i)
			out = append(out, "service "+string(s.FullName()))
			for j := 0; j < s.Methods().Len(); j++ {
				m := s.Methods().Get(j)
				in, res := string(m.Input().FullName()), string(m.Output().FullName())
				if m.IsStreamingClient() {
					in = "stream " + in
				}
				if m.IsStreamingServer() {
					res = "stream " + res
				}
				out = append(out, fmt.Sprintf("rpc %s/%s %s %s", s.FullName(), m.Name(), in, res))
			}
		}
	}
	slices.Sort(out)
	return out
}

// ReadGolden reads a fact table: one fact a line, blank lines and # comments
// skipped. It fails the test when the table cannot be read or is empty.
func ReadGolden(t testing.TB, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("opening golden fact table: %v", err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		lines = append(lines, line)
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading golden fact table: %v", err)
	}
	if len(lines) == 0 {
		t.Fatal("golden fact table is empty")
	}
	return lines
}
