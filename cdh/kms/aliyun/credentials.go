package aliyun

import (
	"bytes"
	"context"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode"

	"github.com/containerd/errdefs"
	"golang.org/x/crypto/pkcs12"

	"github.com/cova-project/cova/cdh/kms"
)

// DefaultCredentialDir is where guest-components' aliyun plugin reads its
// credentials (ALIYUN_IN_GUEST_KEY_PATH defaults to
// /run/confidential-containers/cdh/kbs/kms-credential/aliyun). cdh.toml
// [[credentials]] entries put the files there at start, e.g.
//
//	[[credentials]]
//	resource_uri = "kbs:///default/aliyun/clientKey_KAAP.f4c8"
//	path = "/run/confidential-containers/cdh/kbs/kms-credential/aliyun/clientKey_KAAP.f4c8.json"
//
// Cova does not honour ALIYUN_IN_GUEST_KEY_PATH: the agent's environment
// comes from the host-controlled kernel command line.
const DefaultCredentialDir = kms.DefaultKMSCredentialDir + "/aliyun"

// ClientKey is a KMS instance application access point's client key: its
// id (sent as x-kms-acccesskeyid) and RSA private key (signs requests).
type ClientKey struct {
	KeyID string
	Key   *rsa.PrivateKey
}

// ECSRAMRole is the reference's ecsRamRole.json: the RAM role attached to
// the ECS instance and the region of the KMS endpoint.
type ECSRAMRole struct {
	RoleName string `json:"ecs_ram_role_name"`
	RegionID string `json:"region_id"`
}

// STSCredential is a temporary RAM credential (an STS token).
type STSCredential struct {
	AccessKeyID     string
	AccessKeySecret string
	SecurityToken   string
}

// Credentials supplies each mode's private parameters. FileCredentials
// reads the files [[credentials]] writes; tests inject their own.
type Credentials interface {
	// ClientKey returns the client key clientKeyID names (client_key mode).
	ClientKey(ctx context.Context, clientKeyID string) (*ClientKey, error)
	// InstanceCA returns the PEM CA certificate(s) of the KMS instance
	// instanceID names (client_key mode).
	InstanceCA(ctx context.Context, instanceID string) ([]byte, error)
	// ECSRAMRole returns the ECS RAM role configuration (ecs_ram_role mode).
	ECSRAMRole(ctx context.Context) (ECSRAMRole, error)
	// STSToken returns the STS credential in the file a sealed secret's
	// token_path names (sts_token mode).
	STSToken(ctx context.Context, tokenPath string) (STSCredential, error)
}

// FileCredentials reads the reference's credential files on every call,
// so files that FetchCredentials rewrites are picked up without a restart:
//
//   - clientKey_<client_key_id>.json: {"KeyId": "…", "PrivateKeyData":
//     "<base64 PKCS#12>"};
//   - password_<client_key_id>.json: the PKCS#12 password (trailing
//     white space trimmed, as the reference does), or {"ClientKeyPassword":
//     "…"} as in the reference's example files;
//   - PrivateKmsCA_<kms_instance_id>.pem: the instance's CA certificate(s);
//   - ecsRamRole.json: {"ecs_ram_role_name": "…", "region_id": "…"};
//   - an sts_token file "<ak>:<sk>:<token>" at token_path, which must lie
//     under kms.DefaultCredentialRoot (it is read below Root instead).
//
// Files are opened confined to their directory (os.Root): a symlink cannot
// lead out of it.
type FileCredentials struct {
	// Dir holds the aliyun files; DefaultCredentialDir when empty.
	Dir string
	// Root is where kms.DefaultCredentialRoot is found (the agent's
	// credential root); kms.DefaultCredentialRoot when empty.
	Root string
}

var _ Credentials = FileCredentials{}

// idRE matches client key and instance ids, which name files.
var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

func (c FileCredentials) dir() string {
	if c.Dir == "" {
		return DefaultCredentialDir
	}
	return c.Dir
}

// ClientKey reads and decodes clientKey_<id>.json with password_<id>.json.
func (c FileCredentials) ClientKey(_ context.Context, clientKeyID string) (*ClientKey, error) {
	if !idRE.MatchString(clientKeyID) {
		return nil, fmt.Errorf("aliyun: provider_settings.client_key_id %q: want letters, digits, '.', '_' or '-': %w", kms.Clip(clientKeyID), errdefs.ErrInvalidArgument)
	}
	keyName := "clientKey_" + clientKeyID + ".json"
	raw, err := kms.ReadCredentialFile("aliyun", c.dir(), keyName)
	if err != nil {
		return nil, err
	}
	defer clear(raw)
	pw, err := kms.ReadCredentialFile("aliyun", c.dir(), "password_"+clientKeyID+".json")
	if err != nil {
		return nil, err
	}
	defer clear(pw)
	ck, err := ParseClientKey(raw, pw)
	if err != nil {
		return nil, fmt.Errorf("aliyun credential %s: %w", keyName, err)
	}
	return ck, nil
}

// InstanceCA reads PrivateKmsCA_<id>.pem.
func (c FileCredentials) InstanceCA(_ context.Context, instanceID string) ([]byte, error) {
	if !idRE.MatchString(instanceID) {
		return nil, fmt.Errorf("aliyun: provider_settings.kms_instance_id %q: want a KMS instance id: %w", kms.Clip(instanceID), errdefs.ErrInvalidArgument)
	}
	return kms.ReadCredentialFile("aliyun", c.dir(), "PrivateKmsCA_"+instanceID+".pem")
}

// ECSRAMRole reads ecsRamRole.json.
func (c FileCredentials) ECSRAMRole(context.Context) (ECSRAMRole, error) {
	raw, err := kms.ReadCredentialFile("aliyun", c.dir(), "ecsRamRole.json")
	if err != nil {
		return ECSRAMRole{}, err
	}
	return ParseECSRAMRole(raw)
}

// STSToken reads the "<ak>:<sk>:<token>" file at tokenPath.
func (c FileCredentials) STSToken(_ context.Context, tokenPath string) (STSCredential, error) {
	rel, err := kms.ValidateCredentialPath(kms.DefaultCredentialRoot, tokenPath)
	if err != nil {
		return STSCredential{}, fmt.Errorf("aliyun: provider_settings.token_path: %w", err)
	}
	root := c.Root
	if root == "" {
		root = kms.DefaultCredentialRoot
	}
	raw, err := kms.ReadCredentialFile("aliyun", root, rel)
	if err != nil {
		return STSCredential{}, err
	}
	defer clear(raw)
	return ParseSTSToken(raw)
}

// ParseClientKey decodes a clientKey_<id>.json file with the content of
// its password file. The PKCS#12 must hold an RSA key of at least 2048
// bits; decoding is golang.org/x/crypto/pkcs12's (the SHA-1/3DES/RC2
// "legacy" PBEs with a SHA-1 MAC, which is what KMS issues). Errors never
// quote the content.
func ParseClientKey(clientKeyJSON, password []byte) (*ClientKey, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(clientKeyJSON, &obj); err != nil || obj == nil {
		return nil, fmt.Errorf("client key: not a JSON object: %w", errdefs.ErrInvalidArgument)
	}
	var ck struct {
		KeyID          *string `json:"KeyId"`
		PrivateKeyData *string `json:"PrivateKeyData"`
	}
	if err := kms.DecodeMembers("client key", obj, &ck); err != nil {
		return nil, err
	}
	if ck.KeyID == nil || *ck.KeyID == "" {
		return nil, fmt.Errorf("client key: KeyId missing: %w", errdefs.ErrInvalidArgument)
	}
	if !kms.Token(*ck.KeyID) || len(*ck.KeyID) > 256 {
		return nil, fmt.Errorf("client key: KeyId has characters not allowed in a header: %w", errdefs.ErrInvalidArgument)
	}
	if ck.PrivateKeyData == nil || *ck.PrivateKeyData == "" {
		return nil, fmt.Errorf("client key: PrivateKeyData missing: %w", errdefs.ErrInvalidArgument)
	}
	der, err := base64.StdEncoding.DecodeString(*ck.PrivateKeyData)
	if err != nil {
		return nil, fmt.Errorf("client key: PrivateKeyData is not base64: %w", errdefs.ErrInvalidArgument)
	}
	defer clear(der)
	pw := parsePassword(password)
	blocks, err := pkcs12.ToPEM(der, pw)
	if err != nil {
		var ni pkcs12.NotImplementedError
		switch {
		case errors.Is(err, pkcs12.ErrIncorrectPassword):
			return nil, fmt.Errorf("client key: PKCS#12 password does not match (check password_<id>.json): %w", errdefs.ErrPermissionDenied)
		case errors.As(err, &ni):
			return nil, fmt.Errorf("client key: PKCS#12 uses an unsupported algorithm (%s): %w", kms.Clip(string(ni)), errdefs.ErrInvalidArgument)
		}
		return nil, fmt.Errorf("client key: PrivateKeyData is not a PKCS#12 with a key: %w", errdefs.ErrInvalidArgument)
	}
	var key *rsa.PrivateKey
	for _, b := range blocks {
		if b.Type == "CERTIFICATE" {
			continue
		}
		// x/crypto/pkcs12 labels an RSA key "PRIVATE KEY" but encodes it
		// as PKCS#1; accept PKCS#8 too.
		if key == nil {
			if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
				key = k
			} else if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
				key, _ = k.(*rsa.PrivateKey)
			}
		}
		clear(b.Bytes)
	}
	if key == nil {
		return nil, fmt.Errorf("client key: PKCS#12 holds no RSA private key: %w", errdefs.ErrInvalidArgument)
	}
	if key.N.BitLen() < 2048 {
		return nil, fmt.Errorf("client key: RSA key of %d bits, want at least 2048: %w", key.N.BitLen(), errdefs.ErrInvalidArgument)
	}
	return &ClientKey{KeyID: *ck.KeyID, Key: key}, nil
}

// parsePassword returns the PKCS#12 password in a password file: the
// ClientKeyPassword member of a JSON object, else the content with
// trailing white space removed.
func parsePassword(raw []byte) string {
	t := bytes.TrimSpace(raw)
	if len(t) > 0 && t[0] == '{' {
		var v struct {
			Password *string `json:"ClientKeyPassword"`
		}
		if json.Unmarshal(t, &v) == nil && v.Password != nil {
			return *v.Password
		}
	}
	return strings.TrimRightFunc(string(raw), unicode.IsSpace)
}

var roleRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ParseECSRAMRole parses ecsRamRole.json; both members are required.
func ParseECSRAMRole(raw []byte) (ECSRAMRole, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return ECSRAMRole{}, fmt.Errorf("aliyun ecsRamRole.json: not a JSON object: %w", errdefs.ErrInvalidArgument)
	}
	var r struct {
		RoleName *string `json:"ecs_ram_role_name"`
		RegionID *string `json:"region_id"`
	}
	if err := kms.DecodeMembers("aliyun ecsRamRole.json", obj, &r); err != nil {
		return ECSRAMRole{}, err
	}
	if r.RoleName == nil || !roleRE.MatchString(*r.RoleName) {
		return ECSRAMRole{}, fmt.Errorf("aliyun ecsRamRole.json: ecs_ram_role_name missing or not a RAM role name: %w", errdefs.ErrInvalidArgument)
	}
	if r.RegionID == nil || !regionRE.MatchString(*r.RegionID) {
		return ECSRAMRole{}, fmt.Errorf("aliyun ecsRamRole.json: region_id missing or not a region id: %w", errdefs.ErrInvalidArgument)
	}
	return ECSRAMRole{RoleName: *r.RoleName, RegionID: *r.RegionID}, nil
}

// ParseSTSToken parses an "<ak>:<sk>:<token>" file (trailing white space
// ignored).
func ParseSTSToken(raw []byte) (STSCredential, error) {
	parts := strings.Split(strings.TrimRightFunc(string(raw), unicode.IsSpace), ":")
	if len(parts) != 3 {
		return STSCredential{}, fmt.Errorf("aliyun sts token: want <access key id>:<access key secret>:<security token>: %w", errdefs.ErrInvalidArgument)
	}
	c := STSCredential{AccessKeyID: parts[0], AccessKeySecret: parts[1], SecurityToken: parts[2]}
	if err := c.validate(); err != nil {
		return STSCredential{}, fmt.Errorf("aliyun sts token: %w", err)
	}
	return c, nil
}

func (c STSCredential) validate() error {
	if c.AccessKeyID == "" || c.AccessKeySecret == "" || c.SecurityToken == "" {
		return fmt.Errorf("access key id, secret and security token must be non-empty: %w", errdefs.ErrInvalidArgument)
	}
	if !kms.Token(c.AccessKeyID) || !kms.Token(c.AccessKeySecret) || !kms.Token(c.SecurityToken) ||
		len(c.AccessKeyID) > 256 || len(c.SecurityToken) > 16<<10 {
		return fmt.Errorf("access key id, secret or security token has characters not allowed: %w", errdefs.ErrInvalidArgument)
	}
	return nil
}
