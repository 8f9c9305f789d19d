package main

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/cova-project/cova/attester/aaservice"
	"github.com/cova-project/cova/cdh/kms"
)

func TestKBCFallback(t *testing.T) {
	const cred = "/run/confidential-containers/cdh/kbs/kms-credential/aws/credential.json"
	tests := []struct {
		name      string
		cmdline   string
		env       string
		initdata  bool
		wantKBS   string
		wantCreds []kms.Credential
		log       string
	}{
		{"nothing", "console=ttyS0", "", false, "", nil, ""},
		{"cmdline", "agent.aa_kbc_params=cc_kbc::http://10.0.2.2:8080", "", false, "http://10.0.2.2:8080", nil, "KBS taken from the kernel command line"},
		{"env wins", "agent.aa_kbc_params=cc_kbc::http://a", "cc_kbc::https://b", false, "https://b", nil, "KBS taken"},
		{"credentials", "agent.aa_kbc_params=cc_kbc::http://a cdh.kbs_resources=kbs:///default/aws/cred::" + cred + ",kbs:///x/y/z::/etc/shadow", "", false, "http://a",
			[]kms.Credential{{ResourceURI: "kbs:///default/aws/cred", Path: cred}}, "item ignored"},
		{"initdata wins", "agent.aa_kbc_params=cc_kbc::http://a", "", true, "", nil, "ignored: initdata configures this guest"},
		{"env with initdata", "", "cc_kbc::http://a", true, "", nil, "ignored: initdata"},
		{"malformed", "agent.aa_kbc_params=cc_kbc::ftp://a", "", false, "", nil, "want http(s)"},
		{"bad env", "agent.aa_kbc_params=cc_kbc::http://a", "cc_kbc", false, "", nil, "AA_KBC_PARAMS"},
		{"offline", "agent.aa_kbc_params=offline_fs_kbc:: cdh.kbs_resources=kbs:///a/b/c::" + cred, "", false, "", nil, "no KBS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			log := slog.New(slog.NewTextHandler(&logs, nil))
			var ac aaservice.Config
			var cs cdhSettings
			kbcFallback(log, tc.cmdline, func(k string) string {
				if k == "AA_KBC_PARAMS" {
					return tc.env
				}
				return ""
			}, tc.initdata, &ac, &cs)
			gotKBS := ""
			if ac.TokenConfigs.KBS != nil {
				gotKBS = ac.TokenConfigs.KBS.URL
			}
			if gotKBS != tc.wantKBS || cs.KBC.URL != tc.wantKBS {
				t.Fatalf("aa.toml KBS %q, cdh.toml [kbc] %q; want %q", gotKBS, cs.KBC.URL, tc.wantKBS)
			}
			if tc.wantKBS != "" && cs.KBC.Name != "cc_kbc" {
				t.Fatalf("[kbc] name %q", cs.KBC.Name)
			}
			if len(cs.Credentials) != len(tc.wantCreds) || (len(tc.wantCreds) > 0 && cs.Credentials[0] != tc.wantCreds[0]) {
				t.Fatalf("credentials %+v, want %+v", cs.Credentials, tc.wantCreds)
			}
			if !strings.Contains(logs.String(), tc.log) || (tc.log == "" && logs.Len() != 0) {
				t.Fatalf("log %q, want %q", logs.String(), tc.log)
			}
		})
	}
}
