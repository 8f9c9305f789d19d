package aws

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
)

// DefaultCredentialPath is where guest-components' aws plugin reads its
// credential (AWS_IN_GUEST_KEY_PATH defaults to
// /run/confidential-containers/cdh/kbs/kms-credential/aws, file
// credential.json). A cdh.toml entry
//
//	[[credentials]]
//	resource_uri = "kbs:///default/aws/credential"
//	path = "/run/confidential-containers/cdh/kbs/kms-credential/aws/credential.json"
//
// puts it there at start. Cova does not honour AWS_IN_GUEST_KEY_PATH: the
// agent's environment comes from the host-controlled kernel command line.
const DefaultCredentialPath = kms.DefaultKMSCredentialDir + "/aws/credential.json"

// Credentials are static IAM credentials; the JSON form is the reference's
// credential.json: {"access_key_id","secret_access_key","session_token"}
// (session_token optional or null).
type Credentials struct {
	AccessKeyID     string `json:"access_key_id"`
	SecretAccessKey string `json:"secret_access_key"`
	SessionToken    string `json:"session_token,omitempty"`
}

// CredentialsProvider supplies credentials for each request.
type CredentialsProvider interface {
	Credentials(ctx context.Context) (Credentials, error)
}

// StaticCredentials always returns itself.
type StaticCredentials Credentials

// Credentials returns c.
func (c StaticCredentials) Credentials(context.Context) (Credentials, error) {
	return Credentials(c), nil
}

// FileCredentials reads a credential.json file on every call, so a file
// that FetchCredentials rewrites is picked up without a restart.
type FileCredentials string

// Credentials reads and parses the file.
func (p FileCredentials) Credentials(context.Context) (Credentials, error) {
	path := string(p)
	raw, err := kms.ReadCredentialFile("aws", filepath.Dir(path), filepath.Base(path))
	if err != nil {
		return Credentials{}, err
	}
	defer clear(raw)
	return ParseCredentials(raw)
}

// ParseCredentials parses credential.json. access_key_id and
// secret_access_key are required; errors never quote the content.
func ParseCredentials(raw []byte) (Credentials, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return Credentials{}, fmt.Errorf("aws credential: not a JSON object: %w", errdefs.ErrInvalidArgument)
	}
	var c struct {
		AccessKeyID     *string `json:"access_key_id"`
		SecretAccessKey *string `json:"secret_access_key"`
		SessionToken    *string `json:"session_token"`
	}
	if err := kms.DecodeMembers("aws credential", obj, &c); err != nil {
		return Credentials{}, err
	}
	if c.AccessKeyID == nil || *c.AccessKeyID == "" {
		return Credentials{}, fmt.Errorf("aws credential: access_key_id missing: %w", errdefs.ErrInvalidArgument)
	}
	if c.SecretAccessKey == nil || *c.SecretAccessKey == "" {
		return Credentials{}, fmt.Errorf("aws credential: secret_access_key missing: %w", errdefs.ErrInvalidArgument)
	}
	out := Credentials{AccessKeyID: *c.AccessKeyID, SecretAccessKey: *c.SecretAccessKey}
	if c.SessionToken != nil {
		out.SessionToken = *c.SessionToken
	}
	if !keyIDSafe(out.AccessKeyID) || !kms.Token(out.SessionToken) {
		return Credentials{}, fmt.Errorf("aws credential: access_key_id or session_token has characters not allowed in a header: %w", errdefs.ErrInvalidArgument)
	}
	return out, nil
}

// keyIDSafe reports whether an access key id is alphanumeric (it is
// written into the Authorization header's Credential=<id>/<scope>).
func keyIDSafe(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}
