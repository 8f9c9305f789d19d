package aliyun

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestInstanceStringToSignGolden checks the signed request against a
// string to sign written out by hand from the documented rules.
func TestInstanceStringToSignGolden(t *testing.T) {
	good, _ := testKeys(t)
	body := []byte("abc")
	req, err := http.NewRequest(http.MethodPost, "https://kst-a.cryptoservice.kms.aliyuncs.com/", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 27, 20, 0, 0, 0, time.FixedZone("CET", 3600)) // 19:00 GMT
	if err := signInstanceRequest(req, body, &ClientKey{KeyID: "KAAP.test", Key: good}, "Decrypt", now); err != nil {
		t.Fatal(err)
	}
	const want = "POST\n" +
		"BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD\n" + // SHA-256("abc")
		"application/x-protobuf\n" +
		"Fri, 27 Nov 2026 19:00:00 GMT\n" +
		"x-kms-acccesskeyid:KAAP.test\n" +
		"x-kms-apiname:Decrypt\n" +
		"x-kms-apiversion:dkms-gcs-0.2\n" +
		"x-kms-signaturemethod:RSA_PKCS1_SHA_256\n" +
		"/"
	if got := instanceStringToSign(req.Method, req.Header); got != want {
		t.Fatalf("string to sign:\n%q\nwant\n%q", got, want)
	}
	for k, v := range map[string]string{
		"Accept": "application/x-protobuf", "Content-Type": "application/x-protobuf",
		"Date": "Fri, 27 Nov 2026 19:00:00 GMT", "X-Kms-Acccesskeyid": "KAAP.test",
		"Content-Sha256": "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD",
	} {
		if req.Header.Get(k) != v {
			t.Errorf("header %s = %q, want %q", k, req.Header.Get(k), v)
		}
	}
	auth, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	sig, err := base64.StdEncoding.DecodeString(auth)
	digest := sha256.Sum256([]byte(want))
	if !ok || err != nil || rsa.VerifyPKCS1v15(&good.PublicKey, crypto.SHA256, digest[:], sig) != nil {
		t.Fatalf("Authorization %q does not verify over the golden string", req.Header.Get("Authorization"))
	}

	// Values are trimmed, names lower-cased and sorted; other headers are
	// not signed.
	h := http.Header{}
	h.Set("Content-Sha256", "X")
	h.Set("Content-Type", "T")
	h.Set("Date", "D")
	h.Set("X-Kms-B", "  two ")
	h.Set("x-kms-a", "one")
	h.Set("X-Other", "no")
	if got := instanceStringToSign("POST", h); got != "POST\nX\nT\nD\nx-kms-a:one\nx-kms-b:two\n/" {
		t.Fatalf("got %q", got)
	}
}

// TestRPCSignatureGolden checks the OpenAPI signature rules against a
// canonical query and string to sign built by hand.
func TestRPCSignatureGolden(t *testing.T) {
	for in, want := range map[string]string{
		"abcXYZ019-_.~": "abcXYZ019-_.~",
		"a b":           "a%20b",
		"*+/=&":         "%2A%2B%2F%3D%26",
		"é":             "%C3%A9",
	} {
		if got := percentEncode(in); got != want {
			t.Errorf("percentEncode(%q) = %q, want %q", in, got, want)
		}
	}
	params := map[string]string{
		"Action": "GetSecretValue", "SecretName": "app/db key", "Version": "2016-01-20", "AccessKeyId": "STS.ak",
		"Timestamp": "2026-11-27T19:00:00Z",
	}
	const query = "AccessKeyId=STS.ak&Action=GetSecretValue&SecretName=app%2Fdb%20key&Timestamp=2026-11-27T19%3A00%3A00Z&Version=2016-01-20"
	if got := canonicalQuery(params); got != query {
		t.Fatalf("canonical query:\n%q\nwant\n%q", got, query)
	}
	const sts = "POST&%2F&AccessKeyId%3DSTS.ak%26Action%3DGetSecretValue%26SecretName%3Dapp%252Fdb%2520key%26Timestamp%3D2026-11-27T19%253A00%253A00Z%26Version%3D2016-01-20"
	if got := rpcStringToSign("POST", query); got != sts {
		t.Fatalf("string to sign:\n%q\nwant\n%q", got, sts)
	}
	// Alibaba Cloud's published signature example (ECS DescribeRegions,
	// AccessKeySecret "testsecret").
	example := canonicalQuery(map[string]string{
		"AccessKeyId": "testid", "Action": "DescribeRegions", "Format": "XML", "SignatureMethod": "HMAC-SHA1",
		"SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf", "SignatureVersion": "1.0",
		"Timestamp": "2016-02-23T12:46:24Z", "Version": "2014-05-26",
	})
	if got := rpcSignature("GET", example, "testsecret"); got != "OLeaidS1JvxuMvnyHOwuJ+uX5qY=" {
		t.Fatalf("signature %q", got)
	}
}
