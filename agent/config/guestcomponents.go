package config

import (
	"fmt"
	"net/url"
	"path"
	"strings"

	"github.com/containerd/errdefs"
)

// Kernel command line keys that guest-components read themselves (not
// kata-agent's configuration): the fallbacks for a guest without aa.toml
// or cdh.toml.
const (
	KeyAAKBCParams     = "agent.aa_kbc_params" // "<kbc>::<url>", e.g. cc_kbc::https://kbs:8080
	KeyCDHKBSResources = "cdh.kbs_resources"   // "<kbs uri>::<path>[,…]": [[credentials]]
	// EnvAAKBCParams is the environment form the Attestation Agent reads
	// before the command line.
	EnvAAKBCParams = "AA_KBC_PARAMS"
)

// KBCs the fallback knows.
const (
	KBCCC        = "cc_kbc"         // a KBS (protocol 0.4.0)
	KBCOfflineFS = "offline_fs_kbc" // no KBS
)

// GuestComponents are the command-line fallbacks of guest-components'
// configuration. Empty fields were not given.
type GuestComponents struct {
	KBC    string // agent.aa_kbc_params' kbc name
	KBSURL string // and its URL ("" for offline_fs_kbc)
	// Credentials are cdh.kbs_resources' items, in order.
	Credentials []KBSResource
}

// KBSResource is one cdh.kbs_resources item: the resource to fetch and the
// file to write it to.
type KBSResource struct{ URI, Path string }

// ParseAAKBCParams parses "<kbc>::<url>" as guest-components does: the kbc
// name, then the URL after the first "::". cc_kbc needs an http(s) URL
// with a host and nothing else (no credentials, query or fragment);
// offline_fs_kbc takes none. Other names wrap errdefs.ErrNotImplemented.
func ParseAAKBCParams(v string) (kbc, kbsURL string, err error) {
	name, u, ok := strings.Cut(v, "::")
	if !ok {
		return "", "", fmt.Errorf("%s: want <kbc>::<url>: %w", quoteValue(redactUserinfo(v)), errdefs.ErrInvalidArgument)
	}
	switch name {
	case KBCOfflineFS:
		if u != "" {
			return "", "", fmt.Errorf("%s takes no URL: %w", KBCOfflineFS, errdefs.ErrInvalidArgument)
		}
		return name, "", nil
	case KBCCC:
	default:
		return "", "", fmt.Errorf("kbc %s: only %s and %s are supported: %w", quoteValue(name), KBCCC, KBCOfflineFS, errdefs.ErrNotImplemented)
	}
	p, err := url.Parse(u)
	if err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" || p.User != nil ||
		p.RawQuery != "" || p.Fragment != "" || p.Opaque != "" || strings.ContainsAny(u, " \t\n") {
		return "", "", fmt.Errorf("%s URL %s: want http(s)://host[:port][/path] without credentials, query or fragment: %w", KBCCC, quoteValue(redactUserinfo(u)), errdefs.ErrInvalidArgument)
	}
	return name, u, nil
}

// parseKBSResources parses cdh.kbs_resources: comma-separated
// "<kbs:// uri>::<absolute path>" items. The path's place (under the CDH's
// credential root) is the caller's to check.
func parseKBSResources(v string) ([]KBSResource, error) {
	var out []KBSResource
	for i, item := range strings.Split(v, ",") {
		uri, p, ok := strings.Cut(item, "::")
		switch {
		case !ok:
			return nil, fmt.Errorf("item %d %s: want <kbs uri>::<path>: %w", i, quoteValue(item), errdefs.ErrInvalidArgument)
		case !strings.HasPrefix(uri, "kbs://"):
			return nil, fmt.Errorf("item %d: resource %s: want a kbs:// URI: %w", i, quoteValue(uri), errdefs.ErrInvalidArgument)
		case !path.IsAbs(p) || path.Clean(p) != p:
			return nil, fmt.Errorf("item %d: path %s: want a clean absolute path: %w", i, quoteValue(p), errdefs.ErrInvalidArgument)
		}
		out = append(out, KBSResource{URI: uri, Path: p})
	}
	return out, nil
}

// ParseGuestComponents reads the guest-components keys from a kernel
// command line (quotes as the kernel handles them; the last of a repeated
// key wins). A malformed value is an error naming the key.
func ParseGuestComponents(cmdline string) (GuestComponents, error) {
	var gc GuestComponents
	for _, prm := range splitCmdline(cmdline) {
		switch prm.key {
		case KeyAAKBCParams:
			if prm.val == "" { // what a runtime without a KBS may pass
				gc.KBC, gc.KBSURL = "", ""
				continue
			}
			kbc, u, err := ParseAAKBCParams(prm.val)
			if err != nil {
				return GuestComponents{}, fmt.Errorf("%s: %w", KeyAAKBCParams, err)
			}
			gc.KBC, gc.KBSURL = kbc, u
		case KeyCDHKBSResources:
			creds, err := parseKBSResources(prm.val)
			if err != nil {
				return GuestComponents{}, fmt.Errorf("%s: %w", KeyCDHKBSResources, err)
			}
			gc.Credentials = creds
		}
	}
	return gc, nil
}
