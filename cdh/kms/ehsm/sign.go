package ehsm

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"sort"
	"strings"
)

// param is one member of a request's signed parameters: a string value, or
// (payload) a nested list of members.
type param struct {
	key    string
	value  string
	nested []param
}

// signingString builds eHSM's canonical request string: the members with
// non-empty values sorted by name in ASCII order and joined as
// name=value with "&"; a nested object (payload) is itself canonicalized and
// becomes the value of its member. For a Decrypt request that is
//
//	appid=<appid>&nonce=<nonce>&payload=ciphertext=<b64>&keyid=<id>&timestamp=<ms>
//
// eHSM-KMS (params_sort_str) skips empty values; the reference client
// never sends any, and neither does Client.
func signingString(ps []param) string {
	sorted := append([]param(nil), ps...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].key < sorted[j].key })
	var b strings.Builder
	for _, p := range sorted {
		v := p.value
		if p.nested != nil {
			v = signingString(p.nested)
		}
		if v == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.key)
		b.WriteByte('=')
		b.WriteString(v)
	}
	return b.String()
}

// sign returns base64(HMAC-SHA256(apiKey, s)), the request's "sign"
// member.
func sign(apiKey, s string) string {
	m := hmac.New(sha256.New, []byte(apiKey))
	m.Write([]byte(s))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}
