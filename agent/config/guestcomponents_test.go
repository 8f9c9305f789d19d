package config

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

func TestParseGuestComponents(t *testing.T) {
	tests := []struct {
		name    string
		cmdline string
		want    GuestComponents
		wantErr error
		text    string
	}{
		{"none", "console=ttyS0 agent.log=debug", GuestComponents{}, nil, ""},
		{"cc_kbc", "quiet agent.aa_kbc_params=cc_kbc::http://10.0.2.2:8080 panic=1", GuestComponents{KBC: KBCCC, KBSURL: "http://10.0.2.2:8080"}, nil, ""},
		{"https with path", `agent.aa_kbc_params="cc_kbc::https://kbs.example:443/kbs"`, GuestComponents{KBC: KBCCC, KBSURL: "https://kbs.example:443/kbs"}, nil, ""},
		{"offline", "agent.aa_kbc_params=offline_fs_kbc::", GuestComponents{KBC: KBCOfflineFS}, nil, ""},
		{"last wins", "agent.aa_kbc_params=cc_kbc::http://a agent.aa_kbc_params=cc_kbc::http://b", GuestComponents{KBC: KBCCC, KBSURL: "http://b"}, nil, ""},
		{"credentials", "cdh.kbs_resources=kbs:///default/aws/cred::/run/confidential-containers/cdh/kbs/kms-credential/aws/credential.json,kbs:///a/b/c::/run/x",
			GuestComponents{Credentials: []KBSResource{{"kbs:///default/aws/cred", "/run/confidential-containers/cdh/kbs/kms-credential/aws/credential.json"}, {"kbs:///a/b/c", "/run/x"}}}, nil, ""},
		{"empty", "agent.aa_kbc_params= agent.aa_kbc_params", GuestComponents{}, nil, ""},
		{"empty after a value", "agent.aa_kbc_params=cc_kbc::http://a agent.aa_kbc_params=", GuestComponents{}, nil, ""},
		{"no separator", "agent.aa_kbc_params=cc_kbc", GuestComponents{}, errdefs.ErrInvalidArgument, "want <kbc>::<url>"},
		{"other kbc", "agent.aa_kbc_params=sample_kbc::http://x", GuestComponents{}, errdefs.ErrNotImplemented, `kbc "sample_kbc"`},
		{"ftp", "agent.aa_kbc_params=cc_kbc::ftp://kbs", GuestComponents{}, errdefs.ErrInvalidArgument, "want http(s)"},
		{"no host", "agent.aa_kbc_params=cc_kbc::http://", GuestComponents{}, errdefs.ErrInvalidArgument, "want http(s)"},
		{"credentials in URL", "agent.aa_kbc_params=cc_kbc::https://user:hunter2@kbs", GuestComponents{}, errdefs.ErrInvalidArgument, "REDACTED"},
		{"query", "agent.aa_kbc_params=cc_kbc::https://kbs/?x=1", GuestComponents{}, errdefs.ErrInvalidArgument, "without credentials, query"},
		{"offline with URL", "agent.aa_kbc_params=offline_fs_kbc::http://x", GuestComponents{}, errdefs.ErrInvalidArgument, "takes no URL"},
		{"resource not kbs", "cdh.kbs_resources=file:///etc/x::/run/x", GuestComponents{}, errdefs.ErrInvalidArgument, "want a kbs:// URI"},
		{"relative path", "cdh.kbs_resources=kbs:///a/b/c::run/x", GuestComponents{}, errdefs.ErrInvalidArgument, "clean absolute path"},
		{"dotdot path", "cdh.kbs_resources=kbs:///a/b/c::/run/../etc/x", GuestComponents{}, errdefs.ErrInvalidArgument, "clean absolute path"},
		{"item without path", "cdh.kbs_resources=kbs:///a/b/c", GuestComponents{}, errdefs.ErrInvalidArgument, "item 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseGuestComponents(tc.cmdline)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.text) {
					t.Fatalf("error %v, want %v with %q", err, tc.wantErr, tc.text)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("error leaks the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestAAKBCParamsIsKnown: agent.aa_kbc_params is read by the guest
// components, so the agent's own parser neither warns about it nor says a
// config file drops it.
func TestAAKBCParamsIsKnown(t *testing.T) {
	for _, cmdline := range []string{"agent.aa_kbc_params=cc_kbc::http://kbs", "agent.aa_kbc_params=", "agent.aa_kbc_params", "agent.aa_kbc_params=cc_kbc::http://kbs agent.config_file=/etc/agent.toml"} {
		_, warns, err := ParseCmdline(cmdline)
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range warns {
			if w.Key == KeyAAKBCParams {
				t.Fatalf("%q: warning %+v", cmdline, w)
			}
		}
	}
}
