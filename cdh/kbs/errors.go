package kbs

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/containerd/errdefs"
)

// Steps of the protocol, as errors and logs name them.
const (
	StepAuth     = "auth"
	StepEvidence = "evidence"
	StepAttest   = "attest"
	StepResource = "resource"
)

// Error is a failed exchange with a KBS. It names the KBS, the step and the
// HTTP status, and unwraps to its cause and to an errdefs class:
// 401/403 → ErrPermissionDenied, 404 → ErrNotFound, 400 → ErrInvalidArgument,
// 5xx and transport failures → ErrUnavailable.
type Error struct {
	// KBS is the base URL of the KBS.
	KBS string
	// Step is StepAuth, StepEvidence, StepAttest or StepResource.
	Step string
	// Resource is the resource URI of a StepResource error.
	Resource string
	// Status is the HTTP status; 0 when no answer was received.
	Status int
	// Type is the KBS error variant (ErrorInformation.type without its
	// prefix), when the KBS sent one.
	Type string
	// Detail is the KBS's explanation, sanitized and truncated.
	Detail string
	// Attempts is how many times the step (or the whole RCAR) was tried.
	Attempts int
	// Err is the cause.
	Err error

	// class is the errdefs class when there is no HTTP status.
	class error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "kbs %s: %s", e.KBS, e.Step)
	if e.Resource != "" {
		fmt.Fprintf(&b, " %s", e.Resource)
	}
	if e.Status != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.Status)
		if e.Type != "" {
			fmt.Fprintf(&b, " %s", e.Type)
		}
		if e.Detail != "" {
			fmt.Fprintf(&b, ": %s", e.Detail)
		}
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " (after %d attempts)", e.Attempts)
	}
	return b.String()
}

// Unwrap returns the cause and the errdefs class.
func (e *Error) Unwrap() []error {
	errs := []error{}
	if e.Err != nil {
		errs = append(errs, e.Err)
	}
	if c := statusClass(e.Status); c != nil {
		errs = append(errs, c)
	} else if e.class != nil {
		errs = append(errs, e.class)
	}
	return errs
}

func statusClass(status int) error {
	switch {
	case status == 0:
		return nil
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return errdefs.ErrPermissionDenied
	case status == http.StatusNotFound:
		return errdefs.ErrNotFound
	case status == http.StatusBadRequest:
		return errdefs.ErrInvalidArgument
	case status >= 500 || status == http.StatusTooManyRequests || status == http.StatusRequestTimeout:
		return errdefs.ErrUnavailable
	}
	return errdefs.ErrUnknown
}

// maxDetail bounds the KBS error text carried into errors and logs.
const maxDetail = 512

// sanitize makes text from the network safe for one log line.
func sanitize(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return ' '
	}, s)
	if len(s) > maxDetail {
		cut := maxDetail
		for cut > 0 && !utf8.RuneStart(s[cut]) { // never split a character
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

// errorVariant returns the KBS error variant of an ErrorInformation type.
func errorVariant(typ string) string {
	return sanitize(strings.TrimPrefix(typ, ErrorTypePrefix))
}

// retryable reports whether a failed step may succeed when repeated:
// transport failures, 5xx, 408 and 429. A cancelled or expired context is
// never retried.
func retryable(err error) bool {
	var ke *Error
	if !errors.As(err, &ke) {
		return false
	}
	if errors.Is(err, errdefs.ErrInvalidArgument) || errors.Is(err, errdefs.ErrNotImplemented) {
		return false
	}
	if ke.Step == StepEvidence {
		return true // a busy TPM or quote service may answer next time
	}
	if ke.Status == 0 {
		return ke.class == errdefs.ErrUnavailable
	}
	return statusClass(ke.Status) == errdefs.ErrUnavailable
}
