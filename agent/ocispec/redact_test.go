package ocispec

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cova-project/cova/protocols/grpc"
)

const secret = "hunter2-s3cr3t"

func secretSpec() *grpc.Spec {
	return &grpc.Spec{
		Process: &grpc.Process{
			Args: []string{"/bin/app", "--verbose"},
			Env:  []string{"PATH=/bin", "API_TOKEN=" + secret, "EMPTY=", secret, "EQ=a=" + secret},
		},
		Hooks: &grpc.Hooks{
			Prestart:        []*grpc.Hook{{Path: "/h", Env: []string{"HOOK_KEY=" + secret}}},
			CreateContainer: []*grpc.Hook{nil, {Path: "/h2", Env: []string{"K=" + secret}}},
		},
		Annotations: map[string]string{"io.katacontainers.note": "kept-value"},
	}
}

func TestRedacted(t *testing.T) {
	in := secretSpec()
	orig := proto.Clone(in)
	got := Redacted(in)

	if !proto.Equal(in, orig) {
		t.Error("Redacted modified its argument")
	}
	wantEnv := []string{"PATH=<redacted>", "API_TOKEN=<redacted>", "EMPTY=<redacted>", "<redacted>", "EQ=<redacted>"}
	assertEqual(t, got.Process.Env, wantEnv)
	assertEqual(t, got.Hooks.Prestart[0].Env, []string{"HOOK_KEY=<redacted>"})
	assertEqual(t, got.Hooks.CreateContainer[1].Env, []string{"K=<redacted>"})
	assertEqual(t, got.Process.Args, in.Process.Args)
	if got.Annotations["io.katacontainers.note"] != "kept-value" {
		t.Errorf("annotation value lost: %v", got.Annotations)
	}
	if s := prototextString(got); strings.Contains(s, secret) {
		t.Errorf("secret survives redaction: %s", s)
	}
}

func TestRedactedNil(t *testing.T) {
	tests := map[string]func() bool{
		"spec":            func() bool { return Redacted(nil) == nil },
		"process":         func() bool { return RedactedProcess(nil) == nil },
		"spec no process": func() bool { return proto.Equal(Redacted(&grpc.Spec{Hostname: "h"}), &grpc.Spec{Hostname: "h"}) },
	}
	for name, ok := range tests {
		t.Run(name, func(t *testing.T) {
			if !ok() {
				t.Error("unexpected result")
			}
		})
	}
}

func TestRedactedProcess(t *testing.T) {
	in := &grpc.Process{Args: []string{"env"}, Env: []string{"A=" + secret}}
	got := RedactedProcess(in)
	assertEqual(t, got.Env, []string{"A=<redacted>"})
	if in.Env[0] != "A="+secret {
		t.Error("RedactedProcess modified its argument")
	}
}

func TestLogHelpers(t *testing.T) {
	tests := map[string]struct {
		value slog.LogValuer
		want  []string
	}{
		"spec":        {LogSpec(secretSpec()), []string{"API_TOKEN=<redacted>", "kept-value", "/bin/app"}},
		"process":     {LogProcess(&grpc.Process{Args: []string{"sh"}, Env: []string{"PASSWORD=" + secret}}), []string{"PASSWORD=<redacted>", "sh"}},
		"nil spec":    {LogSpec(nil), []string{"spec=<nil>"}},
		"nil process": {LogProcess(nil), []string{"spec=<nil>"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			slog.New(slog.NewTextHandler(&buf, nil)).Info("create", "spec", tc.value)
			out := buf.String()
			if strings.Contains(out, secret) {
				t.Errorf("secret logged: %s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("log line %q lacks %q", out, w)
				}
			}
		})
	}
}

func prototextString(m proto.Message) string {
	return LogSpec(m.(*grpc.Spec)).LogValue().String()
}
