package ocispec

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cova-project/cova/protocols/grpc"
)

// diff walks a and b (values of the same type) and lists the paths where
// they differ, so a failed comparison says where, not just that.
func diff(a, b any) []string {
	var out []string
	diffValue(reflect.ValueOf(a), reflect.ValueOf(b), "", &out)
	return out
}

func diffValue(a, b reflect.Value, path string, out *[]string) {
	if len(*out) >= 20 {
		return
	}
	if !a.IsValid() || !b.IsValid() {
		if a.IsValid() != b.IsValid() {
			*out = append(*out, fmt.Sprintf("%s: valid %v != %v", path, a.IsValid(), b.IsValid()))
		}
		return
	}
	if a.Type() != b.Type() {
		*out = append(*out, fmt.Sprintf("%s: type %s != %s", path, a.Type(), b.Type()))
		return
	}
	switch a.Kind() {
	case reflect.Pointer, reflect.Interface:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				*out = append(*out, fmt.Sprintf("%s: nil %v != %v", path, a.IsNil(), b.IsNil()))
			}
			return
		}
		diffValue(a.Elem(), b.Elem(), path, out)
	case reflect.Struct:
		for i := range a.NumField() {
			diffValue(a.Field(i), b.Field(i), path+"."+a.Type().Field(i).Name, out)
		}
	case reflect.Slice:
		if a.IsNil() != b.IsNil() {
			*out = append(*out, fmt.Sprintf("%s: nil %v != %v", path, a.IsNil(), b.IsNil()))
			return
		}
		if a.Len() != b.Len() {
			*out = append(*out, fmt.Sprintf("%s: len %d != %d", path, a.Len(), b.Len()))
			return
		}
		for i := range a.Len() {
			diffValue(a.Index(i), b.Index(i), fmt.Sprintf("%s[%d]", path, i), out)
		}
	case reflect.Map:
		if a.IsNil() != b.IsNil() {
			*out = append(*out, fmt.Sprintf("%s: nil %v != %v", path, a.IsNil(), b.IsNil()))
			return
		}
		if a.Len() != b.Len() {
			*out = append(*out, fmt.Sprintf("%s: len %d != %d", path, a.Len(), b.Len()))
			return
		}
		for _, k := range a.MapKeys() {
			diffValue(a.MapIndex(k), b.MapIndex(k), fmt.Sprintf("%s[%v]", path, k), out)
		}
	default:
		if a.CanInterface() && !reflect.DeepEqual(a.Interface(), b.Interface()) {
			*out = append(*out, fmt.Sprintf("%s: %v != %v", path, a.Interface(), b.Interface()))
		}
	}
}

func assertEqual(t *testing.T, got, want any) {
	t.Helper()
	if reflect.DeepEqual(got, want) {
		return
	}
	d := diff(got, want)
	if len(d) == 0 {
		d = []string{"(reflect.DeepEqual differs, field walk found nothing)"}
	}
	t.Errorf("got != want:\n  %s", strings.Join(d, "\n  "))
}

// filler produces distinct small non-zero values, so that swapped fields
// and zero-collapsing show up in a round trip.
type filler struct{ n int }

func (f *filler) next() int {
	f.n++
	return f.n
}

// fillProto sets every field of m (two entries in each list and map, the
// oneof, nested messages) except the Solaris and Windows placeholders.
func (f *filler) fillProto(m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.Kind() == protoreflect.MessageKind && (fd.Message().Name() == "Solaris" || fd.Message().Name() == "Windows") {
			continue
		}
		switch {
		case fd.IsList():
			l := m.Mutable(fd).List()
			for range 2 {
				if fd.Kind() == protoreflect.MessageKind {
					e := l.NewElement()
					f.fillProto(e.Message())
					l.Append(e)
				} else {
					l.Append(f.scalar(fd))
				}
			}
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			for range 2 {
				k := protoreflect.ValueOfString(fmt.Sprintf("key%d", f.next())).MapKey()
				mp.Set(k, f.scalar(fd.MapValue()))
			}
		case fd.Kind() == protoreflect.MessageKind:
			f.fillProto(m.Mutable(fd).Message())
		default:
			m.Set(fd, f.scalar(fd))
		}
	}
}

func (f *filler) scalar(fd protoreflect.FieldDescriptor) protoreflect.Value {
	n := f.next()
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(fmt.Sprintf("%s-%d", fd.Name(), n))
	case protoreflect.Int64Kind:
		return protoreflect.ValueOfInt64(int64(n))
	case protoreflect.Uint64Kind:
		return protoreflect.ValueOfUint64(uint64(n))
	case protoreflect.Uint32Kind:
		return protoreflect.ValueOfUint32(uint32(n))
	case protoreflect.Int32Kind:
		return protoreflect.ValueOfInt32(int32(n))
	}
	panic(fmt.Sprintf("filler: field %s has kind %s", fd.FullName(), fd.Kind()))
}

func fullProtoSpec() *grpc.Spec {
	s := &grpc.Spec{}
	(&filler{}).fillProto(s.ProtoReflect())
	return s
}

// fillGo sets every field reachable from v (two entries in each slice and
// map) except the config.json paths in skip (list indices written "[]"),
// recording the skipped paths it met in seen.
func (f *filler) fillGo(t *testing.T, v reflect.Value, path string, skip, seen map[string]bool) {
	t.Helper()
	switch v.Kind() {
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
		f.fillGo(t, v.Elem(), path, skip, seen)
	case reflect.Struct:
		for i := range v.NumField() {
			sf := v.Type().Field(i)
			if sf.Anonymous {
				f.fillGo(t, v.Field(i), path, skip, seen)
				continue
			}
			name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
			child := name
			if path != "" {
				child = path + "." + name
			}
			if skip[child] {
				seen[child] = true
				continue
			}
			f.fillGo(t, v.Field(i), child, skip, seen)
		}
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 2, 2))
		for i := range 2 {
			f.fillGo(t, v.Index(i), path+"[]", skip, seen)
		}
	case reflect.Map:
		v.Set(reflect.MakeMap(v.Type()))
		for range 2 {
			e := reflect.New(v.Type().Elem()).Elem()
			f.fillGo(t, e, path+"[]", skip, seen)
			v.SetMapIndex(reflect.ValueOf(fmt.Sprintf("key%d", f.next())), e)
		}
	case reflect.String:
		v.SetString(fmt.Sprintf("%s-%d", path, f.next()))
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(int64(f.next()))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(uint64(f.next()))
	default:
		t.Fatalf("filler: %s has kind %s", path, v.Kind())
	}
}

// roundTripWire marshals and unmarshals m, as the wire would.
func roundTripWire[M proto.Message](t *testing.T, m M) M {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	out := m.ProtoReflect().New().Interface().(M)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatalf("unmarshal: %v", err)
	}
	return out
}

// assertProtoEqual compares messages and shows the differing lines of
// their text form.
func assertProtoEqual(t *testing.T, got, want proto.Message) {
	t.Helper()
	if proto.Equal(got, want) {
		return
	}
	opts := prototext.MarshalOptions{Multiline: true}
	g := strings.Split(opts.Format(got), "\n")
	w := strings.Split(opts.Format(want), "\n")
	var d []string
	for i := 0; i < max(len(g), len(w)) && len(d) < 20; i++ {
		var gl, wl string
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if gl != wl {
			d = append(d, fmt.Sprintf("line %d: got %q, want %q", i+1, gl, wl))
		}
	}
	t.Errorf("messages differ:\n  %s", strings.Join(d, "\n  "))
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
