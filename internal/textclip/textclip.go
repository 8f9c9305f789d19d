// Package textclip shortens untrusted strings (names, digests, headers from a
// registry or an image) before they are quoted in error messages or logs.
package textclip

// Clip returns s cut to max bytes, with "…" appended when it was longer.
func Clip(s string, max int) string {
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

// Printable bounds s to max bytes (adding "…" when cut) and replaces every
// byte outside printable ASCII with '?', so that a string from a peer (a
// registry, a KBS, a sealed secret) cannot forge log lines or smuggle
// terminal escapes into an error message. Never use it on secret values:
// they do not belong in messages at all.
func Printable(s string, max int) string {
	long := len(s) > max
	if long {
		s = s[:max]
	}
	b := []byte(s)
	for i, c := range b {
		if c < ' ' || c > '~' {
			b[i] = '?'
		}
	}
	if long {
		return string(b) + "…"
	}
	return string(b)
}
