package ocicrypt_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/ocicrypt"
	"github.com/cova-project/cova/imagepull/ocicrypt/ocicrypttest"
)

const (
	fzKid      = "kbs:///default/image-key/1"
	fzOtherKid = "kbs:///default/image-key/2"
)

var (
	fzKEK      = bytes.Repeat([]byte{0x11}, 32)
	fzWrongKEK = bytes.Repeat([]byte{0x22}, 32)
	// fzPrivOpts is the secret the seeds wrap.
	fzPrivOpts = []byte(`{"symkey":"` + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)) +
		`","cipheroptions":{"nonce":"` + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{9}, 16)) + `"}}`)
	fzRight = resources{fzKid: fzKEK, fzOtherKid: bytes.Repeat([]byte{0x33}, 32)}
	fzWrong = resources{fzKid: fzWrongKEK, fzOtherKid: fzWrongKEK}
)

// fzECKey is a fixed EC P-256 private key (scalar d repeated) with its PEM.
func fzECKey(tb testing.TB, d byte) (*ecdsa.PrivateKey, []byte) {
	tb.Helper()
	k, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{d}, 32))
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		tb.Fatal(err)
	}
	return k, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// fzClassed reports whether err carries a class the key providers use.
func fzClassed(err error) bool {
	for _, c := range []error{errdefs.ErrInvalidArgument, errdefs.ErrNotImplemented, errdefs.ErrPermissionDenied, errdefs.ErrNotFound, errdefs.ErrFailedPrecondition} {
		if errors.Is(err, c) {
			return true
		}
	}
	return false
}

func fzPacket(tb testing.TB, kek []byte, kid, wrap string, v2 bool) []byte {
	tb.Helper()
	v, err := ocicrypttest.Packet(fzPrivOpts, kek, kid, wrap, v2)
	if err != nil {
		tb.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzUnwrapPacket fuzzes a CoCo key provider packet (v1 and v2): errors
// are classed, the wrong KEK never yields what the right one does (A256GCM
// fails authentication, A256CTR gives other bytes), and without a resource
// getter nothing is unwrapped.
func FuzzUnwrapPacket(f *testing.F) {
	for _, v2 := range []bool{false, true} {
		f.Add(fzPacket(f, fzKEK, fzKid, ocicrypt.WrapA256GCM, v2))
		f.Add(fzPacket(f, fzKEK, fzKid, ocicrypt.WrapA256CTR, v2))
	}
	f.Add(fzPacket(f, fzWrongKEK, fzKid, ocicrypt.WrapA256GCM, false))
	f.Add(fzPacket(f, fzKEK, "kbs:///default/missing/1", ocicrypt.WrapA256GCM, true))
	f.Add([]byte(`{"kid":"https://evil/key","wrapped_data":"AA==","iv":"AAAAAAAAAAAAAAAA","wrap_type":"A256GCM"}`))
	f.Add([]byte(`{"version":"0.2.0","provider":"vault","kid":"kbs:///a/b/c"}`))
	f.Add([]byte(`{"kid":"kbs:///default/image-key/1","wrapped_data":"AA==","iv":"AAAA","wrap_type":"A128KW"}`))
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, packet []byte) {
		if _, err := ocicrypt.UnwrapPacket(ctx, nil, packet); err == nil || !fzClassed(err) {
			t.Fatalf("no resource getter: %v", err)
		}
		opts, err := ocicrypt.UnwrapPacket(ctx, fzRight, packet)
		if err != nil {
			if !fzClassed(err) {
				t.Fatalf("error without a class: %v", err)
			}
			return
		}
		var p ocicrypt.AnnotationPacket
		if err := json.Unmarshal(packet, &p); err != nil {
			t.Fatalf("accepted a packet that is not JSON: %v", err)
		}
		wrong, err := ocicrypt.UnwrapPacket(ctx, fzWrong, packet)
		switch p.WrapType {
		case ocicrypt.WrapA256GCM:
			if err == nil || !errors.Is(err, errdefs.ErrPermissionDenied) {
				t.Fatalf("A256GCM packet with the wrong KEK: %v", err)
			}
		case ocicrypt.WrapA256CTR:
			if err != nil || bytes.Equal(wrong, opts) {
				t.Fatalf("A256CTR packet: the wrong KEK gave the same bytes (%v)", err)
			}
		default:
			t.Fatalf("unwrapped a packet of wrap type %q", p.WrapType)
		}
	})
}

// FuzzUnwrapKey fuzzes a layer's key annotations (JWE recipients, CoCo
// packets, public options) through Multi and Prepare with a fixed EC key
// and KEK: errors are classed and the wrong keys never give the right
// private options.
func FuzzUnwrapKey(f *testing.F) {
	rightEC, rightPEM := fzECKey(f, 1)
	_, wrongPEM := fzECKey(f, 2)
	right, err := ocicrypt.NewJWE(rightPEM)
	if err != nil {
		f.Fatal(err)
	}
	wrongJWE, err := ocicrypt.NewJWE(wrongPEM)
	if err != nil {
		f.Fatal(err)
	}
	good := ocicrypt.Multi(right, &ocicrypt.AttestationAgent{Resources: fzRight})
	bad := ocicrypt.Multi(wrongJWE, &ocicrypt.AttestationAgent{Resources: fzWrong})

	enc, err := ocicrypttest.Encrypt([]byte("layer"))
	if err != nil {
		f.Fatal(err)
	}
	jwe, err := ocicrypttest.WrapJWE(fzPrivOpts, &rightEC.PublicKey)
	if err != nil {
		f.Fatal(err)
	}
	gcm := base64.StdEncoding.EncodeToString(fzPacket(f, fzKEK, fzKid, ocicrypt.WrapA256GCM, true))
	ctr := base64.StdEncoding.EncodeToString(fzPacket(f, fzKEK, fzKid, ocicrypt.WrapA256CTR, false))
	f.Add("", jwe, enc.PubOpts)
	f.Add(gcm, "", enc.PubOpts)
	f.Add(ctr+","+gcm, "", enc.PubOpts)
	f.Add(gcm, jwe, "")
	f.Add("", jwe+",!!!", enc.PubOpts)
	f.Add("", base64.StdEncoding.EncodeToString([]byte("a.b.c.d.e")), enc.PubOpts)
	f.Add("", "", base64.StdEncoding.EncodeToString([]byte(`{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"AA=="}`)))
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, aa, jweAnn, pubOpts string) {
		desc := oci.Descriptor{
			MediaType:   oci.MediaTypeOCILayerGzip + oci.MediaTypeEncryptedSuffix,
			Digest:      oci.FromBytes([]byte("layer")),
			Annotations: map[string]string{},
		}
		for k, v := range map[string]string{ocicrypt.AnnotationAttestationAgent: aa, ocicrypt.AnnotationJWE: jweAnn, ocicrypt.AnnotationPubOpts: pubOpts} {
			if v != "" {
				desc.Annotations[k] = v
			}
		}
		if _, err := ocicrypt.ParsePublicOptions(desc); err != nil && !fzClassed(err) {
			t.Fatalf("public options: error without a class: %v", err)
		}
		opts, err := good.UnwrapKey(ctx, desc)
		if err != nil {
			if !fzClassed(err) {
				t.Fatalf("error without a class: %v", err)
			}
			if aa == "" && jweAnn == "" && !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("no key annotation: %v, want NOT_FOUND", err)
			}
			return
		}
		if w, err := bad.UnwrapKey(ctx, desc); err == nil && bytes.Equal(w, opts) {
			t.Fatal("the wrong keys unwrapped the same private options")
		}
		l, err := ocicrypt.Prepare(desc, opts)
		if err != nil {
			if !fzClassed(err) {
				t.Fatalf("Prepare: error without a class: %v", err)
			}
			return
		}
		if l == nil {
			t.Fatal("Prepare: nil layer")
		}
		if _, err := ocicrypt.ParsePublicOptions(desc); err != nil {
			t.Fatalf("Prepare accepted public options ParsePublicOptions rejects: %v", err)
		}
	})
}
