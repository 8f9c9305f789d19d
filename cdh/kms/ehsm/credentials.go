package ehsm

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/cdh/kms"
)

// DefaultCredentialDir is where guest-components' ehsm plugin reads its
// credentials (EHSM_IN_GUEST_KEY_PATH defaults to
// /run/confidential-containers/cdh/kbs/kms-credential/ehsm). The file of
// application <app_id> is credential_<app_id>.json; a cdh.toml entry
//
//	[[credentials]]
//	resource_uri = "kbs:///default/ehsm/credential_<app_id>"
//	path = "/run/confidential-containers/cdh/kbs/kms-credential/ehsm/credential_<app_id>.json"
//
// puts it there at start. Cova does not honour EHSM_IN_GUEST_KEY_PATH: the
// agent's environment comes from the host-controlled kernel command line.
const DefaultCredentialDir = kms.DefaultKMSCredentialDir + "/ehsm"

// maxAPIKey bounds an API key (eHSM enrolls 32-character keys).
const maxAPIKey = 1024

// Credential is an eHSM application's access pair, the reference's
// credential file {"AppId": "…", "ApiKey": "…"} (eHSM's Enroll result).
type Credential struct {
	AppID  string `json:"AppId"`
	APIKey string `json:"ApiKey"`
}

// CredentialsProvider supplies the credential of an application.
type CredentialsProvider interface {
	Credential(ctx context.Context, appID string) (Credential, error)
}

// StaticCredentials maps app ids to API keys (tests, or keys configured by
// other means).
type StaticCredentials map[string]string

// Credential returns the API key of appID.
func (s StaticCredentials) Credential(_ context.Context, appID string) (Credential, error) {
	k, ok := s[appID]
	if !ok {
		return Credential{}, fmt.Errorf("ehsm credential for app_id %q: %w", kms.Clip(appID), errdefs.ErrNotFound)
	}
	return Credential{AppID: appID, APIKey: k}, nil
}

// CredentialDir reads credential_<app_id>.json (the reference's name;
// credential.<app_id>.json, the name its documentation gives, is tried when
// that is absent) from a directory on every call, so a file that
// kms.FetchCredentials rewrites is picked up without a restart. The app id
// was validated as a file-name-safe identifier and the file is opened
// through an os.Root confined to the directory.
type CredentialDir string

// Credential reads and parses appID's credential file.
func (d CredentialDir) Credential(_ context.Context, appID string) (Credential, error) {
	if !validAppID(appID) {
		return Credential{}, fmt.Errorf("ehsm credential: app_id %q: want letters, digits, '-' or '_': %w", kms.Clip(appID), errdefs.ErrInvalidArgument)
	}
	dir := string(d)
	name := credentialFile(appID)
	raw, err := kms.ReadCredentialFile("ehsm", dir, name)
	if errdefs.IsFailedPrecondition(err) {
		// The reference's documentation spells it with a dot.
		name = "credential." + appID + ".json"
		if raw, err = kms.ReadCredentialFile("ehsm", dir, name); errdefs.IsFailedPrecondition(err) {
			name = credentialFile(appID)
			err = fmt.Errorf("ehsm credential file %s is missing (deliver it with cdh.toml [[credentials]]): %w", dir+"/"+name, errdefs.ErrFailedPrecondition)
		}
	}
	if err != nil {
		return Credential{}, err
	}
	defer clear(raw)
	c, err := ParseCredential(raw)
	if err != nil {
		return Credential{}, fmt.Errorf("ehsm credential file %s in %s: %w", name, dir, err)
	}
	// The reference reads AppId but signs with provider_settings.app_id;
	// so does Cova.
	c.AppID = appID
	return c, nil
}

func credentialFile(appID string) string { return "credential_" + appID + ".json" }

// ParseCredential parses a credential file. AppId and ApiKey are required
// strings, as in the reference; errors never quote the content.
func ParseCredential(raw []byte) (Credential, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return Credential{}, fmt.Errorf("ehsm credential: not a JSON object: %w", errdefs.ErrInvalidArgument)
	}
	var c struct {
		AppID  *string `json:"AppId"`
		APIKey *string `json:"ApiKey"`
	}
	if err := kms.DecodeMembers("ehsm credential", obj, &c); err != nil {
		return Credential{}, err
	}
	if c.AppID == nil {
		return Credential{}, fmt.Errorf("ehsm credential: AppId missing: %w", errdefs.ErrInvalidArgument)
	}
	if c.APIKey == nil || *c.APIKey == "" {
		return Credential{}, fmt.Errorf("ehsm credential: ApiKey missing: %w", errdefs.ErrInvalidArgument)
	}
	if len(*c.APIKey) > maxAPIKey {
		return Credential{}, fmt.Errorf("ehsm credential: ApiKey longer than %d bytes: %w", maxAPIKey, errdefs.ErrInvalidArgument)
	}
	return Credential{AppID: *c.AppID, APIKey: *c.APIKey}, nil
}
