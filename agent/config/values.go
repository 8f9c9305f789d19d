package config

import (
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/errdefs"
)

// ParseLogLevel maps a logrus level name, as kata-agent accepts it, to a slog
// level: trace → LevelTrace, debug, info, warn/warning, error, and
// critical/fatal/panic → LevelCritical. Names are matched without regard to
// case (kata-agent is case-sensitive; accepting "DEBUG" is a Cova extension).
func ParseLogLevel(name string) (slog.Level, error) {
	switch strings.ToLower(name) {
	case "trace":
		return LevelTrace, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	case "critical", "fatal", "panic":
		return LevelCritical, nil
	}
	return 0, fmt.Errorf("unknown log level %s (want trace, debug, info, warn, error, critical, fatal or panic): %w",
		quoteValue(name), errdefs.ErrInvalidArgument)
}

// parseBool accepts kata-agent's booleans ("true", "false", or an unsigned
// integer where non-zero is true) and, as a Cova extension, systemd's
// spellings (yes/no, y/n, on/off, t/f, any case). Anything else is an error;
// kata-agent would read it as false.
func parseBool(s string) (bool, error) {
	switch strings.ToLower(s) {
	case "true", "yes", "y", "on", "t":
		return true, nil
	case "false", "no", "n", "off", "f":
		return false, nil
	}
	if n, ok := parseUint(s, math.MaxUint64); ok {
		return n != 0, nil
	}
	return false, fmt.Errorf("not a boolean (want true/false, yes/no, on/off or an integer): %w", errdefs.ErrInvalidArgument)
}

// parseUint parses a decimal unsigned integer with an optional leading '+'
// (as Rust's parse does) and checks it against max.
func parseUint(s string, max uint64) (uint64, bool) {
	s = strings.TrimPrefix(s, "+")
	if s == "" || s[0] < '0' || s[0] > '9' {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > max {
		return 0, false
	}
	return n, true
}

// parseInt parses a decimal signed integer with an optional leading '+'.
func parseInt(s string, min, max int64) (int64, bool) {
	t := strings.TrimPrefix(s, "+")
	if t == "" || (t[0] != '-' && (t[0] < '0' || t[0] > '9')) || (t != s && t[0] == '-') {
		return 0, false
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < min || n > max {
		return 0, false
	}
	return n, true
}

// maxSeconds is the largest whole number of seconds a time.Duration holds.
const maxSeconds = math.MaxInt64 / int64(time.Second)

// parseDuration reads a command-line duration: integer seconds as kata-agent
// does, or (Cova extension) a Go duration string such as "1m30s".
func parseDuration(s string) (time.Duration, error) {
	if n, ok := parseUint(s, uint64(maxSeconds)); ok {
		return time.Duration(n) * time.Second, nil
	}
	if _, ok := parseUint(s, math.MaxUint64); ok {
		return 0, fmt.Errorf("too large (max %d seconds): %w", maxSeconds, errdefs.ErrInvalidArgument)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("not integer seconds or a duration like \"3s\": %w", errdefs.ErrInvalidArgument)
	}
	if d < 0 {
		return 0, fmt.Errorf("negative duration: %w", errdefs.ErrInvalidArgument)
	}
	return d, nil
}

// maxShown bounds how much of a host-supplied value goes into a message.
const maxShown = 96

// quoteValue renders a value for an error message: quoted, with control
// characters escaped and long values cut.
func quoteValue(s string) string {
	if len(s) > maxShown {
		return strconv.Quote(s[:maxShown]) + "..."
	}
	return strconv.Quote(s)
}

// redactUserinfo hides the user:password part of a URL-like string, even one
// that does not parse, before it goes into a message.
func redactUserinfo(s string) string {
	i := strings.Index(s, "://")
	if i < 0 {
		// No "scheme://": the authority cannot be located reliably
		// ("//user:pw@host", "http:/user:pw@host"), so everything up to the
		// last '@' may be credentials.
		if at := strings.LastIndex(s, "@"); at >= 0 {
			return "REDACTED@" + s[at+1:]
		}
		return s
	}
	prefix, rest := s[:i+3], s[i+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	if at := strings.LastIndex(rest[:end], "@"); at >= 0 {
		return prefix + "REDACTED@" + rest[at+1:]
	}
	return s
}

// checkProxyURL requires a proxy URL with a host and an http, https, socks5
// or socks5h scheme. (kata-agent only requires that the URL parses; the
// schemes are those its HTTP client can use.) Messages never show
// credentials.
func checkProxyURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("invalid value %s: not an absolute URL with a host: %w", quoteValue(redactUserinfo(s)), errdefs.ErrInvalidArgument)
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https", "socks5", "socks5h":
	default:
		return fmt.Errorf("invalid value %s: scheme must be http, https, socks5 or socks5h: %w", quoteValue(redactUserinfo(s)), errdefs.ErrInvalidArgument)
	}
	if strings.ContainsAny(s, " \t\r\n\x00") {
		return fmt.Errorf("invalid value %s: contains whitespace or NUL: %w", quoteValue(redactUserinfo(s)), errdefs.ErrInvalidArgument)
	}
	return nil
}

// splitList splits a comma-separated list, dropping empty items and
// surrounding blanks.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
