package api

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	cdhpb "github.com/cova-project/cova/protocols/cdh"
	"github.com/cova-project/cova/protocols/keyprovider"
)

// marker stands for secret material: it must never reach a log.
const marker = "S3CRET-MARKER-7f1c"

// syncBuf is a goroutine-safe log sink.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// shortDir returns a temp dir whose socket paths fit sun_path (108 bytes);
// t.TempDir embeds the (sub)test name and can be too long.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cdhapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// clients are the generated clients of one served Server.
type clients struct {
	sealed cdhpb.SealedSecretServiceService
	res    cdhpb.GetResourceServiceService
	mount  cdhpb.SecureMountServiceService
	pull   cdhpb.ImagePullServiceService
	kp     keyprovider.KeyProviderServiceService
	raw    *ttrpc.Client
	logs   *syncBuf
}

// serve starts a Server with cfg on a unix socket and connects to it.
func serve(t testing.TB, cfg Config) *clients {
	t.Helper()
	logs := &syncBuf{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sock := filepath.Join(shortDir(t), "run", "cdh.sock")
	if err := s.Start(ctx, sock); err != nil {
		cancel()
		t.Fatal(err)
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c := ttrpc.NewClient(conn)
	t.Cleanup(func() {
		c.Close()
		cancel()
	})
	return &clients{
		sealed: cdhpb.NewSealedSecretServiceClient(c),
		res:    cdhpb.NewGetResourceServiceClient(c),
		mount:  cdhpb.NewSecureMountServiceClient(c),
		pull:   cdhpb.NewImagePullServiceClient(c),
		kp:     keyprovider.NewKeyProviderServiceClient(c),
		raw:    c,
		logs:   logs,
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// fakes records what the dependencies were asked and answers with fixed
// values (or err, or a panic).
type fakes struct {
	mu     sync.Mutex
	calls  []string
	err    error
	panics bool
}

func (f *fakes) note(s string) error {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
	if f.panics {
		panic("boom " + marker)
	}
	return f.err
}

func (f *fakes) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.calls) == 0 {
		return ""
	}
	return f.calls[len(f.calls)-1]
}

func (f *fakes) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fakes) config() Config {
	return Config{
		Resources: ResourceGetterFunc(func(_ context.Context, uri string) ([]byte, error) {
			if err := f.note("get " + uri); err != nil {
				return nil, err
			}
			return []byte("resource:" + marker), nil
		}),
		Unsealer: UnsealerFunc(func(_ context.Context, secret string) ([]byte, error) {
			if err := f.note("unseal " + secret); err != nil {
				return nil, err
			}
			return []byte("plain:" + marker), nil
		}),
		SecureMounter: SecureMounterFunc(func(_ context.Context, vt string, opts map[string]string, flags []string, mp string) (string, error) {
			if err := f.note(fmt.Sprintf("mount %s %v %v %s", vt, opts, flags, mp)); err != nil {
				return "", err
			}
			return mp, nil
		}),
		ImagePuller: ImagePullerFunc(func(_ context.Context, img, bundle string) (string, error) {
			if err := f.note("pull " + img + " " + bundle); err != nil {
				return "", err
			}
			return "sha256:" + strings.Repeat("ab", 32), nil
		}),
		KeyUnwrapper: KeyUnwrapperFunc(func(_ context.Context, packet []byte) ([]byte, error) {
			if err := f.note("unwrap " + string(packet)); err != nil {
				return nil, err
			}
			return []byte{'{', 0, 200, 255, '}'}, nil
		}),
	}
}

const packetJSON = `{"kid":"kbs:///default/key/1","wrapped_data":"AAAA","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A256GCM"}`

// ocicryptRSInput is what ocicrypt-rs sends for a keyunwrap.
func ocicryptRSInput(packet string) []byte {
	return []byte(`{"op":"keyunwrap","keywrapparams":{"ec":null,"optsdata":null},"keyunwrapparams":{"dc":{"Parameters":{"attestation-agent":["Y2Nfa2JjOjpudWxs"]}},"annotation":"` +
		base64.StdEncoding.EncodeToString([]byte(packet)) + `"}}`)
}

// call runs one rpc by name with a request built by the table.
type call struct {
	name string
	do   func(ctx context.Context, c *clients) (proto.Message, error)
}

func unseal(secret string) call {
	return call{"UnsealSecret", func(ctx context.Context, c *clients) (proto.Message, error) {
		return c.sealed.UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: []byte(secret)})
	}}
}

func getRes(p string) call {
	return call{"GetResource", func(ctx context.Context, c *clients) (proto.Message, error) {
		return c.res.GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: p})
	}}
}

func mountReq(r *cdhpb.SecureMountRequest) call {
	return call{"SecureMount", func(ctx context.Context, c *clients) (proto.Message, error) {
		return c.mount.SecureMount(ctx, r)
	}}
}

func pullReq(img, bundle string) call {
	return call{"PullImage", func(ctx context.Context, c *clients) (proto.Message, error) {
		return c.pull.PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: img, BundlePath: bundle})
	}}
}

func unwrapReq(in []byte) call {
	return call{"UnWrapKey", func(ctx context.Context, c *clients) (proto.Message, error) {
		return c.kp.UnWrapKey(ctx, &keyprovider.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: in})
	}}
}

const goodSealed = "sealed.eyJhbGciOiJFUzI1NiJ9.eyJ2ZXJzaW9uIjoiMC4xLjAifQ.c2ln"

func goodMount() *cdhpb.SecureMountRequest {
	return &cdhpb.SecureMountRequest{
		VolumeType: "block-device",
		Options:    map[string]string{"deviceId": "252:1", "sourceType": "empty", "encryptionType": "luks2"},
		Flags:      []string{"rw"},
		MountPoint: "/run/kata-containers/sandbox/storage/vol1",
	}
}

// good has one valid call per rpc.
var good = []call{
	unseal(goodSealed),
	getRes("kbs:///default/key/1"),
	mountReq(goodMount()),
	pullReq("quay.io/prometheus/busybox:latest", "/run/kata-containers/c1"),
	unwrapReq(ocicryptRSInput(packetJSON)),
}

func TestHappyPath(t *testing.T) {
	f := &fakes{}
	c := serve(t, f.config())
	ctx := ctxT(t)
	for _, tc := range []struct {
		call     call
		wantDep  string
		checkOut func(t *testing.T, m proto.Message)
	}{
		{unseal(goodSealed), "unseal " + goodSealed, func(t *testing.T, m proto.Message) {
			if got := string(m.(*cdhpb.UnsealSecretOutput).GetPlaintext()); got != "plain:"+marker {
				t.Errorf("plaintext %q", got)
			}
		}},
		{getRes("kbs:///default/key/1"), "get kbs:///default/key/1", func(t *testing.T, m proto.Message) {
			if got := string(m.(*cdhpb.GetResourceResponse).GetResource()); got != "resource:"+marker {
				t.Errorf("resource %q", got)
			}
		}},
		// The host part is ignored, as upstream: the getter sees no host.
		{getRes("kbs://kbs.example:8080/default/key/1"), "get kbs:///default/key/1", nil},
		{getRes("kbs+plugin://host/a/b?x=1"), "get kbs+plugin:///a/b?x=1", nil},
		{mountReq(goodMount()), "mount block-device map[deviceId:252:1 encryptionType:luks2 sourceType:empty] [rw] /run/kata-containers/sandbox/storage/vol1", func(t *testing.T, m proto.Message) {
			if _, ok := m.(*cdhpb.SecureMountResponse); !ok {
				t.Errorf("reply %T", m)
			}
		}},
		{pullReq("quay.io/prometheus/busybox:latest", "/run/kata-containers/c1"), "pull quay.io/prometheus/busybox:latest /run/kata-containers/c1", func(t *testing.T, m proto.Message) {
			if got := m.(*cdhpb.ImagePullResponse).GetManifestDigest(); got != "sha256:"+strings.Repeat("ab", 32) {
				t.Errorf("digest %q", got)
			}
		}},
		{unwrapReq(ocicryptRSInput(packetJSON)), "unwrap " + packetJSON, func(t *testing.T, m proto.Message) {
			got := string(m.(*keyprovider.KeyProviderKeyWrapProtocolOutput).GetKeyProviderKeyWrapProtocolOutput())
			if want := `{"keyunwrapresults":{"optsdata":[123,0,200,255,125]}}`; got != want {
				t.Errorf("output %s, want %s", got, want)
			}
		}},
	} {
		t.Run(tc.call.name+"/"+tc.wantDep, func(t *testing.T) {
			m, err := tc.call.do(ctx, c)
			if err != nil {
				t.Fatalf("%s: %v", tc.call.name, err)
			}
			if got := f.last(); got != tc.wantDep {
				t.Errorf("dependency got %q, want %q", got, tc.wantDep)
			}
			if tc.checkOut != nil {
				tc.checkOut(t, m)
			}
		})
	}
}

func TestInvalidArgument(t *testing.T) {
	f := &fakes{}
	c := serve(t, f.config())
	ctx := ctxT(t)
	big := strings.Repeat("a", MaxOptionValueLen+1)
	withMount := func(edit func(r *cdhpb.SecureMountRequest)) call {
		r := goodMount()
		edit(r)
		return mountReq(r)
	}
	for _, tc := range []struct {
		name  string
		call  call
		field string
	}{
		{"secret empty", unseal(""), "secret: empty"},
		{"secret not sealed", unseal("plain-" + marker), "secret: not a sealed secret"},
		{"secret with newline", unseal("sealed.a.b.c\n" + marker), "secret: contains a byte"},
		{"secret too big", unseal("sealed." + strings.Repeat("a", MaxSecretSize)), "secret: "},
		{"resource empty", getRes(""), "ResourcePath: empty"},
		{"resource not kbs", getRes("https://x/a/b/c"), "ResourcePath: "},
		{"resource traversal", getRes("kbs:///default/../c"), "ResourcePath: "},
		{"resource two segments", getRes("kbs:///default/key"), "ResourcePath: "},
		{"resource escaped", getRes("kbs:///a%2Fb/c/d"), "ResourcePath: "},
		{"resource too long", getRes("kbs:///a/b/" + strings.Repeat("c", MaxURILen)), "ResourcePath: "},
		{"volume type empty", withMount(func(r *cdhpb.SecureMountRequest) { r.VolumeType = "" }), "volume_type: empty"},
		{"volume type odd", withMount(func(r *cdhpb.SecureMountRequest) { r.VolumeType = "Block Device" }), "volume_type: "},
		{"option key odd", withMount(func(r *cdhpb.SecureMountRequest) { r.Options["a b"] = "x" }), "options: key "},
		{"option value big", withMount(func(r *cdhpb.SecureMountRequest) { r.Options["key"] = big }), `options["key"]: `},
		{"option value NUL", withMount(func(r *cdhpb.SecureMountRequest) { r.Options["key"] = marker + "\x00" }), `options["key"]: contains NUL`},
		{"too many options", withMount(func(r *cdhpb.SecureMountRequest) {
			for i := range MaxOptions + 1 {
				r.Options[fmt.Sprint("k", i)] = "v"
			}
		}), "options: "},
		{"empty flag", withMount(func(r *cdhpb.SecureMountRequest) { r.Flags = []string{"rw", ""} }), "flags[1]: empty"},
		{"mount point relative", withMount(func(r *cdhpb.SecureMountRequest) { r.MountPoint = "run/kata-containers/x" }), "mount_point: "},
		{"mount point outside", withMount(func(r *cdhpb.SecureMountRequest) { r.MountPoint = "/etc/x" }), "mount_point: "},
		{"mount point root itself", withMount(func(r *cdhpb.SecureMountRequest) { r.MountPoint = DefaultRoot }), "mount_point: "},
		{"image empty", pullReq("", "/run/kata-containers/c1"), "image_url: empty"},
		{"image bad", pullReq("busybox@sha256:xyz", "/run/kata-containers/c1"), "image_url: "},
		{"image with space", pullReq("busybox:la test", "/run/kata-containers/c1"), "image_url: "},
		{"bundle relative", pullReq("busybox", "c1"), "bundle_path: "},
		{"bundle unclean", pullReq("busybox", "/run/kata-containers/../../etc"), "bundle_path: "},
		{"bundle sibling prefix", pullReq("busybox", "/run/kata-containersX/c1"), "bundle_path: "},
		{"bundle is root", pullReq("busybox", "/run/kata-containers"), "bundle_path: "},
		{"bundle trailing slash", pullReq("busybox", "/run/kata-containers/c1/"), "bundle_path: "},
		{"unwrap empty", unwrapReq(nil), "KeyProviderKeyWrapProtocolInput: empty"},
		{"unwrap not json", unwrapReq([]byte("{")), "KeyProviderKeyWrapProtocolInput: not key provider JSON"},
		{"unwrap wrap op", unwrapReq([]byte(`{"op":"keywrap","keywrapparams":{},"keyunwrapparams":{"annotation":"e30="}}`)), "KeyProviderKeyWrapProtocolInput.op: "},
		{"unwrap no op", unwrapReq([]byte(`{"keyunwrapparams":{"annotation":"e30="}}`)), "KeyProviderKeyWrapProtocolInput.op: missing"},
		{"unwrap no params", unwrapReq([]byte(`{"op":"keyunwrap"}`)), "KeyProviderKeyWrapProtocolInput.keyunwrapparams: missing"},
		{"unwrap no annotation", unwrapReq([]byte(`{"op":"keyunwrap","keyunwrapparams":{"dc":null}}`)), "keyunwrapparams.annotation: missing"},
		{"unwrap annotation not base64", unwrapReq([]byte(`{"op":"keyunwrap","keyunwrapparams":{"annotation":"!!"}}`)), "keyunwrapparams.annotation: not standard base64"},
		{"unwrap annotation unpadded", unwrapReq([]byte(`{"op":"keyunwrap","keyunwrapparams":{"annotation":"e30"}}`)), "keyunwrapparams.annotation: not standard base64"},
		{"unwrap bad dc", unwrapReq([]byte(`{"op":"keyunwrap","keyunwrapparams":{"dc":{"Parameters":{"a":"b"}},"annotation":"e30="}}`)), "KeyProviderKeyWrapProtocolInput: not key provider JSON"},
		{"unwrap annotation too big", unwrapReq([]byte(`{"op":"keyunwrap","keyunwrapparams":{"annotation":"` +
			base64.StdEncoding.EncodeToString(make([]byte, MaxAnnotationSize+1)) + `"}}`)), "keyunwrapparams.annotation: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.count()
			_, err := tc.call.do(ctx, c)
			if got := status.Code(err); got != codes.InvalidArgument {
				t.Fatalf("code %v (%v), want InvalidArgument", got, err)
			}
			msg := status.Convert(err).Message()
			if !strings.HasPrefix(msg, tc.call.name+": ") || !strings.Contains(msg, tc.field) {
				t.Errorf("message %q does not name rpc %s and field %q", msg, tc.call.name, tc.field)
			}
			if strings.Contains(msg, marker) {
				t.Errorf("message echoes a secret value: %q", msg)
			}
			if f.count() != before {
				t.Errorf("dependency called with invalid input: %s", f.last())
			}
		})
	}
}

// TestUnwrapInputForms: the forms real clients send are accepted.
func TestUnwrapInputForms(t *testing.T) {
	f := &fakes{}
	c := serve(t, f.config())
	ctx := ctxT(t)
	b64 := base64.StdEncoding.EncodeToString([]byte(packetJSON))
	for name, in := range map[string]string{
		"ocicrypt-rs":         string(ocicryptRSInput(packetJSON)),
		"containers/ocicrypt": `{"op":"keyunwrap","keywrapparams":{},"keyunwrapparams":{"dc":{"Parameters":{"attestation-agent":["eA=="]}},"annotation":"` + b64 + `"}}`,
		"no dc":               `{"op":"keyunwrap","keywrapparams":{"ec":null,"optsdata":null},"keyunwrapparams":{"dc":null,"annotation":"` + b64 + `"}}`,
		"unknown members":     `{"op":"keyunwrap","x":1,"keyunwrapparams":{"annotation":"` + b64 + `","y":[]}}`,
	} {
		t.Run(name, func(t *testing.T) {
			out, err := unwrapReq([]byte(in)).do(ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.last(); got != "unwrap "+packetJSON {
				t.Errorf("unwrapper got %q", got)
			}
			// Decodes as ocicrypt-rs does: optsdata a Vec<u8>.
			var o struct {
				R struct {
					Opts []int `json:"optsdata"`
				} `json:"keyunwrapresults"`
			}
			raw := out.(*keyprovider.KeyProviderKeyWrapProtocolOutput).GetKeyProviderKeyWrapProtocolOutput()
			if err := json.Unmarshal(raw, &o); err != nil || fmt.Sprint(o.R.Opts) != "[123 0 200 255 125]" {
				t.Errorf("output %s: %v, %v", raw, o.R.Opts, err)
			}
		})
	}
}

func TestUnwrapOutputEncoding(t *testing.T) {
	for _, tc := range []struct {
		in   []byte
		want string
	}{
		{[]byte{0}, `{"keyunwrapresults":{"optsdata":[0]}}`},
		{[]byte(`{"a"}`), `{"keyunwrapresults":{"optsdata":[123,34,97,34,125]}}`},
		{[]byte{9, 99, 100, 255}, `{"keyunwrapresults":{"optsdata":[9,99,100,255]}}`},
	} {
		t.Run(tc.want, func(t *testing.T) {
			if got := string(unwrapOutput(tc.in)); got != tc.want {
				t.Errorf("got %s", got)
			}
		})
	}
}

func TestUnimplemented(t *testing.T) {
	c := serve(t, Config{})
	ctx := ctxT(t)
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.do(ctx, c)
			if got := status.Code(err); got != codes.Unimplemented {
				t.Fatalf("code %v (%v), want Unimplemented", got, err)
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, "not available") || !strings.HasPrefix(msg, tc.name) {
				t.Errorf("message %q is not clear", msg)
			}
		})
	}
}

func TestWrapKeyNotSupported(t *testing.T) {
	c := serve(t, (&fakes{}).config())
	_, err := c.kp.WrapKey(ctxT(t), &keyprovider.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: []byte(`{"op":"keywrap"}`)})
	if status.Code(err) != codes.NotFound || !strings.Contains(status.Convert(err).Message(), "/keyprovider.KeyProviderService/WrapKey is not supported") {
		t.Errorf("WrapKey: %v, want upstream's NOT_FOUND", err)
	}
}

func TestErrorClasses(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("kbs: %w", errdefs.ErrNotFound), codes.NotFound},
		{fmt.Errorf("policy: %w", errdefs.ErrPermissionDenied), codes.PermissionDenied},
		{fmt.Errorf("kbs down: %w", errdefs.ErrUnavailable), codes.Unavailable},
		{fmt.Errorf("bad packet: %w", errdefs.ErrInvalidArgument), codes.InvalidArgument},
		{fmt.Errorf("no kms: %w", errdefs.ErrNotImplemented), codes.Unimplemented},
		{fmt.Errorf("no kbs: %w", errdefs.ErrFailedPrecondition), codes.FailedPrecondition},
		{fmt.Errorf("slow: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{errors.New("plain"), codes.Internal},
		{status.Error(codes.Aborted, "already a status"), codes.Aborted},
	} {
		t.Run(tc.want.String(), func(t *testing.T) {
			f := &fakes{err: tc.err}
			c := serve(t, f.config())
			ctx := ctxT(t)
			for _, call := range good {
				_, err := call.do(ctx, c)
				if got := status.Code(err); got != tc.want {
					t.Errorf("%s: code %v (%v), want %v", call.name, got, err, tc.want)
				}
			}
		})
	}
}

func TestPanicRecovered(t *testing.T) {
	f := &fakes{panics: true}
	c := serve(t, f.config())
	ctx := ctxT(t)
	for _, call := range good {
		t.Run(call.name, func(t *testing.T) {
			_, err := call.do(ctx, c)
			if got := status.Code(err); got != codes.Internal {
				t.Fatalf("code %v (%v), want Internal", got, err)
			}
			if strings.Contains(err.Error(), marker) {
				t.Errorf("the panic value reached the caller: %v", err)
			}
		})
	}
	// The server still serves.
	f.mu.Lock()
	f.panics = false
	f.mu.Unlock()
	if _, err := good[1].do(ctx, c); err != nil {
		t.Errorf("after panics: %v", err)
	}
	if !strings.Contains(c.logs.String(), "panic in CDH rpc") {
		t.Error("panic not logged")
	}
}

// TestUndecodableRequest: bytes that are not the request message are
// INVALID_ARGUMENT, not a crash or UNKNOWN.
func TestUndecodableRequest(t *testing.T) {
	c := serve(t, (&fakes{}).config())
	// Field 1 of GetResourceRequest is a string: invalid UTF-8 does not decode.
	bad := &keyprovider.KeyProviderKeyWrapProtocolInput{KeyProviderKeyWrapProtocolInput: []byte{0xff, 0xfe}}
	var resp cdhpb.GetResourceResponse
	err := c.raw.Call(ctxT(t), GetResourceService, "GetResource", bad, &resp)
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("code %v (%v), want InvalidArgument", status.Code(err), err)
	}
}

// TestNoSecretsInLogs runs successes and failures with secret material in
// requests, replies and dependency panics and greps the debug-level log.
func TestNoSecretsInLogs(t *testing.T) {
	f := &fakes{}
	c := serve(t, f.config())
	ctx := ctxT(t)
	m := goodMount()
	m.Options["key"] = "sealed." + marker
	calls := append([]call{}, good...)
	calls = append(calls,
		unseal("sealed."+marker+".x.y"),
		mountReq(m),
	)
	for _, call := range calls {
		if _, err := call.do(ctx, c); err != nil {
			t.Fatalf("%s: %v", call.name, err)
		}
	}
	calls = append(calls, unseal("notsealed"+marker), unseal("sealed.\n"+marker))
	f.mu.Lock()
	f.err = errors.New("dependency failed")
	f.mu.Unlock()
	for _, call := range calls {
		_, _ = call.do(ctx, c)
	}
	f.mu.Lock()
	f.err, f.panics = nil, true
	f.mu.Unlock()
	for _, call := range calls {
		_, _ = call.do(ctx, c)
	}
	logs := c.logs.String()
	if !strings.Contains(logs, "CDH rpc failed") || !strings.Contains(logs, "rpc=UnsealSecret") {
		t.Fatalf("expected failure lines in the log:\n%s", logs)
	}
	// The only marker allowed is inside the recovered panic value of the
	// fake itself, which is logged on purpose (it is the code's own).
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, marker) && !strings.Contains(line, "panic in CDH rpc") {
			t.Errorf("secret in log line: %s", line)
		}
	}
}

func TestNewRejectsBadRoots(t *testing.T) {
	for _, r := range []string{"relative", "/", "/run/../etc", "/run/x/"} {
		t.Run(r, func(t *testing.T) {
			if _, err := New(Config{BundleRoots: []string{r}}); !errdefs.IsInvalidArgument(err) {
				t.Errorf("BundleRoots %q: %v", r, err)
			}
			if _, err := New(Config{MountRoots: []string{r}}); !errdefs.IsInvalidArgument(err) {
				t.Errorf("MountRoots %q: %v", r, err)
			}
		})
	}
	s, err := New(Config{BundleRoots: []string{"/run/a", "/run/b"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := checkUnder("bundle_path", "/run/b/x", s.bundleRoots); err != nil {
		t.Errorf("second root refused: %v", err)
	}
}

// TestInProcess: the methods also work without ttrpc and return statuses.
func TestInProcess(t *testing.T) {
	f := &fakes{}
	s, err := New(f.config())
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.GetResource(context.Background(), &cdhpb.GetResourceRequest{ResourcePath: "kbs:///a/b/c"})
	if err != nil || string(r.GetResource()) != "resource:"+marker {
		t.Fatalf("GetResource: %v %v", r, err)
	}
	r, err = s.GetResource(context.Background(), &cdhpb.GetResourceRequest{})
	if r != nil || status.Code(err) != codes.InvalidArgument {
		t.Errorf("bad input: %v %v", r, err)
	}
}

func TestReplyTooBig(t *testing.T) {
	s, err := New(Config{Resources: ResourceGetterFunc(func(context.Context, string) ([]byte, error) {
		return make([]byte, 11), nil
	})})
	if err != nil {
		t.Fatal(err)
	}
	s.maxResource = 10
	_, err = s.GetResource(context.Background(), &cdhpb.GetResourceRequest{ResourcePath: "kbs:///a/b/c"})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("code %v, want ResourceExhausted", status.Code(err))
	}
}

func TestListen(t *testing.T) {
	ctx := ctxT(t)
	t.Run("creates directory 0700 and socket 0600", func(t *testing.T) {
		p := filepath.Join(shortDir(t), "a", "b", "cdh.sock")
		l, err := Listen(ctx, "unix://"+p)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		for path, want := range map[string]os.FileMode{filepath.Dir(p): 0o700, p: 0o600} {
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("%s mode %o, want %o", path, got, want)
			}
		}
	})
	t.Run("removes a stale socket", func(t *testing.T) {
		p := filepath.Join(shortDir(t), "cdh.sock")
		old, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		old.(*net.UnixListener).SetUnlinkOnClose(false)
		old.Close()
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("stale socket not left behind: %v", err)
		}
		l, err := Listen(ctx, p)
		if err != nil {
			t.Fatalf("stale socket not replaced: %v", err)
		}
		l.Close()
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket left after close: %v", err)
		}
	})
	t.Run("refuses a live socket", func(t *testing.T) {
		p := filepath.Join(shortDir(t), "cdh.sock")
		live, err := net.Listen("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		defer live.Close()
		if _, err := Listen(ctx, p); !errdefs.IsAlreadyExists(err) {
			t.Errorf("live socket: %v, want AlreadyExists", err)
		}
	})
	t.Run("refuses a regular file", func(t *testing.T) {
		p := filepath.Join(shortDir(t), "cdh.sock")
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Listen(ctx, p); !errdefs.IsAlreadyExists(err) {
			t.Errorf("regular file: %v, want AlreadyExists", err)
		}
		if b, _ := os.ReadFile(p); string(b) != "x" {
			t.Error("regular file was touched")
		}
	})
	t.Run("bad addresses", func(t *testing.T) {
		for _, a := range []string{"relative.sock", "tcp://127.0.0.1:1", "vsock://3:1"} {
			if _, err := Listen(ctx, a); !errdefs.IsInvalidArgument(err) {
				t.Errorf("%q: %v, want InvalidArgument", a, err)
			}
		}
	})
	t.Run("default", func(t *testing.T) {
		if p, err := SocketPath(""); err != nil || p != DefaultSocket {
			t.Errorf("SocketPath(\"\") = %q, %v", p, err)
		}
	})
}

// TestServeStopsOnCancel: cancelling the context stops the server and
// removes the socket.
func TestServeStopsOnCancel(t *testing.T) {
	s, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(shortDir(t), "cdh.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	l, err := Listen(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	go func() { done <- s.Serve(ctx, l) }()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left: %v", err)
	}
}

func BenchmarkGetResource(b *testing.B) {
	payload := bytes.Repeat([]byte{0x5a}, 4096)
	var n atomic.Int64
	c := serve(b, Config{Resources: ResourceGetterFunc(func(context.Context, string) ([]byte, error) {
		n.Add(1)
		return payload, nil
	})})
	ctx := context.Background()
	req := &cdhpb.GetResourceRequest{ResourcePath: "kbs:///default/key/1"}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		r, err := c.res.GetResource(ctx, req)
		if err != nil || len(r.GetResource()) != len(payload) {
			b.Fatalf("%v %d", err, len(r.GetResource()))
		}
	}
	if n.Load() == 0 {
		b.Fatal("getter never called")
	}
}
