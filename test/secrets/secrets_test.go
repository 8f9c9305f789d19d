// Package secrets checks that no secret reaches a log or an error: every
// secret-bearing flow runs at slog debug level with marker secrets (container
// env values, sealed secrets in env and in secret volumes, CopyFile contents,
// KBS resources and tokens, the TEE key, the KEK and the layer key of an
// encrypted image, a registry password and registry token), and the test
// fails if a marker, in any common encoding, appears in the captured log or
// in an error returned to the caller.
package secrets

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/opencontainers/runc/libcontainer"
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init()
		return
	}
	os.Exit(m.Run())
}

// secrets collects marker secrets and the errors callers saw.
type secrets struct {
	mu      sync.Mutex
	markers map[string]string // encoded form -> name
	errs    []string
}

func newSecrets() *secrets { return &secrets{markers: map[string]string{}} }

// add registers a secret under name, in the forms a log line could carry
// it: as is (when printable), base64 (std, raw, url) and hex.
func (s *secrets) add(name string, v []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(v) < 8 {
		panic("marker " + name + " is too short to search for")
	}
	if printable(v) {
		s.markers[string(v)] = name
	}
	for _, enc := range []string{
		base64.StdEncoding.EncodeToString(v), base64.RawStdEncoding.EncodeToString(v),
		base64.URLEncoding.EncodeToString(v), base64.RawURLEncoding.EncodeToString(v),
		hex.EncodeToString(v),
	} {
		s.markers[enc] = name + " (encoded)"
	}
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// sawErr records an error returned to a caller (the host, the boot
// sequence); nil is ignored.
func (s *secrets) sawErr(err error) {
	if err == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.errs = append(s.errs, err.Error())
}

// check fails t for every marker in the log or in a recorded error. With
// wantDebug the log must hold debug lines (the flows' debug paths ran).
func (s *secrets) check(t *testing.T, log string, wantDebug bool) {
	t.Helper()
	if log == "" {
		t.Fatal("nothing was logged: the flows did not log into the captured handler")
	}
	if wantDebug && !strings.Contains(log, `"level":"DEBUG"`) {
		t.Fatal("the captured log has no debug lines: the flows did not run at debug level")
	}
	for _, f := range s.find(log) {
		t.Error(f)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t.Logf("%d log bytes and %d caller errors checked for %d marker forms", len(log), len(s.errs), len(s.markers))
}

// find lists every marker found in the log or in a recorded error.
func (s *secrets) find(log string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.markers) == 0 {
		return []string{"no markers registered"}
	}
	var found []string
	for m, name := range s.markers {
		if i := strings.Index(log, m); i >= 0 {
			found = append(found, fmt.Sprintf("%s is in the log: …%s…", name, clip(log, i)))
		}
		for _, e := range s.errs {
			if strings.Contains(e, m) {
				found = append(found, fmt.Sprintf("%s is in an error returned to the caller: %s", name, e))
			}
		}
	}
	sort.Strings(found)
	return found
}

// TestFindCatchesEncodings: the search finds a marker as is, base64 or hex
// encoded, in a log or an error, and nothing in clean text.
func TestFindCatchesEncodings(t *testing.T) {
	key := []byte{0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03, 0xfe}
	for _, tc := range []struct {
		name, log, err string
		want           int
	}{
		{"clean", `{"level":"DEBUG","msg":"ok"}`, "step failed", 0},
		{"as is in the log", `{"msg":"x","env":"PASSWORD-MARKER-1234"}`, "", 1},
		{"base64 of bytes in the log", `{"key":"` + base64.StdEncoding.EncodeToString(key) + `"}`, "", 1},
		{"hex in an error", "", "bad key " + hex.EncodeToString(key), 1},
		{"url base64 in an error", "", "token " + base64.RawURLEncoding.EncodeToString([]byte("PASSWORD-MARKER-1234")), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSecrets()
			s.add("password", []byte("PASSWORD-MARKER-1234"))
			s.add("key", key)
			if tc.err != "" {
				s.sawErr(errors.New(tc.err))
			}
			if got := s.find(tc.log); len(got) != tc.want {
				t.Fatalf("found %q, want %d finding(s)", got, tc.want)
			}
		})
	}
}

// clip shows the log line around offset i.
func clip(log string, i int) string {
	start := strings.LastIndexByte(log[:i], '\n') + 1
	end := strings.IndexByte(log[i:], '\n')
	if end < 0 {
		end = len(log) - i
	}
	line := log[start : i+end]
	if len(line) > 400 {
		line = line[:400]
	}
	return line
}

// sha256Hex is how containers prove they saw a secret without printing it.
func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
