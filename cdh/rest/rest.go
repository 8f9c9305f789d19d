// Package rest is the guest-local HTTP API that guest-components'
// api-server-rest offers workloads on 127.0.0.1:8006, served in process:
//
//	GET  /info                                  {"version","tee"?,"additional_tees"?,"feature"}
//	GET  /cdh/resource/<repo>/<type>/<tag>      the KBS resource kbs:///<repo>/<type>/<tag>
//	GET  /aa/token?token_type=kbs               an attestation token
//	GET  /aa/evidence?runtime_data=…[&encoding=base64]
//	GET  /aa/additional-evidence?runtime_data=…[&encoding=base64]
//	POST /aa/aael  {"domain","operation","content"}   a runtime measurement event
//
// Only loopback peers are answered (403 otherwise, whatever address the
// server is bound to). Paths, bodies, content types and the AAEL answers
// are upstream's; status codes too (404 "URL NOT FOUND", 404 "<…> Feature
// Not Enabled" for routes Config.Feature does not select, 400 "BAD
// REQUEST", 500 with the error text), with three deliberate differences: a known path with the
// wrong method is 405 (upstream answers 404 for the /aa routes and serves
// /cdh/resource for any method), input a backend rejects as invalid
// (a malformed resource path or AAEL body, an unknown token type) is 400
// instead of 500, and sizes are bounded (query, body: 400/413).
//
// Backends are small interfaces: a ResourceGetter (the CDH) and an
// AttestationAgent, whose methods are those of the AA ttrpc service, so
// *aaservice.Service (in process) and aa.NewAttestationAgentServiceClient's
// client (over ttrpc) both serve. Response bodies (resources, tokens,
// evidence) and query values are never logged.
package rest

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"runtime/debug"
	"strings"
	"time"

	"github.com/cova-project/cova/internal/textclip"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/protocols/aa"
)

// DefaultAddr is where upstream's api-server-rest listens.
const DefaultAddr = "127.0.0.1:8006"

// Limits.
const (
	// MaxQueryLen bounds a request's raw query string.
	MaxQueryLen = 64 << 10
	// MaxAAELBody bounds the POST /aa/aael body.
	MaxAAELBody = 64 << 10
	// MaxTokenTypeLen bounds token_type.
	MaxTokenTypeLen = 64
	// DefaultTimeout bounds each backend call (upstream's ttrpc timeout).
	DefaultTimeout = 50 * time.Second
	// maxErrText bounds the error text in a 4xx/5xx body.
	maxErrText = 512
)

// Feature names /info reports (upstream's --features values).
const (
	FeatureResource    = "resource"
	FeatureAttestation = "attestation"
	FeatureAll         = "all"
)

// Response bodies, as upstream.
const (
	bodyBadRequest          = "BAD REQUEST"
	bodyForbidden           = "Forbidden"
	bodyNotFound            = "URL NOT FOUND"
	bodyNotAllowed          = "Method Not Allowed"
	bodyAANotEnabled        = "Attestation Feature Not Enabled"
	bodyResourceNotEnabled  = "Resource Feature Not Enabled"
	contentTypeJSON         = "application/json"
	contentTypeOctetStream  = "application/octet-stream"
	aaelOK                  = `{"success":"true"}`
	aaelNotSupported        = `{"success":"false","message": "The platform does not support runtime measurement"}`
	aaelNotEnabled          = `{"success":"false","message": "Attestation Agent does not enable eventlog recording"}`
	aaelUnknown             = `{"success":"false","message": "Unknown runtime measurement result"}`
	routeInfo               = "/info"
	rootAA, rootCDH         = "/aa", "/cdh"
	apiToken, apiEvidence   = "/token", "/evidence"
	apiAddEvidence, apiAAEL = "/additional-evidence", "/aael"
	apiResource             = "/resource"
)

// ResourceGetter fetches a KBS resource by URI (kbs:///repo/type/tag); the
// same shape as cdh/api.ResourceGetter and imagepull.ResourceGetter.
type ResourceGetter interface {
	GetResource(ctx context.Context, uri string) ([]byte, error)
}

// AttestationAgent is the part of the AA API the REST server uses, with
// the AA ttrpc service's own signatures: *aaservice.Service and the
// generated ttrpc client (aa.NewAttestationAgentServiceClient) satisfy it
// as they are.
type AttestationAgent interface {
	GetToken(context.Context, *aa.GetTokenRequest) (*aa.GetTokenResponse, error)
	GetEvidence(context.Context, *aa.GetEvidenceRequest) (*aa.GetEvidenceResponse, error)
	GetAdditionalEvidence(context.Context, *aa.GetAdditionalEvidenceRequest) (*aa.GetEvidenceResponse, error)
	ExtendRuntimeMeasurement(context.Context, *aa.ExtendRuntimeMeasurementRequest) (*aa.ExtendRuntimeMeasurementResponse, error)
	GetTeeType(context.Context, *aa.GetTeeTypeRequest) (*aa.GetTeeTypeResponse, error)
	GetAdditionalTees(context.Context, *aa.GetAdditionalTeesRequest) (*aa.GetAdditionalTeesResponse, error)
}

var _ AttestationAgent = aa.AttestationAgentServiceService(nil)

// Config configures a Server.
type Config struct {
	// Feature selects the routes served, as upstream's --features (and
	// Kata's agent.guest_components_rest_api): FeatureResource (the default
	// when empty) serves /cdh/…, FeatureAttestation /aa/…, FeatureAll
	// both. Routes not selected answer 404 "… Feature Not Enabled"; /info
	// is always served.
	Feature string
	// Resources serves /cdh/resource/…; while nil, a selected resource
	// route answers 500 (no KBS configured).
	Resources ResourceGetter
	// AA serves /aa/… and the tee fields of /info; while nil, a selected
	// attestation route answers 500.
	AA AttestationAgent
	// EventLog, when set, serves GET /aa/aael (a Cova extension; upstream
	// has only POST): the AAEL event log as recorded so far, so that a
	// workload or a test in the guest can hand it to a verifier that
	// replays it against the register in its evidence. The log is evidence,
	// not a secret.
	EventLog func() ([]byte, error)
	// Version is /info's version (the agent's); "unknown" when empty.
	Version string
	// Timeout bounds each backend call; DefaultTimeout when 0.
	Timeout time.Duration
	// Logger gets one line per failed request and a debug line per answered
	// one (route, status, duration; never bodies or query values);
	// discarded when nil.
	Logger *slog.Logger
}

// Server is the REST API; it is an http.Handler.
type Server struct {
	res     ResourceGetter
	aa      AttestationAgent
	elog    func() ([]byte, error)
	resOn   bool
	aaOn    bool
	version string
	feature string
	timeout time.Duration
	log     *slog.Logger
}

// errNoBackend answers a selected route whose backend is not wired.
var errNoBackend = errors.New("backend not configured")

// New returns a Server; an unknown Feature is an error.
func New(cfg Config) (*Server, error) {
	s := &Server{res: cfg.Resources, aa: cfg.AA, elog: cfg.EventLog, version: cfg.Version, feature: cfg.Feature, timeout: cfg.Timeout, log: cfg.Logger}
	switch s.feature {
	case "", FeatureResource:
		s.feature, s.resOn = FeatureResource, true
	case FeatureAttestation:
		s.aaOn = true
	case FeatureAll:
		s.resOn, s.aaOn = true, true
	default:
		return nil, fmt.Errorf("cdh rest: Feature %q: want %s, %s or %s: %w", clip(cfg.Feature, 32), FeatureResource, FeatureAttestation, FeatureAll, errdefs.ErrInvalidArgument)
	}
	if s.version == "" {
		s.version = "unknown"
	}
	if s.timeout <= 0 {
		s.timeout = DefaultTimeout
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// Feature is what /info reports: FeatureAll, FeatureResource or
// FeatureAttestation.
func (s *Server) Feature() string { return s.feature }

// reply is one answer: status, content type and body.
type reply struct {
	code  int
	ctype string
	body  []byte
	allow string // for 405
	err   error  // logged (never sent as is)
}

func text(code int, body string) reply { return reply{code: code, body: []byte(body)} }

// failure answers a backend error: 400 for input the backend found
// invalid, 500 otherwise, with the (bounded, printable) error text.
func failure(what string, err error) reply {
	code := http.StatusInternalServerError
	if errdefs.IsInvalidArgument(err) || status.Code(err) == codes.InvalidArgument {
		code = http.StatusBadRequest
	}
	return reply{code: code, body: []byte(clip(what+": "+errText(err), maxErrText)), err: err}
}

// errText is an error's message, without the gRPC status decoration.
func errText(err error) string {
	if st, ok := status.FromError(err); ok && st.Code() != codes.Unknown {
		return st.Message()
	}
	return err.Error()
}

func badRequest(why string) reply {
	return reply{code: http.StatusBadRequest, body: []byte(bodyBadRequest), err: errors.New(why)}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	route := "?"
	var rep reply
	func() {
		defer func() {
			if p := recover(); p != nil {
				s.log.Error("panic in REST handler", "route", route, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
				rep = text(http.StatusInternalServerError, "internal error")
			}
		}()
		route, rep = s.route(r)
	}()
	h := w.Header()
	if rep.ctype == "" {
		rep.ctype = "text/plain; charset=utf-8"
	}
	h.Set("Content-Type", rep.ctype)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	if rep.allow != "" {
		h.Set("Allow", rep.allow)
	}
	w.WriteHeader(rep.code)
	_, _ = w.Write(rep.body)

	ms := time.Since(start).Milliseconds()
	switch {
	case rep.code >= 500:
		s.log.Warn("REST request failed", "method", r.Method, "route", route, "status", rep.code, "err", rep.err, "ms", ms)
	case rep.code >= 400:
		s.log.Info("REST request refused", "method", r.Method, "route", route, "peer", clip(r.RemoteAddr, 64), "status", rep.code, "err", rep.err, "ms", ms)
	default:
		s.log.Debug("REST request", "method", r.Method, "route", route, "status", rep.code, "ms", ms)
	}
}

// loopback reports whether the peer address (host:port) is a loopback IP.
func loopback(remote string) bool {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return false
	}
	return ap.Addr().Unmap().IsLoopback()
}

// splitNth splits p before its n-th '/' (upstream's split_nth_slash):
// splitNth("/cdh/resource/a", 2) = "/cdh", "/resource/a".
func splitNth(p string, n int) (head, tail string, ok bool) {
	idx := -1
	for range n {
		i := strings.IndexByte(p[idx+1:], '/')
		if i < 0 {
			return "", "", false
		}
		idx += i + 1
	}
	return p[:idx], p[idx:], true
}

// route answers r and names the route for the log.
func (s *Server) route(r *http.Request) (string, reply) {
	if !loopback(r.RemoteAddr) {
		return "?", reply{code: http.StatusForbidden, body: []byte(bodyForbidden), err: errors.New("peer is not loopback")}
	}
	p := r.URL.EscapedPath()
	if len(r.URL.RawQuery) > MaxQueryLen {
		return "?", badRequest(fmt.Sprintf("query of %d bytes, more than %d", len(r.URL.RawQuery), MaxQueryLen))
	}
	if p == routeInfo {
		if r.Method != http.MethodGet {
			return routeInfo, reply{code: http.StatusMethodNotAllowed, body: []byte(bodyNotAllowed), allow: http.MethodGet}
		}
		return routeInfo, s.info(r.Context())
	}
	root, rest, ok := splitNth(p, 2)
	if !ok {
		return "?", text(http.StatusNotFound, bodyNotFound)
	}
	switch root {
	case rootAA:
		return rootAA + rest, s.routeAA(r, rest)
	case rootCDH:
		if !s.resOn {
			return rootCDH, text(http.StatusNotFound, bodyResourceNotEnabled)
		}
		api, rp, ok := splitNth(rest, 2)
		if !ok || api != apiResource {
			return rootCDH, text(http.StatusNotFound, bodyNotFound)
		}
		if r.Method != http.MethodGet {
			return rootCDH + apiResource, reply{code: http.StatusMethodNotAllowed, body: []byte(bodyNotAllowed), allow: http.MethodGet}
		}
		return rootCDH + apiResource, s.resource(r.Context(), rp)
	}
	return "?", text(http.StatusNotFound, bodyNotFound)
}

// info answers /info.
func (s *Server) info(ctx context.Context) reply {
	type versionInfo struct {
		Version        string   `json:"version"`
		Tee            *string  `json:"tee,omitempty"`
		AdditionalTees []string `json:"additional_tees,omitempty"`
		Feature        string   `json:"feature"`
	}
	vi := versionInfo{Version: s.version, Feature: s.feature}
	if s.aaOn && s.aa != nil {
		ctx, cancel := context.WithTimeout(ctx, s.timeout)
		defer cancel()
		tee, err := s.aa.GetTeeType(ctx, &aa.GetTeeTypeRequest{})
		if err != nil {
			return failure("get tee type", err)
		}
		more, err := s.aa.GetAdditionalTees(ctx, &aa.GetAdditionalTeesRequest{})
		if err != nil {
			return failure("get additional tees", err)
		}
		t := tee.GetTee()
		vi.Tee, vi.AdditionalTees = &t, more.GetAdditionalTees()
	}
	return jsonReply(vi)
}

// jsonReply encodes v as serde_json does for plain data: compact, HTML
// characters not escaped.
func jsonReply(v any) reply {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return text(http.StatusInternalServerError, "encoding reply failed")
	}
	return reply{code: http.StatusOK, ctype: contentTypeJSON, body: bytes.TrimSuffix(b.Bytes(), []byte("\n"))}
}

func octets(b []byte) reply {
	return reply{code: http.StatusOK, ctype: contentTypeOctetStream, body: b}
}

// resource answers /cdh/resource/<path>; p starts with '/'.
func (s *Server) resource(ctx context.Context, p string) reply {
	u, err := kbs.ParseResourceURI("kbs://" + p)
	if err != nil {
		return reply{code: http.StatusBadRequest, body: []byte(bodyBadRequest + ": " + clip(err.Error(), maxErrText)), err: err}
	}
	if s.res == nil {
		return failure("get resource "+u.String(), fmt.Errorf("no KBS configured: %w", errNoBackend))
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	b, err := s.res.GetResource(ctx, u.String())
	if err != nil {
		return failure("get resource "+u.String(), err)
	}
	return octets(b)
}

// query parses the raw query; a malformed query or a repeated parameter is
// refused.
func query(raw string) (url.Values, error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return nil, fmt.Errorf("malformed query: %w", err)
	}
	for k, v := range q {
		if len(v) > 1 {
			return nil, fmt.Errorf("parameter %q given %d times", clip(k, 64), len(v))
		}
	}
	return q, nil
}

// routeAA answers /aa/<api>.
func (s *Server) routeAA(r *http.Request, api string) reply {
	if !s.aaOn {
		return text(http.StatusNotFound, bodyAANotEnabled)
	}
	want := map[string]string{apiToken: http.MethodGet, apiEvidence: http.MethodGet, apiAddEvidence: http.MethodGet, apiAAEL: http.MethodPost}[api]
	if api == apiAAEL && r.Method == http.MethodGet && s.elog != nil {
		b, err := s.elog()
		if errdefs.IsNotFound(err) {
			return text(http.StatusNotFound, clip("event log: "+err.Error(), maxErrText))
		}
		if err != nil {
			return failure("event log", err)
		}
		return reply{code: http.StatusOK, ctype: "text/plain; charset=utf-8", body: b}
	}
	switch {
	case want == "":
		return text(http.StatusNotFound, bodyNotFound)
	case r.Method != want:
		return reply{code: http.StatusMethodNotAllowed, body: []byte(bodyNotAllowed), allow: want}
	}
	if s.aa == nil {
		return failure("attestation agent", fmt.Errorf("no attestation agent configured: %w", errNoBackend))
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.timeout)
	defer cancel()
	if api == apiAAEL {
		return s.aael(ctx, r)
	}
	q, err := query(r.URL.RawQuery)
	if err != nil {
		return badRequest(err.Error())
	}
	if api == apiToken {
		tt, ok := q["token_type"]
		if !ok {
			return badRequest("token_type: missing")
		}
		if t := tt[0]; t == "" || len(t) > MaxTokenTypeLen {
			return badRequest(fmt.Sprintf("token_type: want 1 to %d bytes", MaxTokenTypeLen))
		}
		tok, err := s.aa.GetToken(ctx, &aa.GetTokenRequest{TokenType: tt[0]})
		if err != nil {
			return failure("get token", err)
		}
		return octets(tok.GetToken())
	}
	rd, err := runtimeData(q)
	if err != nil {
		return badRequest(err.Error())
	}
	if api == apiEvidence {
		ev, err := s.aa.GetEvidence(ctx, &aa.GetEvidenceRequest{RuntimeData: rd})
		if err != nil {
			return failure("get evidence", err)
		}
		return octets(ev.GetEvidence())
	}
	ev, err := s.aa.GetAdditionalEvidence(ctx, &aa.GetAdditionalEvidenceRequest{RuntimeData: rd})
	if err != nil {
		return failure("get additional evidence", err)
	}
	return octets(ev.GetEvidence())
}

// rawURL is the strict URL-safe unpadded base64 upstream decodes
// (non-zero trailing bits rejected, as the Rust base64 crate does).
var rawURL = base64.RawURLEncoding.Strict()

// runtimeData returns runtime_data: the query value's bytes, or its
// URL-safe unpadded base64 decoding with encoding=base64.
func runtimeData(q url.Values) ([]byte, error) {
	v, ok := q["runtime_data"]
	if !ok {
		return nil, errors.New("runtime_data: missing")
	}
	enc, ok := q["encoding"]
	if !ok {
		return []byte(v[0]), nil
	}
	if enc[0] != "base64" {
		return nil, fmt.Errorf("encoding %q: want base64", clip(enc[0], 32))
	}
	b, err := rawURL.DecodeString(v[0])
	if err != nil {
		return nil, fmt.Errorf("runtime_data: not URL-safe unpadded base64: %w", err)
	}
	return b, nil
}

// aaelEvent is POST /aa/aael's body; every member is required.
type aaelEvent struct {
	Domain    *string `json:"domain"`
	Operation *string `json:"operation"`
	Content   *string `json:"content"`
}

// aael answers POST /aa/aael.
func (s *Server) aael(ctx context.Context, r *http.Request) reply {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxAAELBody+1))
	if err != nil {
		return badRequest("reading body: " + err.Error())
	}
	if len(body) > MaxAAELBody {
		return reply{code: http.StatusRequestEntityTooLarge, body: []byte(fmt.Sprintf("body larger than %d bytes", MaxAAELBody)), err: errors.New("AAEL body too large")}
	}
	var ev aaelEvent
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&ev); err != nil {
		return badRequest("AAEL event: not JSON: " + err.Error())
	}
	if dec.More() {
		return badRequest("AAEL event: data after the JSON object")
	}
	for name, v := range map[string]*string{"domain": ev.Domain, "operation": ev.Operation, "content": ev.Content} {
		if v == nil {
			return badRequest("AAEL event: " + name + ": missing")
		}
	}
	res, err := s.aa.ExtendRuntimeMeasurement(ctx, &aa.ExtendRuntimeMeasurementRequest{
		Domain: *ev.Domain, Operation: *ev.Operation, Content: *ev.Content,
	})
	if err != nil {
		return failure("extend runtime measurement", err)
	}
	msg := aaelUnknown
	switch res.GetResult() {
	case aa.RuntimeMeasurementResult_OK:
		msg = aaelOK
	case aa.RuntimeMeasurementResult_NOT_SUPPORTED:
		msg = aaelNotSupported
	case aa.RuntimeMeasurementResult_NOT_ENABLED:
		msg = aaelNotEnabled
	}
	return reply{code: http.StatusOK, ctype: contentTypeJSON, body: []byte(msg)}
}

// clip bounds s to n bytes and makes it printable ASCII.
func clip(s string, n int) string { return textclip.Printable(s, n) }

// Serve serves on l until ctx is done, then shuts down (waiting up to 5 s)
// and closes l.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      s.timeout + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    MaxQueryLen + 16<<10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelInfo),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
		case <-stop:
		}
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	err := hs.Serve(l)
	if errors.Is(err, http.ErrServerClosed) || ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("cdh rest: serve: %w", err)
}

// Listen listens on the TCP address addr (DefaultAddr when empty). A
// non-loopback address is allowed but logged: peers are checked per
// request anyway.
func (s *Server) Listen(ctx context.Context, addr string) (net.Listener, error) {
	if addr == "" {
		addr = DefaultAddr
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("cdh rest: listen: %w", err)
	}
	if ap, err := netip.ParseAddrPort(l.Addr().String()); err != nil || !ap.Addr().Unmap().IsLoopback() {
		s.log.Warn("REST API bound to a non-loopback address; non-loopback peers get 403", "addr", l.Addr().String())
	}
	return l, nil
}

// Start listens on addr (see Listen) and serves in the background until
// ctx is done. It returns the bound address once connections are accepted.
func (s *Server) Start(ctx context.Context, addr string) (net.Addr, error) {
	l, err := s.Listen(ctx, addr)
	if err != nil {
		return nil, err
	}
	go func() {
		if err := s.Serve(ctx, l); err != nil {
			s.log.Error("REST API stopped", "err", err)
		}
	}()
	s.log.Info("REST API listening", "addr", l.Addr().String(), "feature", s.feature)
	return l.Addr(), nil
}
