// Package eventlog implements the attestation agent event log (AAEL): the
// runtime-measurement log CoCo's attestation agent keeps at
// /run/attestation-agent/eventlog and trustee replays against a measurement
// register.
//
// Each event is a text "<domain> <operation> <content>" wrapped in a TCG
// tagged event (tag "AAEL") inside a TCG2 crypto-agile event log entry for
// the target CC measurement register, with one digest in the TEE's event log
// hash (SHA-384 on TDX, SHA-256 on vTPM platforms). Recording an event
// extends the register with that digest and appends the entry, with a
// write-ahead file making the pair crash-safe. The package also parses logs,
// replays them to the expected register value, and assembles the
// cc_eventlog blob (CCEL + AAEL) that TDX evidence carries.
package eventlog

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/containerd/errdefs"
)

// Event is one AAEL event.
type Event struct {
	// Domain names who defines the operation (e.g.
	// "github.com/confidential-containers"). Non-empty, no whitespace.
	Domain string
	// Operation names what happened (e.g. "PullImage"). Non-empty, no
	// whitespace.
	Operation string
	// Content describes it; any UTF-8 text without a newline (often JSON).
	Content string
}

// NewEvent validates and returns an event.
func NewEvent(domain, operation, content string) (Event, error) {
	ev := Event{Domain: domain, Operation: operation, Content: content}
	return ev, ev.Validate()
}

// Validate checks the AAEL rules: domain and operation are non-empty UTF-8
// without whitespace (the text form is split on the first two spaces), and
// content is UTF-8 without a newline. Errors wrap errdefs.ErrInvalidArgument.
func (e Event) Validate() error {
	for _, f := range []struct{ name, v string }{{"domain", e.Domain}, {"operation", e.Operation}} {
		switch {
		case f.v == "":
			return fmt.Errorf("event %s: empty: %w", f.name, errdefs.ErrInvalidArgument)
		case !utf8.ValidString(f.v):
			return fmt.Errorf("event %s: not UTF-8: %w", f.name, errdefs.ErrInvalidArgument)
		case strings.IndexFunc(f.v, unicode.IsSpace) >= 0:
			return fmt.Errorf("event %s %q: contains whitespace: %w", f.name, f.v, errdefs.ErrInvalidArgument)
		}
	}
	if !utf8.ValidString(e.Content) {
		return fmt.Errorf("event content: not UTF-8: %w", errdefs.ErrInvalidArgument)
	}
	if strings.ContainsRune(e.Content, '\n') {
		return fmt.Errorf("event content: contains a newline: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}

// String returns the event text "<domain> <operation> <content>" (no
// trailing newline): the bytes that are hashed.
func (e Event) String() string { return e.Domain + " " + e.Operation + " " + e.Content }

// ParseEventText splits an event text at its first two spaces.
func ParseEventText(s string) (Event, error) {
	d, rest, ok := strings.Cut(s, " ")
	if !ok {
		return Event{}, fmt.Errorf("event text: no space: %w", errdefs.ErrInvalidArgument)
	}
	o, c, ok := strings.Cut(rest, " ")
	if !ok {
		return Event{}, fmt.Errorf("event text: no second space: %w", errdefs.ErrInvalidArgument)
	}
	ev := Event{Domain: d, Operation: o, Content: c}
	return ev, ev.Validate()
}
