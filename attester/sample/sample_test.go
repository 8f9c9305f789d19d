package sample

import (
	"bytes"
	"context"
	"crypto/sha512"
	"errors"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
)

func TestEvidenceByteExact(t *testing.T) {
	digest := sha512.Sum384([]byte("cova"))
	for _, tc := range []struct {
		name string
		a    *Attester
		tee  attester.Tee
		rd   []byte
		want string
	}{
		{"empty", New(), attester.TeeSample, nil, `{"svn":"1","report_data":""}`},
		{"bytes-needing-padding", New(), attester.TeeSample, []byte{0xfb, 0xff}, `{"svn":"1","report_data":"+/8="}`},
		{"sha384-openssl-vector", New(), attester.TeeSample, digest[:], `{"svn":"1","report_data":"` + "WzCYzsUMSAJ2bscSDItC/AKiguEUJgtV94CSZBQtShzBe5TcleV+8mx4y579pj9U" + `"}`},
		{"device", NewDevice(), attester.TeeSampleDevice, []byte("abc"), `{"svn":"2","report_data":"YWJj"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.a.Tee() != tc.tee {
				t.Fatalf("Tee() = %q, want %q", tc.a.Tee(), tc.tee)
			}
			got, err := tc.a.Evidence(context.Background(), tc.rd)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("evidence\n got %s\nwant %s", got, tc.want)
			}
			if _, err := Verify(got, tc.rd); err != nil {
				t.Fatalf("Verify: %v", err)
			}
		})
	}
}

func TestVerifyRejects(t *testing.T) {
	ev, err := New().Evidence(context.Background(), []byte("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		evidence []byte
		rd       []byte
		want     error
	}{
		{"other-nonce", ev, []byte("nonce2"), errdefs.ErrFailedPrecondition},
		{"not-json", []byte("{"), []byte("nonce"), errdefs.ErrInvalidArgument},
		{"bad-base64", []byte(`{"svn":"1","report_data":"***"}`), nil, errdefs.ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Verify(tc.evidence, tc.rd); !errors.Is(err, tc.want) {
				t.Fatalf("Verify = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := New().Evidence(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
}

func BenchmarkEvidence(b *testing.B) {
	rd := bytes.Repeat([]byte{7}, 48)
	a := New()
	ctx := context.Background()
	for b.Loop() {
		if _, err := a.Evidence(ctx, rd); err != nil {
			b.Fatal(err)
		}
	}
}
