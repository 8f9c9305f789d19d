// Package kbs is a DEVELOPMENT Key Broker Service, for tests and laptops
// only. It is not a security boundary and must never guard real secrets:
// its TLS certificate and token key are generated at start and live in
// memory, TPM attestation keys are accepted without endorsement, sample
// evidence (which proves nothing) is accepted, and a resource policy is only
// what the caller plugs in.
//
// It speaks CoCo's KBS protocol 0.4.0 as trustee does, over HTTPS on
// loopback: POST /kbs/v0/auth opens a session (cookie kbs-session-id) with a
// fresh nonce; POST /kbs/v0/attest checks the nonce, recomputes the report
// data (sha384 of the RFC 8785 canonical {"additional-evidence","nonce",
// "tee-pubkey"}, the key re-serialized in its fixed JWK shape), has the
// TEE's Verifier check the evidence (sample and tpm built in, additional
// devices too; SNPVerifier and TDXVerifier are passed in Options.Verifiers
// with the roots to trust) and answers an ES256 EAR-shaped token; GET
// /kbs/v0/resource/<repo>/<type>/<tag> takes the session's token or a
// bearer token (its own, or from a trusted issuer: passport mode), asks the
// policy hook, and answers the resource JWE-encrypted (ECDH-ES+A256KW or
// RSA-OAEP-256, A256GCM) to the TEE key the token certifies. Errors are
// trustee's: 401 for nearly everything, 404 for bad paths and plugins.
//
// Tests steer it: Stats counts requests; SetDown, SetDelay, FailNext,
// RevokeTokens, TamperNext, SetTokenLifetime and SetClockSkew inject the
// failures a guest meets in the field.
package kbs

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/initdata"
	"github.com/cova-project/cova/cdh/canonjson"
)

// ProtocolVersion is the KBS protocol version the server accepts, exactly.
const ProtocolVersion = "0.4.0"

// Endpoint names a KBS endpoint for statistics and fault injection.
type Endpoint string

// Endpoints.
const (
	Auth     Endpoint = "auth"
	Attest   Endpoint = "attest"
	Resource Endpoint = "resource"
)

// Defaults (trustee's).
const (
	DefaultTokenLifetime  = 5 * time.Minute
	DefaultSessionTimeout = 5 * time.Minute
	maxSessions           = 10000
	maxBody               = 4 << 20
	maxResource           = 16 << 20
)

// PolicyInput is what the resource policy decides on (trustee's rego input
// is the token claims; its data the plugin, path and query).
type PolicyInput struct {
	Plugin string
	Path   []string
	Query  url.Values
	Claims map[string]any
}

// PolicyFunc allows (nil) or denies (an error, answered 401 PolicyDeny) a
// resource request.
type PolicyFunc func(ctx context.Context, in PolicyInput) error

// PluginFunc answers GET /kbs/v0/<plugin>/<path> for an attested client,
// after the policy allowed it; the answer is JWE-encrypted to the token's
// TEE key like a resource, and an error is a 401 PluginInternalError.
type PluginFunc func(ctx context.Context, in PolicyInput) ([]byte, error)

// Options configures a Server.
type Options struct {
	// Addr is the listen address; "127.0.0.1:0" when empty.
	Addr string
	// CertNames are further host names or addresses the certificate
	// names, e.g. 10.0.2.2 for a QEMU guest on user networking.
	CertNames []string
	// ResourceDir serves <dir>/<repo>/<type>/<tag>.
	ResourceDir string
	// Resources are served in addition ("repo/type/tag" → bytes),
	// before ResourceDir.
	Resources map[string][]byte
	// Policy decides each resource request; nil allows all.
	Policy PolicyFunc
	// Verifiers by TEE; DefaultVerifiers when nil.
	Verifiers map[attester.Tee]Verifier
	// TokenLifetime is exp − iat of issued tokens; DefaultTokenLifetime
	// when 0.
	TokenLifetime time.Duration
	// SessionTimeout bounds the auth → attest → resource session;
	// DefaultSessionTimeout when 0.
	SessionTimeout time.Duration
	// TrustedTokenKeys are other issuers whose bearer tokens this KBS
	// accepts (passport mode).
	TrustedTokenKeys []*ecdsa.PublicKey
	// Down, Delay and ClockSkew set the faults from the start.
	Down      bool
	Delay     time.Duration
	ClockSkew time.Duration
	// Logger receives one line per refused request; discarded when nil.
	Logger *slog.Logger
	// Plugins are further KBS plugins (trustee's plugin endpoints) by
	// name; "resource", "auth" and "attest" cannot be replaced.
	Plugins map[string]PluginFunc
	// PlainHTTP serves http:// instead of https:// (for clients configured
	// without a CA, such as a guest whose KBS comes from agent.aa_kbc_params).
	PlainHTTP bool
}

// Stats counts what the server saw.
type Stats struct {
	// Requests per endpoint (including refused ones).
	Auth, Attest, Resource int
	// Attested counts tokens issued.
	Attested int
	// Unauthorized counts 401 answers.
	Unauthorized int
	// Dropped counts connections and requests cut while down.
	Dropped int
}

type fault struct {
	n      int
	status int
}

type session struct {
	tee     attester.Tee
	nonce   string
	expires time.Time
	token   string // set once attested
}

// Server is a running development KBS.
type Server struct {
	opts     Options
	log      *slog.Logger
	url      string
	caPEM    []byte
	tokenKey *ecdsa.PrivateKey
	srv      *http.Server
	ln       net.Listener
	done     chan struct{}
	closeErr error
	once     sync.Once

	mu        sync.Mutex
	sessions  map[string]*session
	resources map[string][]byte
	stats     Stats
	faults    map[Endpoint]fault
	down      bool
	delay     time.Duration
	skew      time.Duration
	lifetime  time.Duration
	epoch     int // tokens from earlier epochs are revoked
	tamper    int // resource answers left to corrupt
	conns     map[net.Conn]struct{}
}

// TB is the part of testing.TB StartTB needs.
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
}

// StartTB starts a server for a test and closes it when the test ends.
func StartTB(tb TB, o Options) *Server {
	tb.Helper()
	s, err := Start(context.Background(), o)
	if err != nil {
		tb.Fatalf("starting the development KBS: %v", err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

func scheme(plain bool) string {
	if plain {
		return "http://"
	}
	return "https://"
}

// Start listens on o.Addr with a fresh self-signed certificate and serves
// until ctx is done or Close is called.
func Start(ctx context.Context, o Options) (*Server, error) {
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.Verifiers == nil {
		o.Verifiers = DefaultVerifiers()
	}
	if o.TokenLifetime <= 0 {
		o.TokenLifetime = DefaultTokenLifetime
	}
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = DefaultSessionTimeout
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	tokenKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(o.Addr)
	if err != nil {
		return nil, fmt.Errorf("dev KBS address %q: %w", o.Addr, err)
	}
	cert, caPEM, err := selfSigned(host, o.CertNames...)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return nil, fmt.Errorf("dev KBS: %w", err)
	}
	s := &Server{
		opts:      o,
		log:       lg,
		url:       scheme(o.PlainHTTP) + ln.Addr().String(),
		caPEM:     caPEM,
		tokenKey:  tokenKey,
		done:      make(chan struct{}),
		sessions:  map[string]*session{},
		resources: maps.Clone(o.Resources),
		faults:    map[Endpoint]fault{},
		down:      o.Down,
		delay:     o.Delay,
		skew:      o.ClockSkew,
		lifetime:  o.TokenLifetime,
		conns:     map[net.Conn]struct{}{},
	}
	if s.resources == nil {
		s.resources = map[string][]byte{}
	}
	s.ln = &faultListener{Listener: ln, s: s}
	s.srv = &http.Server{
		Handler:           s,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
		ConnState:         s.trackConn,
	}
	go func() {
		if o.PlainHTTP {
			_ = s.srv.Serve(s.ln)
			return
		}
		_ = s.srv.ServeTLS(s.ln, "", "")
	}()
	go func() {
		select {
		case <-ctx.Done():
			_ = s.Close()
		case <-s.done:
		}
	}()
	return s, nil
}

// URL is the server's base URL (https://127.0.0.1:port).
func (s *Server) URL() string { return s.url }

// CACertPEM is the certificate a client must trust (its own root).
func (s *Server) CACertPEM() []byte { return s.caPEM }

// TokenPublicKey is the key the server signs tokens with, for another
// server's TrustedTokenKeys.
func (s *Server) TokenPublicKey() *ecdsa.PublicKey { return &s.tokenKey.PublicKey }

// Close stops the server and drops its connections.
func (s *Server) Close() error {
	s.once.Do(func() {
		close(s.done)
		s.closeErr = s.srv.Close()
	})
	return s.closeErr
}

// Stats returns the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// ResetStats zeroes the counters.
func (s *Server) ResetStats() {
	s.mu.Lock()
	s.stats = Stats{}
	s.mu.Unlock()
}

// SetResource serves data at "repo/type/tag" (nil removes it).
func (s *Server) SetResource(path string, data []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if data == nil {
		delete(s.resources, path)
		return
	}
	s.resources[path] = append([]byte(nil), data...)
}

// SetDown makes the server drop every connection (as a dead or unreachable
// KBS) until SetDown(false).
func (s *Server) SetDown(down bool) {
	s.mu.Lock()
	s.down = down
	var conns []net.Conn
	if down {
		for c := range s.conns {
			conns = append(conns, c)
		}
	}
	s.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// SetDelay delays every answer by d (a slow KBS).
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	s.delay = d
	s.mu.Unlock()
}

// SetTokenLifetime sets exp − iat of tokens issued from now on.
func (s *Server) SetTokenLifetime(d time.Duration) {
	s.mu.Lock()
	s.lifetime = d
	s.mu.Unlock()
}

// SetClockSkew offsets the server's clock (token times, session and token
// expiry) by d.
func (s *Server) SetClockSkew(d time.Duration) {
	s.mu.Lock()
	s.skew = d
	s.mu.Unlock()
}

// FailNext answers the next n requests to e with status (and a KBS error
// body) without processing them.
func (s *Server) FailNext(e Endpoint, n, status int) {
	s.mu.Lock()
	s.faults[e] = fault{n: n, status: status}
	s.mu.Unlock()
}

// TamperNext corrupts one ciphertext byte of the next n resource answers
// (a man in the middle, or a broken KBS).
func (s *Server) TamperNext(n int) {
	s.mu.Lock()
	s.tamper = n
	s.mu.Unlock()
}

// RevokeTokens refuses every token issued so far and ends every session,
// so the next resource request meets a 401 mid-flow.
func (s *Server) RevokeTokens() {
	s.mu.Lock()
	s.epoch++
	clear(s.sessions)
	s.mu.Unlock()
}

func (s *Server) now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Now().Add(s.skew)
}

func (s *Server) trackConn(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch st {
	case http.StateNew:
		s.conns[c] = struct{}{}
	case http.StateClosed, http.StateHijacked:
		delete(s.conns, c)
	}
}

// faultListener drops connections while the server is down.
type faultListener struct {
	net.Listener
	s *Server
}

func (l *faultListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.s.mu.Lock()
		down := l.s.down
		if down {
			l.s.stats.Dropped++
		}
		l.s.mu.Unlock()
		if !down {
			return c, nil
		}
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // reset, as a dead peer would
		}
		_ = c.Close()
	}
}

// kbsError is trustee's ErrorInformation.
type kbsError struct {
	Type   string `json:"type"`
	Detail string `json:"detail"`
}

func (s *Server) fail(w http.ResponseWriter, status int, variant, detail string) {
	if status == http.StatusUnauthorized {
		s.mu.Lock()
		s.stats.Unauthorized++
		s.mu.Unlock()
	}
	s.log.Info("dev KBS refused a request", "status", status, "error", variant, "detail", detail)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(kbsError{Type: "https://github.com/confidential-containers/kbs/errors/" + variant, Detail: detail})
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// ServeHTTP routes /kbs/v0/… as trustee's catch-all does.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		w.WriteHeader(http.StatusOK)
		return
	}
	rest, ok := strings.CutPrefix(r.URL.Path, "/kbs/v0/")
	if !ok {
		s.fail(w, http.StatusNotFound, "InvalidRequestPath", "path outside /kbs/v0")
		return
	}
	first, sub, _ := strings.Cut(rest, "/")
	ep := Endpoint(first)
	switch {
	case ep == Auth && sub == "" && r.Method == http.MethodPost:
	case ep == Attest && sub == "" && r.Method == http.MethodPost:
	case ep == Resource && r.Method == http.MethodGet:
	case ep == Auth || ep == Attest || ep == Resource:
		s.fail(w, http.StatusNotFound, "InvalidRequestPath", "method or path not served")
		return
	case s.opts.Plugins[first] != nil && r.Method == http.MethodGet:
	default:
		s.fail(w, http.StatusNotFound, "PluginNotFound", fmt.Sprintf("plugin %q not found", first))
		return
	}

	s.mu.Lock()
	switch ep {
	case Auth:
		s.stats.Auth++
	case Attest:
		s.stats.Attest++
	case Resource:
		s.stats.Resource++
	}
	down, delay := s.down, s.delay
	inject := 0
	if f := s.faults[ep]; f.n > 0 {
		inject = f.status
		if f.n--; f.n == 0 {
			delete(s.faults, ep)
		} else {
			s.faults[ep] = f
		}
	}
	if down {
		s.stats.Dropped++
	}
	s.mu.Unlock()
	if down {
		panic(http.ErrAbortHandler) // cut the connection
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		}
	}
	if inject != 0 {
		variant := "TokenVerifierError"
		if inject >= 500 {
			variant = "HTTPFailed"
		}
		s.fail(w, inject, variant, "injected failure")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	switch ep {
	case Auth:
		s.auth(w, r)
	case Attest:
		s.attest(w, r)
	case Resource:
		s.resource(w, r, sub)
	default:
		s.plugin(w, r, first, sub)
	}
}

func (s *Server) auth(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Version     string          `json:"version"`
		Tee         string          `json:"tee"`
		ExtraParams json.RawMessage `json:"extra-params"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		s.fail(w, http.StatusUnauthorized, "SerdeError", "request: "+err.Error())
		return
	}
	if req.Version != ProtocolVersion {
		s.fail(w, http.StatusUnauthorized, "AttestationError", "KBS Client Protocol Version Mismatch: "+req.Version)
		return
	}
	tee, err := attester.ParseTee(req.Tee)
	if err != nil || s.opts.Verifiers[tee] == nil {
		s.fail(w, http.StatusUnauthorized, "AttestationError", fmt.Sprintf("tee %q not supported by this KBS", req.Tee))
		return
	}
	nonce := make([]byte, 32)
	id := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		s.fail(w, http.StatusInternalServerError, "HTTPFailed", err.Error())
		return
	}
	if _, err := rand.Read(id); err != nil {
		s.fail(w, http.StatusInternalServerError, "HTTPFailed", err.Error())
		return
	}
	now := s.now()
	sess := &session{tee: tee, nonce: base64.StdEncoding.EncodeToString(nonce), expires: now.Add(s.opts.SessionTimeout)}
	sid := hex.EncodeToString(id)
	s.mu.Lock()
	if len(s.sessions) >= maxSessions {
		for k, v := range s.sessions {
			if !now.Before(v.expires) {
				delete(s.sessions, k)
			}
		}
	}
	if len(s.sessions) >= maxSessions {
		s.mu.Unlock()
		s.fail(w, http.StatusServiceUnavailable, "HTTPFailed", "too many sessions")
		return
	}
	s.sessions[sid] = sess
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: "kbs-session-id", Value: sid, Expires: sess.expires})
	writeJSON(w, struct {
		Nonce       string `json:"nonce"`
		ExtraParams string `json:"extra-params"`
	}{sess.nonce, ""})
}

// session returns the live session of the request's cookie.
func (s *Server) session(r *http.Request) (string, *session, error) {
	c, err := r.Cookie("kbs-session-id")
	if err != nil {
		return "", nil, errors.New("session cookie not found")
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	sess, ok := s.sessions[c.Value]
	if !ok {
		return "", nil, errors.New("session not found")
	}
	if !now.Before(sess.expires) {
		delete(s.sessions, c.Value)
		return "", nil, errors.New("session expired")
	}
	return c.Value, sess, nil
}

func (s *Server) attest(w http.ResponseWriter, r *http.Request) {
	sid, sess, err := s.session(r)
	if err != nil {
		s.fail(w, http.StatusUnauthorized, "AttestationError", err.Error())
		return
	}
	s.mu.Lock()
	tok := sess.token
	s.mu.Unlock()
	if tok != "" { // already attested: trustee answers the stored token
		writeJSON(w, struct {
			Token string `json:"token"`
		}{tok})
		return
	}
	var att struct {
		InitData *struct {
			Format string `json:"format"`
			Body   string `json:"body"`
		} `json:"init-data"`
		RuntimeData struct {
			Nonce     string          `json:"nonce"`
			TEEPubKey json.RawMessage `json:"tee-pubkey"`
		} `json:"runtime-data"`
		TeeEvidence struct {
			Primary    json.RawMessage `json:"primary_evidence"`
			Additional string          `json:"additional_evidence"`
		} `json:"tee-evidence"`
	}
	if err := json.NewDecoder(r.Body).Decode(&att); err != nil {
		s.fail(w, http.StatusUnauthorized, "SerdeError", "attestation: "+err.Error())
		return
	}
	if att.RuntimeData.Nonce != sess.nonce {
		s.fail(w, http.StatusUnauthorized, "AttestationError", "runtime-data nonce does not match the session's")
		return
	}
	var key teePubKey
	if err := json.Unmarshal(att.RuntimeData.TEEPubKey, &key); err != nil {
		s.fail(w, http.StatusUnauthorized, "AttestationError", "tee-pubkey: "+err.Error())
		return
	}
	if err := key.check(); err != nil {
		s.fail(w, http.StatusUnauthorized, "AttestationError", err.Error())
		return
	}
	claims, err := s.appraise(r.Context(), sess.tee, att.RuntimeData.Nonce, key, att.TeeEvidence.Primary, att.TeeEvidence.Additional, att.InitData)
	if err != nil {
		s.fail(w, http.StatusUnauthorized, "AttestationError", err.Error())
		return
	}
	now := s.now()
	s.mu.Lock()
	life, epoch := s.lifetime, s.epoch
	s.mu.Unlock()
	jti := make([]byte, 8)
	_, _ = rand.Read(jti)
	claims["iat"] = now.Unix()
	claims["exp"] = now.Add(life).Unix()
	claims["jti"] = fmt.Sprintf("%d.%x", epoch, jti)
	tok, err = signJWT(s.tokenKey, claims)
	if err != nil {
		s.fail(w, http.StatusInternalServerError, "TokenIssuerError", err.Error())
		return
	}
	s.mu.Lock()
	if cur, ok := s.sessions[sid]; ok && cur == sess {
		sess.token = tok
	}
	s.stats.Attested++
	s.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: "kbs-session-id", Value: sid, Expires: sess.expires})
	writeJSON(w, struct {
		Token string `json:"token"`
	}{tok})
}

// appraise recomputes the report data, verifies the primary and the
// additional evidence and returns the token claims (without times).
func (s *Server) appraise(ctx context.Context, tee attester.Tee, nonce string, key teePubKey, primary json.RawMessage, additional string, id *struct {
	Format string `json:"format"`
	Body   string `json:"body"`
}) (map[string]any, error) {
	// sha384 for every TEE but se, whatever the client negotiated.
	h := crypto.SHA384
	if tee == attester.TeeSE {
		h = crypto.SHA512
	}
	runtime := map[string]any{"nonce": nonce, "tee-pubkey": key, "additional-evidence": additional}
	rd, err := canonjson.Marshal(runtime)
	if err != nil {
		return nil, err
	}
	digest := hashOf(h, rd)

	var idDigest []byte
	annotated := map[string]any{}
	if id != nil {
		if id.Format != "toml" {
			return nil, fmt.Errorf("init-data format %q, want toml", id.Format)
		}
		doc, err := initdata.Parse([]byte(id.Body))
		if err != nil {
			return nil, fmt.Errorf("init-data: %w", err)
		}
		idDigest = doc.Digest
		annotated["init_data"] = hex.EncodeToString(doc.Digest)
		annotated["init_data_claims"] = doc.Data
	}

	verify := func(t attester.Tee, ev json.RawMessage, d []byte) (map[string]any, error) {
		v := s.opts.Verifiers[t]
		if v == nil {
			return nil, fmt.Errorf("no verifier for %s evidence", t)
		}
		fitted, err := attester.FitReportData(t, d)
		if err != nil {
			return nil, err
		}
		c, err := v(ctx, ev, fitted, idDigest)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t, err)
		}
		return c, nil
	}
	pc, err := verify(tee, primary, digest)
	if err != nil {
		return nil, err
	}
	annotated[string(tee)] = pc
	annotated["report_data"] = hex.EncodeToString(digest)
	annotated["runtime_data_claims"] = runtime
	submods := map[string]any{"cpu0": map[string]any{
		"ear.status":                      "affirming",
		"ear.appraisal-policy-id":         "default",
		"ear.veraison.annotated-evidence": annotated,
	}}
	if additional != "" {
		var devs map[string]json.RawMessage
		if err := json.Unmarshal([]byte(additional), &devs); err != nil {
			return nil, fmt.Errorf("additional_evidence: %w", err)
		}
		dd, err := canonjson.Marshal(map[string]any{"nonce": nonce, "tee-pubkey": key})
		if err != nil {
			return nil, err
		}
		ddigest := hashOf(h, dd)
		i := 0
		for name, ev := range devs {
			t, err := attester.ParseTee(name)
			if err != nil {
				return nil, fmt.Errorf("additional_evidence: %w", err)
			}
			c, err := verify(t, ev, ddigest)
			if err != nil {
				return nil, err
			}
			submods[fmt.Sprintf("device%d", i)] = map[string]any{
				"ear.status":                      "affirming",
				"ear.veraison.annotated-evidence": map[string]any{name: c},
			}
			i++
		}
	}
	return map[string]any{
		"eat_profile":     EATProfile,
		"iss":             Issuer,
		"ear.verifier-id": map[string]any{"developer": "cova", "build": "dev-kbs"},
		"submods":         submods,
	}, nil
}

func hashOf(h crypto.Hash, b []byte) []byte {
	if h == crypto.SHA512 {
		d := sha512.Sum512(b)
		return d[:]
	}
	d := sha512.Sum384(b)
	return d[:]
}

var segmentRE = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9_.-]*$`)

func (s *Server) resource(w http.ResponseWriter, r *http.Request, sub string) {
	segs := strings.Split(sub, "/")
	if len(segs) != 3 {
		s.fail(w, http.StatusNotFound, "InvalidRequestPath", "resource path must be repo/type/tag")
		return
	}
	s.release(w, r, "resource", segs, func(context.Context, PolicyInput) ([]byte, error) {
		return s.lookupResource(path.Join(segs...))
	})
}

// plugin serves one of Options.Plugins.
func (s *Server) plugin(w http.ResponseWriter, r *http.Request, name, sub string) {
	s.release(w, r, name, strings.Split(sub, "/"), s.opts.Plugins[name])
}

// release checks the path, the token and the policy, then answers with
// what get returns, JWE-encrypted to the token's TEE key.
func (s *Server) release(w http.ResponseWriter, r *http.Request, plugin string, segs []string, get PluginFunc) {
	for _, seg := range segs {
		if !segmentRE.MatchString(seg) {
			s.fail(w, http.StatusNotFound, "InvalidRequestPath", "invalid resource path segment")
			return
		}
	}
	tok := ""
	if _, sess, err := s.session(r); err == nil {
		s.mu.Lock()
		tok = sess.token
		s.mu.Unlock()
	}
	if tok == "" {
		if a, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			tok = a
		}
	}
	if tok == "" {
		s.fail(w, http.StatusUnauthorized, "TokenNotFound", "no attested session and no bearer token")
		return
	}
	trusted := append([]*ecdsa.PublicKey{&s.tokenKey.PublicKey}, s.opts.TrustedTokenKeys...)
	claims, signer, err := verifyJWT(tok, trusted, s.now())
	if err != nil {
		s.fail(w, http.StatusUnauthorized, "TokenVerifierError", err.Error())
		return
	}
	if signer == &s.tokenKey.PublicKey {
		s.mu.Lock()
		epoch := s.epoch
		s.mu.Unlock()
		jti, _ := claims["jti"].(string)
		if !strings.HasPrefix(jti, fmt.Sprintf("%d.", epoch)) {
			s.fail(w, http.StatusUnauthorized, "TokenVerifierError", "token revoked")
			return
		}
	}
	in := PolicyInput{Plugin: plugin, Path: segs, Query: r.URL.Query(), Claims: claims}
	if s.opts.Policy != nil {
		if err := s.opts.Policy(r.Context(), in); err != nil {
			s.fail(w, http.StatusUnauthorized, "PolicyDeny", err.Error())
			return
		}
	}
	key, err := tokenTEEKey(claims)
	if err != nil {
		s.fail(w, http.StatusUnauthorized, "TokenVerifierError", err.Error())
		return
	}
	data, err := get(r.Context(), in)
	if err != nil {
		// trustee reports a missing resource as a plugin error: 401.
		s.fail(w, http.StatusUnauthorized, "PluginInternalError", err.Error())
		return
	}
	jwe, err := encryptJWE(key, data)
	if err != nil {
		s.fail(w, http.StatusUnauthorized, "JweError", err.Error())
		return
	}
	s.mu.Lock()
	tamper := s.tamper > 0
	if tamper {
		s.tamper--
	}
	s.mu.Unlock()
	if tamper {
		jwe = tamperJWE(jwe)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(jwe)
}

func (s *Server) lookupResource(p string) ([]byte, error) {
	s.mu.Lock()
	data, ok := s.resources[p]
	s.mu.Unlock()
	if ok {
		return data, nil
	}
	if s.opts.ResourceDir == "" {
		return nil, fmt.Errorf("resource %s not found", p)
	}
	root, err := os.OpenRoot(s.opts.ResourceDir)
	if err != nil {
		return nil, fmt.Errorf("resource directory: %w", err)
	}
	defer root.Close()
	f, err := root.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("resource %s not found", p)
	} else if err != nil {
		return nil, fmt.Errorf("resource %s: %w", p, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return nil, fmt.Errorf("resource %s is not a regular file", p)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxResource+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxResource {
		return nil, fmt.Errorf("resource %s larger than %d bytes", p, maxResource)
	}
	return b, nil
}
