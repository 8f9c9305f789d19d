// Package aaservice serves the Attestation Agent API
// (attestation_agent.AttestationAgentService over ttrpc) from Cova's
// attesters, in process: the API CoCo's guest components (the Confidential
// Data Hub, api-server-rest, kbs_protocol's AA evidence provider) call for
// evidence, tokens and runtime measurements, on
// unix:///run/confidential-containers/attestation-agent/attestation-agent.sock.
//
// Semantics follow guest-components' attestation-agent:
//   - GetEvidence hands RuntimeData to the primary attester as the report
//     data, unhashed; the attester fits it to its hardware field.
//   - GetAdditionalEvidence returns {"<tee>": <evidence>, …} from every
//     additional (device) attester, or empty bytes when there are none.
//   - ExtendRuntimeMeasurement records the event in the AAEL and extends the
//     register; NOT_ENABLED when no event log is configured, NOT_SUPPORTED
//     when the primary attester has no extendable register.
//   - BindInitData is declared but answered NOT_FOUND, as upstream: initdata
//     is bound once at boot (see attester/initdata).
//
// Errors carry errdefs classes inside the package and become gRPC status
// codes only in the server's interceptor.
package aaservice

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/containerd/errdefs"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/eventlog"
	"github.com/cova-project/cova/protocols/aa"
)

// ServiceName is the ttrpc service name.
const ServiceName = "attestation_agent.AttestationAgentService"

// Token types GetToken accepts (guest-components' TokenType).
const (
	TokenKBS    = "kbs"
	TokenCoCoAS = "coco_as"
)

// ErrTokenUnavailable is GetToken's answer while no TokenGetter is wired.
var ErrTokenUnavailable = fmt.Errorf("GetToken needs the KBS client (issue 5): %w", errdefs.ErrNotImplemented)

// TokenGetter obtains attestation tokens (the KBS client).
type TokenGetter interface {
	// Token returns a token of tokenType (TokenKBS or TokenCoCoAS) in the
	// AA's wire form: for kbs the JSON {"token","tee_keypair"}, for coco_as
	// the raw JWT.
	Token(ctx context.Context, tokenType string) ([]byte, error)
}

// Options configures a Service.
type Options struct {
	// Primary is the primary attester (required).
	Primary attester.Attester
	// Additional are the additional (device) attesters, at most one per TEE
	// name.
	Additional []attester.Attester
	// EventLog records runtime measurements. It must have been opened with
	// Primary's RuntimeMeasurer. Without it ExtendRuntimeMeasurement answers
	// NOT_ENABLED, or NOT_SUPPORTED when EventLogEnabled is set (the
	// configuration asks for an event log the TEE cannot keep).
	EventLog *eventlog.Log
	// EventLogEnabled is aa.toml's eventlog_config.enable_eventlog; implied
	// by a non-nil EventLog.
	EventLogEnabled bool
	// InitPCR is the PCR events go to when the request names none
	// (aa.toml eventlog_config.init_pcr); eventlog.DefaultPCR when 0.
	InitPCR uint64
	// Tokens serves GetToken; nil answers ErrTokenUnavailable.
	Tokens TokenGetter
	// Logger receives one line per failed call; discarded when nil.
	Logger *slog.Logger
}

// Service implements aa.AttestationAgentServiceService.
type Service struct {
	primary    attester.Attester
	additional []attester.Attester
	elog       *eventlog.Log
	elogOn     bool
	initPCR    uint64
	tokens     TokenGetter
	log        *slog.Logger
}

var _ aa.AttestationAgentServiceService = (*Service)(nil)

// New returns a Service.
func New(o Options) (*Service, error) {
	if o.Primary == nil {
		return nil, fmt.Errorf("aaservice: Primary: nil: %w", errdefs.ErrInvalidArgument)
	}
	seen := map[attester.Tee]bool{}
	for i, a := range o.Additional {
		if a == nil {
			return nil, fmt.Errorf("aaservice: Additional[%d]: nil: %w", i, errdefs.ErrInvalidArgument)
		}
		if seen[a.Tee()] {
			return nil, fmt.Errorf("aaservice: Additional[%d]: second %s attester: %w", i, a.Tee(), errdefs.ErrInvalidArgument)
		}
		seen[a.Tee()] = true
	}
	s := &Service{
		primary:    o.Primary,
		additional: append([]attester.Attester(nil), o.Additional...),
		elog:       o.EventLog,
		elogOn:     o.EventLog != nil || o.EventLogEnabled,
		initPCR:    o.InitPCR,
		tokens:     o.Tokens,
		log:        o.Logger,
	}
	if s.initPCR == 0 {
		s.initPCR = eventlog.DefaultPCR
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s, nil
}

// GetEvidence returns the primary attester's evidence with RuntimeData as
// the report data.
func (s *Service) GetEvidence(ctx context.Context, req *aa.GetEvidenceRequest) (*aa.GetEvidenceResponse, error) {
	ev, err := s.primary.Evidence(ctx, req.GetRuntimeData())
	if err != nil {
		return nil, fmt.Errorf("%s evidence: %w", s.primary.Tee(), err)
	}
	return &aa.GetEvidenceResponse{Evidence: ev}, nil
}

// GetAdditionalEvidence returns the JSON object {"<tee>": <evidence>} of
// every additional attester's evidence with RuntimeData as the report data
// (keys sorted), or empty bytes when there are no additional attesters.
func (s *Service) GetAdditionalEvidence(ctx context.Context, req *aa.GetAdditionalEvidenceRequest) (*aa.GetEvidenceResponse, error) {
	if len(s.additional) == 0 {
		return &aa.GetEvidenceResponse{}, nil
	}
	m := make(map[attester.Tee]json.RawMessage, len(s.additional))
	for _, a := range s.additional {
		ev, err := a.Evidence(ctx, req.GetRuntimeData())
		if err != nil {
			return nil, fmt.Errorf("%s evidence: %w", a.Tee(), err)
		}
		if !json.Valid(ev) {
			return nil, fmt.Errorf("%s evidence: not JSON: %w", a.Tee(), errdefs.ErrInternal)
		}
		m[a.Tee()] = ev
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("additional evidence: %w", err)
	}
	return &aa.GetEvidenceResponse{Evidence: bytes.TrimSuffix(buf.Bytes(), []byte("\n"))}, nil
}

// GetToken returns a token from the TokenGetter.
func (s *Service) GetToken(ctx context.Context, req *aa.GetTokenRequest) (*aa.GetTokenResponse, error) {
	tt := req.GetTokenType()
	if tt != TokenKBS && tt != TokenCoCoAS {
		return nil, fmt.Errorf("TokenType %q: unsupported token type (want %q or %q): %w", tt, TokenKBS, TokenCoCoAS, errdefs.ErrInvalidArgument)
	}
	if s.tokens == nil {
		return nil, ErrTokenUnavailable
	}
	tok, err := s.tokens.Token(ctx, tt)
	if err != nil {
		return nil, fmt.Errorf("%s token: %w", tt, err)
	}
	return &aa.GetTokenResponse{Token: tok}, nil
}

// ExtendRuntimeMeasurement records "<Domain> <Operation> <Content>" in the
// event log and extends the register RegisterIndex (default InitPCR) maps
// to.
func (s *Service) ExtendRuntimeMeasurement(ctx context.Context, req *aa.ExtendRuntimeMeasurementRequest) (*aa.ExtendRuntimeMeasurementResponse, error) {
	if !s.elogOn {
		return &aa.ExtendRuntimeMeasurementResponse{Result: aa.RuntimeMeasurementResult_NOT_ENABLED}, nil
	}
	if _, ok := s.primary.(attester.RuntimeMeasurer); !ok || s.elog == nil {
		return &aa.ExtendRuntimeMeasurementResponse{Result: aa.RuntimeMeasurementResult_NOT_SUPPORTED}, nil
	}
	ev, err := eventlog.NewEvent(req.GetDomain(), req.GetOperation(), req.GetContent())
	if err != nil {
		return nil, err
	}
	pcr := s.initPCR
	if req.RegisterIndex != nil {
		pcr = req.GetRegisterIndex()
	}
	if err := s.elog.Record(ctx, ev, pcr); err != nil {
		if errors.Is(err, attester.ErrNotSupported) {
			// e.g. TDX without the kernel's RTMR sysfs.
			s.log.Warn("runtime measurement not supported", "tee", s.primary.Tee().String(), "err", err)
			return &aa.ExtendRuntimeMeasurementResponse{Result: aa.RuntimeMeasurementResult_NOT_SUPPORTED}, nil
		}
		return nil, err
	}
	s.log.Debug("runtime measurement recorded", "domain", ev.Domain, "operation", ev.Operation, "pcr", pcr)
	return &aa.ExtendRuntimeMeasurementResponse{Result: aa.RuntimeMeasurementResult_OK}, nil
}

// BindInitData is not served, as upstream: initdata is bound once at boot.
// The answer is the NOT_FOUND status a ttrpc server gives for a method it
// does not implement.
func (s *Service) BindInitData(context.Context, *aa.BindInitDataRequest) (*aa.BindInitDataResponse, error) {
	return nil, status.Error(codes.NotFound, "/"+ServiceName+"/BindInitData is not supported")
}

// GetTeeType returns the primary attester's TEE name.
// EventLog returns the AAEL event log as recorded so far (a Cova extension
// behind the REST API's GET /aa/aael: the log is evidence, not a secret).
// It is ErrNotFound when the event log is off or the TEE has no registers.
func (s *Service) EventLog() ([]byte, error) {
	if s.elog == nil {
		return nil, fmt.Errorf("the event log is not enabled: %w", errdefs.ErrNotFound)
	}
	return s.elog.Snapshot()
}

func (s *Service) GetTeeType(context.Context, *aa.GetTeeTypeRequest) (*aa.GetTeeTypeResponse, error) {
	return &aa.GetTeeTypeResponse{Tee: s.primary.Tee().String()}, nil
}

// GetAdditionalTees returns the additional attesters' TEE names.
func (s *Service) GetAdditionalTees(context.Context, *aa.GetAdditionalTeesRequest) (*aa.GetAdditionalTeesResponse, error) {
	out := make([]string, 0, len(s.additional))
	for _, a := range s.additional {
		out = append(out, a.Tee().String())
	}
	return &aa.GetAdditionalTeesResponse{AdditionalTees: out}, nil
}
