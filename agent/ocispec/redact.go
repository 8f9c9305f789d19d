package ocispec

import (
	"log/slog"
	"strings"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/cova-project/cova/protocols/grpc"
)

// RedactedValue replaces environment values in Redacted and the Log helpers.
const RedactedValue = "<redacted>"

// Redacted returns a deep copy of s that is safe to log: every environment
// entry of the process and of the hooks keeps its name and loses its value
// ("KEY=<redacted>"; an entry without "=" becomes "<redacted>"). Arguments,
// annotations and everything else are kept. s is not modified; nil gives nil.
func Redacted(s *grpc.Spec) *grpc.Spec {
	if s == nil {
		return nil
	}
	out := proto.Clone(s).(*grpc.Spec)
	if out.Process != nil {
		redactEnv(out.Process.Env)
	}
	if h := out.Hooks; h != nil {
		for _, list := range [][]*grpc.Hook{h.Prestart, h.Poststart, h.Poststop, h.CreateRuntime, h.CreateContainer, h.StartContainer} {
			for _, hk := range list {
				if hk != nil {
					redactEnv(hk.Env)
				}
			}
		}
	}
	return out
}

// RedactedProcess is Redacted for the process of an ExecProcessRequest.
func RedactedProcess(p *grpc.Process) *grpc.Process {
	if p == nil {
		return nil
	}
	out := proto.Clone(p).(*grpc.Process)
	redactEnv(out.Env)
	return out
}

func redactEnv(env []string) {
	for i, e := range env {
		if name, _, ok := strings.Cut(e, "="); ok {
			env[i] = name + "=" + RedactedValue
		} else {
			env[i] = RedactedValue
		}
	}
}

// LogSpec wraps s for log/slog: the attribute's value is Redacted(s) in
// protobuf text format, computed only when the record is actually logged.
//
//	logger.Debug("create container", "spec", ocispec.LogSpec(req.OCI))
func LogSpec(s *grpc.Spec) slog.LogValuer { return logSpec{s} }

// LogProcess is LogSpec for a process.
func LogProcess(p *grpc.Process) slog.LogValuer { return logProcess{p} }

type logSpec struct{ s *grpc.Spec }

func (l logSpec) LogValue() slog.Value {
	if l.s == nil {
		return slog.StringValue("<nil>")
	}
	return slog.StringValue(prototext.MarshalOptions{}.Format(Redacted(l.s)))
}

type logProcess struct{ p *grpc.Process }

func (l logProcess) LogValue() slog.Value {
	if l.p == nil {
		return slog.StringValue("<nil>")
	}
	return slog.StringValue(prototext.MarshalOptions{}.Format(RedactedProcess(l.p)))
}
