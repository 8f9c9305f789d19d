package azvtpmtest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/azvtpm"
	"github.com/cova-project/cova/attester/azvtpm/azvtpmtest"
	"github.com/cova-project/cova/attester/eventlog"
	swtpmtest "github.com/cova-project/cova/test/swtpm"
)

func TestReportAndQuote(t *testing.T) {
	p := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeSNP, azvtpmtest.SNPReport, azvtpmtest.Options{})
	v := azvtpm.New(p.Open, 0)
	ctx := context.Background()
	for i, rd := range [][]byte{
		func() []byte { d := sha512.Sum384([]byte("runtime data")); return d[:] }(),
		[]byte("short"), // the report-data index is redefined with the new size
		bytes.Repeat([]byte{7}, azvtpm.MaxReportData),
	} {
		raw, err := v.HCLReportWithReportData(ctx, rd)
		if err != nil {
			t.Fatal(err)
		}
		r, err := azvtpm.ParseHCLReport(raw)
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) != azvtpmtest.NVSize || r.Type != azvtpm.ReportTypeSNP || p.Writes != i+1 {
			t.Fatalf("report %d bytes type %v after %d writes", len(raw), r.Type, p.Writes)
		}
		if err := azvtpm.CheckUserData(r, rd); err != nil {
			t.Fatalf("report %d: %v", i, err)
		}
		if err := r.CheckBinding(); err != nil {
			t.Fatal(err)
		}
		q, err := v.Quote(ctx, rd)
		if err != nil {
			t.Fatal(err)
		}
		if err := azvtpmtest.CheckQuote(q.Signature, q.Message, q.PCRs, p.AK, rd); err != nil {
			t.Fatalf("quote %d does not verify: %v", i, err)
		}
		if err := azvtpmtest.CheckQuote(q.Signature, q.Message, q.PCRs, p.AK, []byte("other nonce")); err == nil {
			t.Fatal("quote verified with another nonce")
		}
		q.PCRs[3] = q.PCRs[4][:62] + "ff"
		if err := azvtpmtest.CheckQuote(q.Signature, q.Message, q.PCRs, p.AK, rd); err == nil {
			t.Fatal("quote verified with a changed PCR")
		}
	}
	for _, rd := range [][]byte{nil, make([]byte, azvtpm.MaxReportData+1)} {
		if _, err := v.HCLReportWithReportData(ctx, rd); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("report data of %d bytes: %v", len(rd), err)
		}
	}
	if _, err := v.Quote(ctx, make([]byte, azvtpm.MaxReportData+1)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("long nonce: %v", err)
	}
}

func TestReportDelayHonoursContext(t *testing.T) {
	p := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeSNP, azvtpmtest.SNPReport, azvtpmtest.Options{})
	v := azvtpm.New(p.Open, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := v.HCLReportWithReportData(ctx, []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
}

func TestDetectReportType(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		typ  uint32
		hw   azvtpmtest.HWReport
		opts azvtpmtest.Options
		want azvtpm.ReportType
		err  error
	}{
		{"snp", azvtpmtest.TypeSNP, azvtpmtest.SNPReport, azvtpmtest.Options{NoAK: true}, azvtpm.ReportTypeSNP, nil},
		{"tdx", azvtpmtest.TypeTDX, azvtpmtest.TDReport, azvtpmtest.Options{NoAK: true}, azvtpm.ReportTypeTDX, nil},
		{"no-hcl-index", azvtpmtest.TypeSNP, azvtpmtest.SNPReport, azvtpmtest.Options{NoAK: true, NoHCL: true}, 0, errdefs.ErrNotFound},
		{"garbage", azvtpmtest.TypeSNP, azvtpmtest.SNPReport, azvtpmtest.Options{NoAK: true, RawHCL: []byte("not an HCL report")}, 0, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := azvtpmtest.Start(t, swtpmtest.Start(t), tc.typ, tc.hw, tc.opts)
			got, err := azvtpm.New(p.RawOpen, 0).DetectReportType(ctx)
			if got != tc.want || !errors.Is(err, tc.err) || (tc.err == nil && err != nil) {
				t.Fatalf("DetectReportType = %v, %v; want %v, %v", got, err, tc.want, tc.err)
			}
			tee, err := azvtpm.New(p.RawOpen, 0).DetectTee(ctx)
			wantTee := map[azvtpm.ReportType]attester.Tee{azvtpm.ReportTypeSNP: attester.TeeAzSNPvTPM, azvtpm.ReportTypeTDX: attester.TeeAzTDXvTPM}[tc.want]
			if tee != wantTee || (err == nil) != (tc.err == nil) {
				t.Fatalf("DetectTee = %q, %v", tee, err)
			}
		})
	}
}

func TestNoAK(t *testing.T) {
	p := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeSNP, azvtpmtest.SNPReport, azvtpmtest.Options{NoAK: true})
	if _, err := azvtpm.New(p.Open, 0).Quote(context.Background(), []byte("n")); err == nil {
		t.Fatal("quote without an AK")
	}
}

func TestMeasurementAndInitdata(t *testing.T) {
	p := azvtpmtest.Start(t, swtpmtest.Start(t), azvtpmtest.TypeSNP, azvtpmtest.SNPReport, azvtpmtest.Options{})
	v := azvtpm.New(p.Open, 0)
	ctx := context.Background()
	d := sha256.Sum256([]byte("initdata"))
	var _ attester.InitdataBinder = v
	if err := v.BindInitdata(ctx, d[:]); err != nil {
		t.Fatalf("BindInitdata: %v", err)
	}
	want := sha256.Sum256(append(make([]byte, 32), d[:]...))
	if got, err := v.Measurement(ctx, azvtpm.InitdataPCR); err != nil || !bytes.Equal(got, want[:]) {
		t.Fatalf("PCR8 %x, want %x (%v)", got, want, err)
	}
	if err := v.BindInitdata(ctx, make([]byte, 48)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("sha384 initdata: %v", err)
	}
	if err := v.Extend(ctx, 23, make([]byte, 48)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("48-byte digest: %v", err)
	}
	if err := v.Extend(ctx, 24, make([]byte, 32)); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("PCR 24: %v", err)
	}
	if v.Register(17) != 17 || v.HashAlg().Size() != 32 {
		t.Fatal("register mapping")
	}
	// AAEL on a vTPM PCR replays (PCR 23: swtpm refuses locality-0
	// extends of 17–22, which Azure's vTPM allows).
	const pcr = 23
	initial, err := v.Measurement(ctx, pcr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	l, err := eventlog.Open(ctx, eventlog.Config{Path: filepath.Join(dir, "eventlog"), WALPath: filepath.Join(dir, ".wal"), Measurer: v})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Record(ctx, eventlog.Event{Domain: "cova", Operation: "Test", Content: "x"}, pcr); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(l.Path())
	entries, err := eventlog.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	replayed, err := eventlog.Replay(entries, pcr, eventlog.AlgSHA256, initial)
	if err != nil {
		t.Fatal(err)
	}
	q, err := v.Quote(ctx, []byte("n"))
	if err != nil {
		t.Fatal(err)
	}
	if q.PCRs[pcr] != hexOf(replayed) || bytes.Equal(replayed, initial) {
		t.Fatalf("quoted PCR%d %s, replayed %x", pcr, q.PCRs[pcr], replayed)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}
