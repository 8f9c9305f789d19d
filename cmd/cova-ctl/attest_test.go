package main

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/aaservice"
	"github.com/cova-project/cova/attester/sample"
)

// parseAttest parses args for c the way parseCommandLine parses a
// command's flags.
func parseAttest(t *testing.T, c command, args ...string) (*options, error) {
	t.Helper()
	o := &options{}
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.flags(fs, o)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	o.args = fs.Args()
	return o, c.check(o)
}

// startAA serves the AA on a temp socket and returns its address.
func startAA(t *testing.T, primary attester.Attester, additional ...attester.Attester) string {
	t.Helper()
	s, err := aaservice.New(aaservice.Options{Primary: primary, Additional: additional})
	if err != nil {
		t.Fatal(err)
	}
	addr := "unix://" + filepath.Join(t.TempDir(), "aa.sock")
	l, err := aaservice.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.ServeListener(ctx, l) }()
	t.Cleanup(func() { cancel(); <-done })
	return addr
}

func runAttest(t *testing.T, c command, args ...string) (string, error) {
	t.Helper()
	o, err := parseAttest(t, c, args...)
	if err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	var out bytes.Buffer
	a := &app{stdout: &out, stderr: io.Discard, timeout: 10 * time.Second}
	err = c.run(context.Background(), a, o)
	return out.String(), err
}

func TestEvidenceCommand(t *testing.T) {
	addr := startAA(t, sample.New(), sample.NewDevice())
	d := sha512.Sum384([]byte("nonce"))
	file := filepath.Join(t.TempDir(), "rd")
	if err := os.WriteFile(file, d[:], 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		rd   []byte
	}{
		{"hex", []string{"--runtime-data", hex.EncodeToString(d[:])}, d[:]},
		{"0x hex", []string{"--runtime-data", "0x0102"}, []byte{1, 2}},
		{"file", []string{"--runtime-data", "@" + file}, d[:]},
		{"none", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runAttest(t, evidenceCommand, append(tc.args, "--aa", addr)...)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := sample.Verify([]byte(strings.TrimSuffix(out, "\n")), tc.rd); err != nil {
				t.Fatalf("evidence %q: %v", out, err)
			}
		})
	}
	t.Run("additional", func(t *testing.T) {
		out, err := runAttest(t, evidenceCommand, "--additional", "--runtime-data", "abcd", "--aa", addr)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatal(err)
		}
		if _, err := sample.Verify(m["sampledevice"], []byte{0xab, 0xcd}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("missing file", func(t *testing.T) {
		_, err := runAttest(t, evidenceCommand, "--runtime-data", "@"+filepath.Join(t.TempDir(), "nope"), "--aa", addr)
		if err == nil || !strings.Contains(err.Error(), "--runtime-data") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("no AA", func(t *testing.T) {
		_, err := runAttest(t, evidenceCommand, "--aa", "unix://"+filepath.Join(t.TempDir(), "none.sock"))
		if err == nil || !strings.Contains(err.Error(), "Attestation Agent") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("rpc error", func(t *testing.T) {
		_, err := runAttest(t, evidenceCommand, "--aa", startAA(t, tooLong{}))
		if err == nil || !strings.HasPrefix(err.Error(), "GetEvidence: InvalidArgument: ") {
			t.Fatalf("err = %v", err)
		}
	})
}

// tooLong is an attester that rejects every report data.
type tooLong struct{}

func (tooLong) Tee() attester.Tee { return attester.TeeTDX }
func (tooLong) Evidence(context.Context, []byte) ([]byte, error) {
	return nil, fmt.Errorf("report data: too long: %w", errdefs.ErrInvalidArgument)
}

func TestEvidenceFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--runtime-data", "xyz"}, "not hex"},
		{[]string{"--runtime-data", "abc"}, "not hex"},
		{[]string{"--runtime-data", "@"}, "missing file name"},
		{[]string{"extra"}, "unexpected arguments"},
	} {
		_, err := parseAttest(t, evidenceCommand, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.args, err, tc.want)
		}
	}
	o, err := parseAttest(t, teeCommand)
	if err != nil || aaFlagsOf(o).addr != aaservice.DefaultAddr {
		t.Errorf("default --aa = %q (%v), want %q", aaFlagsOf(o).addr, err, aaservice.DefaultAddr)
	}
	if !dialsAA(&evidenceCommand) || !dialsAA(&teeCommand) || dialsAA(&command{name: "check"}) || dialsAA(nil) {
		t.Error("dialsAA")
	}
	for _, c := range []command{evidenceCommand, teeCommand} {
		if c.run == nil || c.help == "" || !strings.HasPrefix(c.usage(), "cova-ctl "+c.name) {
			t.Errorf("%s: usage %q", c.name, c.usage())
		}
	}
}

func TestTeeCommand(t *testing.T) {
	out, err := runAttest(t, teeCommand, "--aa", startAA(t, sample.New(), sample.NewDevice()))
	if err != nil || out != "sample\nsampledevice\n" {
		t.Fatalf("%q %v", out, err)
	}
	out, err = runAttest(t, teeCommand, "--aa", startAA(t, sample.New()))
	if err != nil || out != "sample\n" {
		t.Fatalf("%q %v", out, err)
	}
}
