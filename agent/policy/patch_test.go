package policy

import (
	"bytes"
	"encoding/json"
	"testing"
)

func decodeAny(t *testing.T, s string) any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader([]byte(s)))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("decode %s: %v", s, err)
	}
	return v
}

func TestApplyPatch(t *testing.T) {
	cases := []struct {
		name    string
		doc     string
		ops     string
		want    string // "" = error expected
		wantErr bool
	}{
		{name: "add member", doc: `{"pstate":{}}`, ops: `[{"op":"add","path":"/pstate/c1","value":0}]`, want: `{"pstate":{"c1":0}}`},
		{name: "add replaces member", doc: `{"pstate":{"c1":0}}`, ops: `[{"op":"add","path":"/pstate/c1","value":{"a":[1]}}]`, want: `{"pstate":{"c1":{"a":[1]}}}`},
		{name: "add null value", doc: `{"pstate":{}}`, ops: `[{"op":"add","path":"/pstate/x","value":null}]`, want: `{"pstate":{"x":null}}`},
		{name: "add into array middle and end", doc: `{"a":[1,3]}`, ops: `[{"op":"add","path":"/a/1","value":2},{"op":"add","path":"/a/-","value":4}]`, want: `{"a":[1,2,3,4]}`},
		{name: "add to missing parent", doc: `{"pstate":{}}`, ops: `[{"op":"add","path":"/nope/x","value":1}]`, wantErr: true},
		{name: "add array index out of range", doc: `{"a":[]}`, ops: `[{"op":"add","path":"/a/1","value":1}]`, wantErr: true},
		{name: "remove member", doc: `{"pstate":{"c1":0,"c2":1}}`, ops: `[{"op":"remove","path":"/pstate/c1"}]`, want: `{"pstate":{"c2":1}}`},
		{name: "remove missing member fails (kata: RemoveContainer of unknown id)", doc: `{"pstate":{}}`, ops: `[{"op":"remove","path":"/pstate/c1"}]`, wantErr: true},
		{name: "remove array element", doc: `{"a":[1,2,3]}`, ops: `[{"op":"remove","path":"/a/0"}]`, want: `{"a":[2,3]}`},
		{name: "replace", doc: `{"pstate":{"n":"a"}}`, ops: `[{"op":"replace","path":"/pstate/n","value":"b"}]`, want: `{"pstate":{"n":"b"}}`},
		{name: "replace missing fails", doc: `{"pstate":{}}`, ops: `[{"op":"replace","path":"/pstate/n","value":"b"}]`, wantErr: true},
		{name: "test passes", doc: `{"pstate":{"n":1}}`, ops: `[{"op":"test","path":"/pstate/n","value":1.0}]`, want: `{"pstate":{"n":1}}`},
		{name: "test fails", doc: `{"pstate":{"n":1}}`, ops: `[{"op":"test","path":"/pstate/n","value":2}]`, wantErr: true},
		{name: "move", doc: `{"pstate":{"a":1}}`, ops: `[{"op":"move","from":"/pstate/a","path":"/pstate/b"}]`, want: `{"pstate":{"b":1}}`},
		{name: "move into itself", doc: `{"pstate":{"a":{}}}`, ops: `[{"op":"move","from":"/pstate/a","path":"/pstate/a/b"}]`, wantErr: true},
		{name: "copy", doc: `{"pstate":{"a":[1]}}`, ops: `[{"op":"copy","from":"/pstate/a","path":"/pstate/b"}]`, want: `{"pstate":{"a":[1],"b":[1]}}`},
		{name: "escaped pointer", doc: `{"pstate":{}}`, ops: `[{"op":"add","path":"/pstate/a~1b~0c","value":1}]`, want: `{"pstate":{"a/b~c":1}}`},
		{name: "bad escape", doc: `{"pstate":{}}`, ops: `[{"op":"add","path":"/pstate/a~2","value":1}]`, wantErr: true},
		{name: "pointer without slash", doc: `{"pstate":{}}`, ops: `[{"op":"add","path":"pstate","value":1}]`, wantErr: true},
		{name: "replace root with non-object", doc: `{"pstate":{}}`, ops: `[{"op":"add","path":"","value":1}]`, wantErr: true},
		{name: "atomic: later failure undoes earlier op", doc: `{"pstate":{}}`, ops: `[{"op":"add","path":"/pstate/a","value":1},{"op":"remove","path":"/pstate/zz"}]`, wantErr: true},
		{name: "null ops entries skipped", doc: `{"pstate":{}}`, ops: `[null,{"op":"add","path":"/pstate/a","value":1}]`, want: `{"pstate":{"a":1}}`},
		{name: "unknown op", doc: `{"pstate":{}}`, ops: `[{"op":"merge","path":"/pstate"}]`, wantErr: true},
		{name: "add without value", doc: `{"pstate":{}}`, ops: `[{"op":"add","path":"/pstate/a"}]`, wantErr: true},
		{name: "ops not an array", doc: `{"pstate":{}}`, ops: `{"op":"add"}`, wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			doc := decodeAny(t, tc.doc).(map[string]any)
			before := decodeAny(t, tc.doc)
			ops, err := parsePatch(decodeAny(t, tc.ops))
			var got map[string]any
			if err == nil {
				got, err = applyPatch(doc, ops)
			}
			if tc.wantErr {
				if err == nil {
					t.Fatalf("no error; result %v", got)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if !jsonEqual(got, decodeAny(t, tc.want)) {
					t.Errorf("got %v, want %s", got, tc.want)
				}
			}
			if !jsonEqual(doc, before) {
				t.Errorf("input document modified: %v", doc)
			}
		})
	}
}
