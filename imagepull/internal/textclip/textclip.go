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
