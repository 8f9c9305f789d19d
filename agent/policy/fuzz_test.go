package policy

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	pb "github.com/cova-project/cova/protocols/grpc"
)

// fzRPCIndex returns the index of the named rpc in rpcs.
func fzRPCIndex(tb testing.TB, rpcs []protoreflect.MethodDescriptor, name string) uint8 {
	tb.Helper()
	for i, md := range rpcs {
		if string(md.Name()) == name {
			return uint8(i)
		}
	}
	tb.Fatalf("no rpc %s", name)
	return 0
}

// fzEnvValues collects, from an input document, the secret part of every
// Env entry (the value of KEY=VALUE, or the whole entry without "=").
func fzEnvValues(n node) []string {
	var out []string
	var walk func(node, bool)
	walk = func(n node, inEnv bool) {
		switch n := n.(type) {
		case *object:
			for i, k := range n.keys {
				walk(n.vals[i], k == "Env")
			}
		case []node:
			for _, v := range n {
				walk(v, inEnv)
			}
		case string:
			if inEnv {
				if _, v, ok := strings.Cut(n, "="); ok {
					out = append(out, v)
				} else {
					out = append(out, n)
				}
			}
		}
	}
	walk(n, false)
	return out
}

// fzCheckRedacted fails unless red is orig with every Env value replaced by
// the mark, every "data" byte array by a length note, every "policy" string
// by a length note, and nothing else changed.
func fzCheckRedacted(t *testing.T, path string, orig, red node) {
	t.Helper()
	switch o := orig.(type) {
	case *object:
		r, ok := red.(*object)
		if !ok || len(r.keys) != len(o.keys) {
			t.Fatalf("%s: redacted object has another shape", path)
		}
		for i, k := range o.keys {
			if r.keys[i] != k {
				t.Fatalf("%s: key %q became %q", path, k, r.keys[i])
			}
			p := path + "." + k
			ov, rv := o.vals[i], r.vals[i]
			switch {
			case k == "Env":
				if a, ok := ov.([]node); ok {
					ra, ok := rv.([]node)
					if !ok || len(ra) != len(a) {
						t.Fatalf("%s: redacted env has another shape", p)
					}
					for j, e := range a {
						want := redactedMark
						if s, ok := e.(string); ok {
							if key, _, found := strings.Cut(s, "="); found {
								want = key + "=" + redactedMark
							}
						}
						if ra[j] != want {
							t.Fatalf("%s[%d]: redacted to %v, want %q", p, j, ra[j], want)
						}
					}
					continue
				}
			case k == "data":
				if _, ok := ov.([]node); ok {
					if s, ok := rv.(string); !ok || !strings.HasSuffix(s, " bytes>") {
						t.Fatalf("%s: byte payload not replaced: %v", p, rv)
					}
					continue
				}
			case k == "policy":
				if _, ok := ov.(string); ok {
					if s, ok := rv.(string); !ok || !strings.HasSuffix(s, " bytes>") {
						t.Fatalf("%s: policy text not replaced", p)
					}
					continue
				}
			}
			fzCheckRedacted(t, p, ov, rv)
		}
	case []node:
		r, ok := red.([]node)
		if !ok || len(r) != len(o) {
			t.Fatalf("%s: redacted array has another shape", path)
		}
		for i := range o {
			fzCheckRedacted(t, path+"[]", o[i], r[i])
		}
	default:
		if orig != red {
			t.Fatalf("%s: %v changed to %v", path, orig, red)
		}
	}
}

// fzSeedRequests are valid requests to seed both targets.
func fzSeedRequests() map[string]proto.Message {
	return map[string]proto.Message{
		"CreateContainer": sampleCreateContainer("c1"),
		"ExecProcess":     &pb.ExecProcessRequest{ContainerId: "c1", ExecId: "e1", Process: &pb.Process{Args: []string{"sh"}, Env: []string{"TOKEN=hunter2-hunter2", "BARE-SECRET-VALUE"}}},
		"RemoveContainer": &pb.RemoveContainerRequest{ContainerId: "c1"},
		"ReadStdout":      &pb.ReadStreamRequest{ContainerId: "c1", ExecId: "e1", Len: 1024},
		"WriteStdin":      &pb.WriteStreamRequest{ContainerId: "c1", ExecId: "e1", Data: []byte("input data")},
		"CopyFile":        &pb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/c1-resolv.conf", FileSize: 3, FileMode: 0o644, Data: []byte("abc")},
		"SetPolicy":       &pb.SetPolicyRequest{Policy: "package agent_policy\n"},
		"CreateSandbox":   &pb.CreateSandboxRequest{Hostname: "web-pod", SandboxId: "s1", GuestHookPath: "/hooks"},
	}
}

// FuzzInput: any AgentService request, decoded from fuzzed protobuf bytes,
// gives a valid JSON input document with the kata shape, and a debug form
// in which env values, byte payloads and policy texts are redacted.
func FuzzInput(f *testing.F) {
	rpcs := agentRPCs(f)
	for i, md := range rpcs {
		m := newRequest(f, md)
		fillMessage(m.ProtoReflect(), 0)
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	for name, m := range fzSeedRequests() {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(fzRPCIndex(f, rpcs, name), b)
	}
	f.Fuzz(func(t *testing.T, idx uint8, data []byte) {
		md := rpcs[int(idx)%len(rpcs)]
		req := newRequest(t, md)
		if proto.Unmarshal(data, req) != nil {
			return
		}
		if got := EntryPoint(req); got != string(md.Input().Name()) {
			t.Fatalf("entry point %s for %s", got, md.Input().Name())
		}
		out, err := Input(req)
		if err != nil {
			t.Fatalf("%s: no input document: %v", md.Name(), err)
		}
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(out, &doc); err != nil {
			t.Fatalf("%s: input is not a JSON object: %v\n%s", md.Name(), err, out)
		}
		if _, isCopy := req.(*pb.CopyFileRequest); !isCopy {
			fields := req.ProtoReflect().Descriptor().Fields()
			if len(doc) != fields.Len() {
				t.Fatalf("%s: %d keys for %d fields", md.Name(), len(doc), fields.Len())
			}
			for i := range fields.Len() {
				if _, ok := doc[fieldName(fields.Get(i))]; !ok {
					t.Fatalf("%s: field %s missing", md.Name(), fieldName(fields.Get(i)))
				}
			}
		}
		n, err := inputNode(req)
		if err != nil {
			t.Fatal(err)
		}
		red := redacted(n)
		fzCheckRedacted(t, string(md.Input().Name()), n, red)
		var dbg bytes.Buffer
		writeJSON(&dbg, red)
		if !json.Valid(dbg.Bytes()) {
			t.Fatalf("debug form is not JSON:\n%s", dbg.Bytes())
		}
		_ = toTerm(n)
	})
}

// fzLog keeps the attribute values of every log record (the text the agent
// logs beside its fixed messages).
type fzLog struct{ vals []string }

func (h *fzLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *fzLog) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		h.vals = append(h.vals, a.Value.String())
		return true
	})
	return nil
}
func (h *fzLog) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *fzLog) WithGroup(string) slog.Handler      { return h }

// fzOpsPolicy is a stateful policy whose {allowed, ops} results are driven
// by the request: CreateContainer records the container, Remove forgets it,
// Exec needs it, and SignalProcess applies a patch built from request fields
// (which may be malformed: then the call is INTERNAL and the state stays).
const fzOpsPolicy = statefulPolicy + `
default SignalProcessRequest := false
SignalProcessRequest := {"allowed": true, "ops": [{"op": "add", "path": input.exec_id, "value": input.signal}]} if {
	input.container_id == "patch"
}
`

// FuzzDecision evaluates fuzzed request sequences against the shipped
// policies and a stateful one. Each call allows, denies with a
// *DeniedError, or fails INTERNAL; a call that does not allow leaves the
// state as it was; the state is always a JSON object; env values reach
// neither the log nor the error.
func FuzzDecision(f *testing.F) {
	rpcs := agentRPCs(f)
	h := &fzLog{}
	opts := Options{Logger: slog.New(h)}
	engines := []*Engine{mustEngine(f, AllowAllPolicy(), opts), mustEngine(f, CocoDefaultPolicy(), opts), mustEngine(f, fzOpsPolicy, opts)}
	const allowAll, coco, stateful = 0, 1, 2

	step := func(name string, m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		out := []byte{fzRPCIndex(f, rpcs, name), 0, 0}
		binary.LittleEndian.PutUint16(out[1:], uint16(len(b)))
		return append(out, b...)
	}
	seeds := fzSeedRequests()
	var all []byte
	for _, name := range []string{"CreateContainer", "ExecProcess", "ReadStdout", "RemoveContainer"} {
		all = append(all, step(name, seeds[name])...)
	}
	web := step("CreateContainer", createReq("c2", "web"))
	execC2 := step("ExecProcess", &pb.ExecProcessRequest{ContainerId: "c2"})
	for pol := range engines {
		f.Add(uint8(pol), all)
		f.Add(uint8(pol), append(append(bytes.Clone(web), execC2...), step("RemoveContainer", &pb.RemoveContainerRequest{ContainerId: "c2"})...))
		f.Add(uint8(pol), append(bytes.Clone(web), web...))
		f.Add(uint8(pol), step("SignalProcess", &pb.SignalProcessRequest{ContainerId: "patch", ExecId: "/pstate/x", Signal: 9}))
		f.Add(uint8(pol), step("SignalProcess", &pb.SignalProcessRequest{ContainerId: "patch", ExecId: "/nope/x", Signal: 9}))
		f.Add(uint8(pol), step("SignalProcess", &pb.SignalProcessRequest{ContainerId: "patch", ExecId: "", Signal: 9}))
		for _, name := range []string{"CopyFile", "SetPolicy", "CreateSandbox", "WriteStdin"} {
			f.Add(uint8(pol), step(name, seeds[name]))
		}
	}
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, pol uint8, script []byte) {
		which := int(pol) % len(engines)
		e := engines[which]
		// Each input starts from an empty state.
		e.mu.Lock()
		if err := e.cur.applyOps([]patchOp{{Op: "replace", Path: "/pstate", Value: map[string]any{}, has: true}}); err != nil {
			e.mu.Unlock()
			t.Fatal(err)
		}
		e.mu.Unlock()
		for steps := 0; len(script) >= 3 && steps < 4; steps++ {
			md := rpcs[int(script[0])%len(rpcs)]
			n := min(int(binary.LittleEndian.Uint16(script[1:])), len(script)-3)
			data := script[3 : 3+n]
			script = script[3+n:]
			req := newRequest(t, md)
			if proto.Unmarshal(data, req) != nil {
				continue
			}
			h.vals = h.vals[:0]
			before := fzState(t, e)
			err := e.Allow(ctx, string(md.Name()), req)
			after := fzState(t, e)
			entry := EntryPoint(req)
			var de *DeniedError
			switch {
			case err == nil:
			case errors.As(err, &de):
				if !errdefs.IsPermissionDenied(err) || errdefs.IsInternal(err) || de.Entry != entry {
					t.Fatalf("%s: denial %v of the wrong kind", md.Name(), err)
				}
				if errors.Is(err, ErrDenyDrain) != (entry == readStreamEntry) {
					t.Fatalf("%s: ErrDenyDrain wrong: %v", md.Name(), err)
				}
				if strings.ContainsAny(de.Reason, "\n\r") || len(de.Reason) > maxReasonLen+len("…") {
					t.Fatalf("%s: reason not one short line: %q", md.Name(), de.Reason)
				}
			case errdefs.IsInternal(err) && !errdefs.IsPermissionDenied(err):
				if which != stateful {
					t.Fatalf("%s: shipped policy failed to decide: %v", md.Name(), err)
				}
			default:
				t.Fatalf("%s: error neither a denial nor INTERNAL: %v", md.Name(), err)
			}
			if which == allowAll && err != nil {
				t.Fatalf("allow-all refused %s: %v", md.Name(), err)
			}
			if err != nil && !bytes.Equal(before, after) {
				t.Fatalf("%s refused (%v) but the state changed:\n%s\n%s", md.Name(), err, before, after)
			}
			if which == stateful && err == nil {
				id := ""
				if r, ok := req.(interface{ GetContainerId() string }); ok {
					id = r.GetContainerId()
				}
				_, known := e.State()[id]
				switch entry {
				case "CreateContainerRequest":
					if !known {
						t.Fatalf("created %q not recorded: %s", id, after)
					}
				case "RemoveContainerRequest":
					if known {
						t.Fatalf("removed %q still recorded: %s", id, after)
					}
				}
			}
			fzNoEnvLeak(t, req, err, h.vals)
		}
	})
}

// fzState returns the policy state (data.pstate) as JSON: it must always
// be JSON-able, and State() must return it when it is an object. (A policy
// may replace /pstate with a non-object through its ops; State() is then
// nil. Reported, not asserted.)
func fzState(t *testing.T, e *Engine) []byte {
	t.Helper()
	e.mu.RLock()
	raw, err := json.Marshal(e.cur.data["pstate"])
	_, isObject := e.cur.data["pstate"].(map[string]any)
	e.mu.RUnlock()
	if err != nil {
		t.Fatalf("policy state is not JSON-able: %v", err)
	}
	if isObject {
		b, err := json.Marshal(e.State())
		if err != nil || !bytes.Equal(b, raw) {
			t.Fatalf("State() %s differs from the state %s (%v)", b, raw, err)
		}
	}
	return raw
}

// fzNoEnvLeak fails if an env value of req appears in err or the logged
// values, unless the same text is public (it appears in the redacted input
// the agent logs anyway, or in the rpc name).
func fzNoEnvLeak(t *testing.T, req proto.Message, err error, logged []string) {
	t.Helper()
	n, ierr := inputNode(req)
	if ierr != nil {
		t.Fatal(ierr)
	}
	var pub bytes.Buffer
	writeJSON(&pub, redacted(n))
	pub.WriteString(string(req.ProtoReflect().Descriptor().FullName()))
	var sinks []string
	if err != nil {
		sinks = append(sinks, err.Error())
	}
	sinks = append(sinks, logged...)
	for _, v := range fzEnvValues(n) {
		if len(v) < 8 || strings.Contains(pub.String(), v) {
			continue
		}
		for _, s := range sinks {
			if strings.Contains(s, v) {
				t.Fatalf("env value %q leaked into %q", v, s)
			}
		}
	}
}
