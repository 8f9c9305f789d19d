// Package canonjson implements the JSON Canonicalization Scheme (JCS,
// RFC 8785): the byte-exact JSON form that CoCo's KBS protocol hashes into
// report data (guest-components and trustee both use serde_json_canonicalizer).
//
// Canonicalize parses JSON text under the I-JSON rules RFC 8785 builds on
// (UTF-8 only, no duplicate member names, no lone surrogates, numbers that fit
// an IEEE-754 double) and writes it back with members sorted by their UTF-16
// code units, no insignificant whitespace, the minimal string escaping of
// ECMAScript's JSON.stringify and ECMAScript's shortest round-trip number
// form. Marshal does the same for a Go value via encoding/json.
//
// Input is bounded: nesting deeper than MaxDepth is an error, so hostile input
// cannot exhaust the stack.
package canonjson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/containerd/errdefs"
)

// MaxDepth bounds the nesting of arrays and objects.
const MaxDepth = 512

// Marshal encodes v with encoding/json and canonicalizes the result.
func Marshal(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("canonjson: marshal: %w", err)
	}
	return Canonicalize(b)
}

// Canonicalize returns the RFC 8785 canonical form of the JSON text in.
// Errors wrap errdefs.ErrInvalidArgument.
func Canonicalize(in []byte) ([]byte, error) {
	if !utf8.Valid(in) {
		return nil, invalid(0, "not UTF-8")
	}
	p := parser{in: in}
	p.skipSpace()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.pos != len(in) {
		return nil, invalid(p.pos, "data after the JSON value")
	}
	var out bytes.Buffer
	out.Grow(len(in))
	if err := write(&out, v); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func invalid(pos int, msg string) error {
	return fmt.Errorf("canonjson: offset %d: %s: %w", pos, msg, errdefs.ErrInvalidArgument)
}

// Parsed values: nil (null), bool, float64, string, []any, object.
type member struct {
	key   string
	utf16 []uint16
	value any
}

type object []member

type parser struct {
	in  []byte
	pos int
}

func (p *parser) skipSpace() {
	for p.pos < len(p.in) {
		switch p.in[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) literal(lit string, v any) (any, error) {
	if !bytes.HasPrefix(p.in[p.pos:], []byte(lit)) {
		return nil, invalid(p.pos, "invalid literal")
	}
	p.pos += len(lit)
	return v, nil
}

func (p *parser) value(depth int) (any, error) {
	if p.pos >= len(p.in) {
		return nil, invalid(p.pos, "unexpected end of input")
	}
	switch c := p.in[p.pos]; {
	case c == '{':
		return p.object(depth + 1)
	case c == '[':
		return p.array(depth + 1)
	case c == '"':
		return p.string()
	case c == 't':
		return p.literal("true", true)
	case c == 'f':
		return p.literal("false", false)
	case c == 'n':
		return p.literal("null", nil)
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	default:
		return nil, invalid(p.pos, fmt.Sprintf("unexpected character %q", c))
	}
}

func (p *parser) object(depth int) (any, error) {
	if depth > MaxDepth {
		return nil, invalid(p.pos, "nesting too deep")
	}
	p.pos++ // '{'
	obj := object{}
	seen := map[string]struct{}{}
	p.skipSpace()
	if p.pos < len(p.in) && p.in[p.pos] == '}' {
		p.pos++
		return obj, nil
	}
	for {
		p.skipSpace()
		if p.pos >= len(p.in) || p.in[p.pos] != '"' {
			return nil, invalid(p.pos, "expected a member name")
		}
		at := p.pos
		k, err := p.string()
		if err != nil {
			return nil, err
		}
		if _, dup := seen[k]; dup {
			return nil, invalid(at, fmt.Sprintf("duplicate member name %q", k))
		}
		seen[k] = struct{}{}
		p.skipSpace()
		if p.pos >= len(p.in) || p.in[p.pos] != ':' {
			return nil, invalid(p.pos, "expected ':'")
		}
		p.pos++
		p.skipSpace()
		v, err := p.value(depth)
		if err != nil {
			return nil, err
		}
		obj = append(obj, member{key: k, utf16: utf16.Encode([]rune(k)), value: v})
		p.skipSpace()
		if p.pos >= len(p.in) {
			return nil, invalid(p.pos, "unterminated object")
		}
		switch p.in[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			return obj, nil
		default:
			return nil, invalid(p.pos, "expected ',' or '}'")
		}
	}
}

func (p *parser) array(depth int) (any, error) {
	if depth > MaxDepth {
		return nil, invalid(p.pos, "nesting too deep")
	}
	p.pos++ // '['
	arr := []any{}
	p.skipSpace()
	if p.pos < len(p.in) && p.in[p.pos] == ']' {
		p.pos++
		return arr, nil
	}
	for {
		p.skipSpace()
		v, err := p.value(depth)
		if err != nil {
			return nil, err
		}
		arr = append(arr, v)
		p.skipSpace()
		if p.pos >= len(p.in) {
			return nil, invalid(p.pos, "unterminated array")
		}
		switch p.in[p.pos] {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return arr, nil
		default:
			return nil, invalid(p.pos, "expected ',' or ']'")
		}
	}
}

func hexVal(c byte) (rune, bool) {
	switch {
	case c >= '0' && c <= '9':
		return rune(c - '0'), true
	case c >= 'a' && c <= 'f':
		return rune(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return rune(c-'A') + 10, true
	}
	return 0, false
}

func (p *parser) hex4() (rune, error) {
	if p.pos+4 > len(p.in) {
		return 0, invalid(p.pos, "short \\u escape")
	}
	var r rune
	for i := range 4 {
		v, ok := hexVal(p.in[p.pos+i])
		if !ok {
			return 0, invalid(p.pos, "bad \\u escape")
		}
		r = r<<4 | v
	}
	p.pos += 4
	return r, nil
}

func (p *parser) string() (string, error) {
	start := p.pos
	p.pos++ // '"'
	var sb []byte
	for {
		if p.pos >= len(p.in) {
			return "", invalid(start, "unterminated string")
		}
		c := p.in[p.pos]
		switch {
		case c == '"':
			p.pos++
			return string(sb), nil
		case c < 0x20:
			return "", invalid(p.pos, "control character in string")
		case c != '\\':
			// UTF-8 was validated up front; copy the byte.
			sb = append(sb, c)
			p.pos++
			continue
		}
		// escape
		p.pos++
		if p.pos >= len(p.in) {
			return "", invalid(p.pos, "unterminated escape")
		}
		e := p.in[p.pos]
		p.pos++
		switch e {
		case '"', '\\', '/':
			sb = append(sb, e)
		case 'b':
			sb = append(sb, '\b')
		case 'f':
			sb = append(sb, '\f')
		case 'n':
			sb = append(sb, '\n')
		case 'r':
			sb = append(sb, '\r')
		case 't':
			sb = append(sb, '\t')
		case 'u':
			r, err := p.hex4()
			if err != nil {
				return "", err
			}
			switch {
			case utf16.IsSurrogate(r) && r < 0xdc00:
				// high surrogate: a low one must follow
				if p.pos+6 > len(p.in) || p.in[p.pos] != '\\' || p.in[p.pos+1] != 'u' {
					return "", invalid(p.pos, "lone surrogate")
				}
				p.pos += 2
				r2, err := p.hex4()
				if err != nil {
					return "", err
				}
				full := utf16.DecodeRune(r, r2)
				if full == utf8.RuneError {
					return "", invalid(p.pos, "lone surrogate")
				}
				r = full
			case utf16.IsSurrogate(r):
				return "", invalid(p.pos, "lone surrogate")
			}
			sb = utf8.AppendRune(sb, r)
		default:
			return "", invalid(p.pos-1, fmt.Sprintf("bad escape \\%c", e))
		}
	}
}

func (p *parser) number() (any, error) {
	start := p.pos
	i := p.pos
	if i < len(p.in) && p.in[i] == '-' {
		i++
	}
	digits := func() int {
		n := 0
		for i < len(p.in) && p.in[i] >= '0' && p.in[i] <= '9' {
			i++
			n++
		}
		return n
	}
	if i < len(p.in) && p.in[i] == '0' {
		i++
	} else if digits() == 0 {
		return nil, invalid(start, "bad number")
	}
	if i < len(p.in) && p.in[i] == '.' {
		i++
		if digits() == 0 {
			return nil, invalid(start, "bad number")
		}
	}
	if i < len(p.in) && (p.in[i] == 'e' || p.in[i] == 'E') {
		i++
		if i < len(p.in) && (p.in[i] == '+' || p.in[i] == '-') {
			i++
		}
		if digits() == 0 {
			return nil, invalid(start, "bad number")
		}
	}
	p.pos = i
	f, err := strconv.ParseFloat(string(p.in[start:i]), 64)
	if err != nil || math.IsInf(f, 0) {
		return nil, invalid(start, "number out of IEEE-754 double range")
	}
	return f, nil
}

func write(out *bytes.Buffer, v any) error {
	switch v := v.(type) {
	case nil:
		out.WriteString("null")
	case bool:
		if v {
			out.WriteString("true")
		} else {
			out.WriteString("false")
		}
	case float64:
		s, err := FormatNumber(v)
		if err != nil {
			return err
		}
		out.WriteString(s)
	case string:
		writeString(out, v)
	case []any:
		out.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				out.WriteByte(',')
			}
			if err := write(out, e); err != nil {
				return err
			}
		}
		out.WriteByte(']')
	case object:
		slices.SortFunc(v, func(a, b member) int { return slices.Compare(a.utf16, b.utf16) })
		out.WriteByte('{')
		for i, m := range v {
			if i > 0 {
				out.WriteByte(',')
			}
			writeString(out, m.key)
			out.WriteByte(':')
			if err := write(out, m.value); err != nil {
				return err
			}
		}
		out.WriteByte('}')
	default:
		return fmt.Errorf("canonjson: unexpected value %T: %w", v, errdefs.ErrInternal)
	}
	return nil
}

// writeString writes s as JSON.stringify does: only '"', '\\' and the
// controls below U+0020 are escaped (\b \t \n \f \r in short form, the rest
// as \u00xx with lowercase hex); everything else is literal UTF-8.
func writeString(out *bytes.Buffer, s string) {
	const hex = "0123456789abcdef"
	out.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			out.WriteString(`\"`)
		case c == '\\':
			out.WriteString(`\\`)
		case c >= 0x20:
			out.WriteByte(c)
		case c == '\b':
			out.WriteString(`\b`)
		case c == '\t':
			out.WriteString(`\t`)
		case c == '\n':
			out.WriteString(`\n`)
		case c == '\f':
			out.WriteString(`\f`)
		case c == '\r':
			out.WriteString(`\r`)
		default:
			out.WriteString(`\u00`)
			out.WriteByte(hex[c>>4])
			out.WriteByte(hex[c&0xf])
		}
	}
	out.WriteByte('"')
}

// FormatNumber formats f as ECMAScript's Number::toString does (RFC 8785
// §3.2.2.3): the shortest digit string that round-trips, in plain notation
// for magnitudes in [1e-6, 1e21) and exponent notation ("1e+21", "1.5e-7")
// otherwise; -0 is "0". NaN and infinities are errors.
func FormatNumber(f float64) (string, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "", fmt.Errorf("canonjson: %v is not a JSON number: %w", f, errdefs.ErrInvalidArgument)
	}
	if f == 0 {
		return "0", nil
	}
	var b []byte
	if f < 0 {
		b = append(b, '-')
		f = -f
	}
	// Shortest round-trip digits d1…dk and exponent: f = 0.d1…dk × 10^n.
	e := strconv.FormatFloat(f, 'e', -1, 64) // "d.ddde±xx"
	mant, exp, _ := bytes.Cut([]byte(e), []byte{'e'})
	digits := bytes.Replace(mant, []byte{'.'}, nil, 1)
	x, _ := strconv.Atoi(string(exp))
	k, n := len(digits), x+1
	switch {
	case k <= n && n <= 21:
		b = append(b, digits...)
		b = append(b, bytes.Repeat([]byte{'0'}, n-k)...)
	case 0 < n && n <= 21:
		b = append(b, digits[:n]...)
		b = append(b, '.')
		b = append(b, digits[n:]...)
	case -6 < n && n <= 0:
		b = append(b, '0', '.')
		b = append(b, bytes.Repeat([]byte{'0'}, -n)...)
		b = append(b, digits...)
	default:
		b = append(b, digits[0])
		if k > 1 {
			b = append(b, '.')
			b = append(b, digits[1:]...)
		}
		b = append(b, 'e')
		if n-1 >= 0 {
			b = append(b, '+')
		}
		b = strconv.AppendInt(b, int64(n-1), 10)
	}
	return string(b), nil
}
