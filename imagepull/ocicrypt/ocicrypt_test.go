package ocicrypt_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/imagepull/oci"
	"github.com/cova-project/cova/imagepull/ocicrypt"
	"github.com/cova-project/cova/imagepull/ocicrypt/ocicrypttest"
)

func encrypt(t *testing.T, plain []byte) (ocicrypttest.Encrypted, oci.Descriptor) {
	t.Helper()
	e, err := ocicrypttest.Encrypt(plain)
	if err != nil {
		t.Fatal(err)
	}
	return e, oci.Descriptor{
		MediaType: oci.MediaTypeOCILayerGzip + "+encrypted", Digest: oci.FromBytes(e.Blob), Size: int64(len(e.Blob)),
		Annotations: map[string]string{ocicrypt.AnnotationPubOpts: e.PubOpts},
	}
}

func TestLayerCipher(t *testing.T) {
	plain := bytes.Repeat([]byte("0123456789abcdef-layer-"), 100000)
	e, desc := encrypt(t, plain)
	other, _ := encrypt(t, plain)
	flip := func(i int) []byte {
		b := bytes.Clone(e.Blob)
		b[i] ^= 1
		return b
	}
	pubWith := func(mod func(*ocicrypt.PublicOptions)) oci.Descriptor {
		raw, _ := base64.StdEncoding.DecodeString(e.PubOpts)
		var p ocicrypt.PublicOptions
		json.Unmarshal(raw, &p)
		mod(&p)
		b, _ := json.Marshal(p)
		d := desc
		d.Annotations = map[string]string{ocicrypt.AnnotationPubOpts: base64.StdEncoding.EncodeToString(b)}
		return d
	}
	tests := []struct {
		name       string
		desc       oci.Descriptor
		priv       []byte
		blob       []byte
		prepareErr error
		readErr    error // nil: plaintext must come back
	}{
		{name: "round trip", desc: desc, priv: e.PrivOpts, blob: e.Blob},
		{name: "last byte flipped", desc: desc, priv: e.PrivOpts, blob: flip(len(e.Blob) - 1), readErr: errdefs.ErrFailedPrecondition},
		{name: "first byte flipped", desc: desc, priv: e.PrivOpts, blob: flip(0), readErr: errdefs.ErrFailedPrecondition},
		{name: "truncated", desc: desc, priv: e.PrivOpts, blob: e.Blob[:len(e.Blob)-1], readErr: errdefs.ErrFailedPrecondition},
		{name: "appended", desc: desc, priv: e.PrivOpts, blob: append(bytes.Clone(e.Blob), 0), readErr: errdefs.ErrFailedPrecondition},
		{name: "another layer's key", desc: desc, priv: other.PrivOpts, blob: e.Blob, readErr: errdefs.ErrFailedPrecondition},
		{name: "hmac replaced", desc: pubWith(func(p *ocicrypt.PublicOptions) { p.HMAC = make([]byte, 32) }), priv: e.PrivOpts, blob: e.Blob, readErr: errdefs.ErrFailedPrecondition},
		{name: "public nonce ignored", desc: pubWith(func(p *ocicrypt.PublicOptions) { p.CipherOptions = map[string][]byte{"nonce": make([]byte, 16)} }), priv: e.PrivOpts, blob: e.Blob},
		{name: "hmac short", desc: pubWith(func(p *ocicrypt.PublicOptions) { p.HMAC = p.HMAC[:16] }), priv: e.PrivOpts, prepareErr: errdefs.ErrInvalidArgument},
		{name: "unknown cipher", desc: pubWith(func(p *ocicrypt.PublicOptions) { p.Cipher = "AES_128_GCM" }), priv: e.PrivOpts, prepareErr: errdefs.ErrNotImplemented},
		{name: "no pubopts", desc: oci.Descriptor{Digest: desc.Digest}, priv: e.PrivOpts, prepareErr: errdefs.ErrInvalidArgument},
		{name: "pubopts not base64", desc: oci.Descriptor{Digest: desc.Digest, Annotations: map[string]string{ocicrypt.AnnotationPubOpts: "!!"}}, priv: e.PrivOpts, prepareErr: errdefs.ErrInvalidArgument},
		{name: "private options not JSON", desc: desc, priv: []byte("{"), prepareErr: errdefs.ErrInvalidArgument},
		{name: "short key", desc: desc, priv: []byte(`{"symkey":"AAAA","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}`), prepareErr: errdefs.ErrInvalidArgument},
		{name: "no nonce", desc: desc, priv: []byte(`{"symkey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","cipheroptions":{}}`), prepareErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, err := ocicrypt.Prepare(tc.desc, tc.priv)
			if tc.prepareErr != nil {
				if !errors.Is(err, tc.prepareErr) {
					t.Fatalf("Prepare: got %v, want %v", err, tc.prepareErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// Small reads exercise the streaming path.
			got, err := io.ReadAll(iotest.HalfReader(l.NewReader(bytes.NewReader(tc.blob))))
			if tc.readErr != nil {
				if !errors.Is(err, tc.readErr) {
					t.Fatalf("read: got %v, want %v", err, tc.readErr)
				}
				return
			}
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("read: %v, plaintext equal %v", err, bytes.Equal(got, plain))
			}
		})
	}
}

// TestReaderPassesErrors: a failing source is reported as itself, not as
// an HMAC mismatch, and the error is sticky.
func TestReaderPassesErrors(t *testing.T) {
	e, desc := encrypt(t, []byte("hello"))
	l, err := ocicrypt.Prepare(desc, e.PrivOpts)
	if err != nil {
		t.Fatal(err)
	}
	boom := fmt.Errorf("network: %w", errdefs.ErrUnavailable)
	r := l.NewReader(io.MultiReader(bytes.NewReader(e.Blob[:2]), iotest.ErrReader(boom)))
	_, err = io.ReadAll(r)
	if !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if _, err2 := r.Read(make([]byte, 1)); !errors.Is(err2, boom) {
		t.Fatalf("not sticky: %v", err2)
	}
}

func pemOf(t *testing.T, typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func TestJWE(t *testing.T) {
	ctx := context.Background()
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	sec1, _ := x509.MarshalECPrivateKey(ecKey)
	e, desc := encrypt(t, []byte("layer"))
	withJWE := func(pubs ...any) oci.Descriptor {
		a, err := ocicrypttest.WrapJWE(e.PrivOpts, pubs...)
		if err != nil {
			t.Fatal(err)
		}
		d := desc
		d.Annotations = map[string]string{ocicrypt.AnnotationPubOpts: e.PubOpts, ocicrypt.AnnotationJWE: a}
		return d
	}
	tests := []struct {
		name    string
		keys    [][]byte
		desc    oci.Descriptor
		wantErr error
	}{
		{name: "RSA PKCS#1", keys: [][]byte{pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey))}, desc: withJWE(&rsaKey.PublicKey)},
		{name: "RSA PKCS#8", keys: [][]byte{pemOf(t, "PRIVATE KEY", pkcs8)}, desc: withJWE(&rsaKey.PublicKey)},
		{name: "EC SEC1, ECDH-ES", keys: [][]byte{pemOf(t, "EC PRIVATE KEY", sec1)}, desc: withJWE(&ecKey.PublicKey)},
		{name: "second of two recipients", keys: [][]byte{pemOf(t, "EC PRIVATE KEY", sec1)}, desc: withJWE(&otherKey.PublicKey, &ecKey.PublicKey)},
		{name: "second of two keys", keys: [][]byte{pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(otherKey)), pemOf(t, "EC PRIVATE KEY", sec1)}, desc: withJWE(&ecKey.PublicKey)},
		{name: "not a recipient", keys: [][]byte{pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(otherKey))}, desc: withJWE(&rsaKey.PublicKey), wantErr: errdefs.ErrPermissionDenied},
		{name: "no JWE annotation", keys: [][]byte{pemOf(t, "PRIVATE KEY", pkcs8)}, desc: desc, wantErr: errdefs.ErrNotFound},
		{name: "garbage JWE", keys: [][]byte{pemOf(t, "PRIVATE KEY", pkcs8)}, desc: oci.Descriptor{Digest: desc.Digest, Annotations: map[string]string{
			ocicrypt.AnnotationJWE: base64.StdEncoding.EncodeToString([]byte("{}"))}}, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			j, err := ocicrypt.NewJWE(tc.keys...)
			if err != nil {
				t.Fatal(err)
			}
			got, err := j.UnwrapKey(ctx, tc.desc)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || !bytes.Equal(got, e.PrivOpts) {
				t.Fatalf("unwrap: %v", err)
			}
			if _, err := ocicrypt.Prepare(tc.desc, got); err != nil {
				t.Fatal(err)
			}
		})
	}
	for _, bad := range []struct {
		name string
		key  []byte
		want error
	}{
		{"public key", pemOf(t, "PUBLIC KEY", func() []byte { b, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey); return b }()), errdefs.ErrInvalidArgument},
		{"encrypted", pemOf(t, "ENCRYPTED PRIVATE KEY", []byte{1}), errdefs.ErrNotImplemented},
		{"not a key", []byte("hello"), errdefs.ErrInvalidArgument},
		{"public JWK", []byte(`{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}`), errdefs.ErrInvalidArgument},
	} {
		t.Run("key "+bad.name, func(t *testing.T) {
			if _, err := ocicrypt.NewJWE(bad.key); !errors.Is(err, bad.want) {
				t.Fatalf("got %v, want %v", err, bad.want)
			}
		})
	}
}

type resources map[string][]byte

func (r resources) GetResource(ctx context.Context, uri string) ([]byte, error) {
	if v, ok := r[uri]; ok {
		return v, nil
	}
	return nil, fmt.Errorf("resource %s: %w", uri, errdefs.ErrNotFound)
}

func TestAttestationAgent(t *testing.T) {
	ctx := context.Background()
	kek := bytes.Repeat([]byte{7}, 32)
	const kid = "kbs:///default/key/1"
	res := resources{kid: kek, "kbs:///default/key/short": kek[:16]}
	e, desc := encrypt(t, []byte("layer"))
	with := func(ann string) oci.Descriptor {
		d := desc
		d.Annotations = map[string]string{ocicrypt.AnnotationPubOpts: e.PubOpts, ocicrypt.AnnotationAttestationAgent: ann}
		return d
	}
	packet := func(kek []byte, kid, wrap string, v2 bool) string {
		p, err := ocicrypttest.Packet(e.PrivOpts, kek, kid, wrap, v2)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	raw := func(p map[string]any) string {
		b, _ := json.Marshal(p)
		return base64.StdEncoding.EncodeToString(b)
	}
	good := packet(kek, kid, ocicrypt.WrapA256GCM, false)
	goodRaw, _ := base64.StdEncoding.DecodeString(good)
	var gp map[string]any
	json.Unmarshal(goodRaw, &gp)
	mod := func(k string, v any) string {
		m := map[string]any{}
		for a, b := range gp {
			m[a] = b
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return raw(m)
	}
	tests := []struct {
		name    string
		ann     string
		res     ocicrypt.ResourceGetter
		wantErr error
	}{
		{name: "v1 A256GCM", ann: good, res: res},
		{name: "v1 A256CTR", ann: packet(kek, kid, ocicrypt.WrapA256CTR, false), res: res},
		{name: "v2 A256GCM", ann: packet(kek, kid, ocicrypt.WrapA256GCM, true), res: res},
		{name: "v2 A256CTR", ann: packet(kek, kid, ocicrypt.WrapA256CTR, true), res: res},
		{name: "second packet of two", ann: packet(bytes.Repeat([]byte{1}, 32), "kbs:///default/key/gone", ocicrypt.WrapA256GCM, false) + "," + good, res: res},
		{name: "wrong KEK", ann: packet(bytes.Repeat([]byte{9}, 32), kid, ocicrypt.WrapA256GCM, false), res: res, wantErr: errdefs.ErrPermissionDenied},
		{name: "KEK not 32 bytes", ann: packet(kek, "kbs:///default/key/short", ocicrypt.WrapA256GCM, false), res: res, wantErr: errdefs.ErrInvalidArgument},
		{name: "unknown resource", ann: packet(kek, "kbs:///default/key/2", ocicrypt.WrapA256GCM, false), res: res, wantErr: errdefs.ErrNotFound},
		{name: "kid not a URI", ann: packet(kek, "/default/key/1", ocicrypt.WrapA256GCM, false), res: res, wantErr: errdefs.ErrInvalidArgument},
		{name: "KMS provider", ann: mod("provider", "aliyun"), res: res, wantErr: errdefs.ErrNotImplemented},
		{name: "unknown version", ann: mod("version", "0.2.0"), res: res, wantErr: errdefs.ErrNotImplemented},
		{name: "unknown wrap type", ann: mod("wrap_type", "A128KW"), res: res, wantErr: errdefs.ErrNotImplemented},
		{name: "iv missing", ann: mod("iv", nil), res: res, wantErr: errdefs.ErrInvalidArgument},
		{name: "wrapped data tampered", ann: mod("wrapped_data", base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 80))), res: res, wantErr: errdefs.ErrPermissionDenied},
		{name: "no resource getter", ann: good, wantErr: errdefs.ErrFailedPrecondition},
		{name: "not JSON", ann: base64.StdEncoding.EncodeToString([]byte("nope")), res: res, wantErr: errdefs.ErrInvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kp := &ocicrypt.AttestationAgent{Resources: tc.res}
			got, err := kp.UnwrapKey(ctx, with(tc.ann))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil || !bytes.Equal(got, e.PrivOpts) {
				t.Fatalf("unwrap: %v", err)
			}
		})
	}
}

func TestMulti(t *testing.T) {
	ctx := context.Background()
	kek := bytes.Repeat([]byte{7}, 32)
	e, desc := encrypt(t, []byte("layer"))
	p, _ := ocicrypttest.Packet(e.PrivOpts, kek, "kbs:///a/b/c", ocicrypt.WrapA256GCM, false)
	desc.Annotations[ocicrypt.AnnotationAttestationAgent] = p
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	j, err := ocicrypt.NewJWE(pemOf(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key)))
	if err != nil {
		t.Fatal(err)
	}
	aa := &ocicrypt.AttestationAgent{Resources: resources{"kbs:///a/b/c": kek}}
	// JWE finds no annotation of its kind and is skipped.
	got, err := ocicrypt.Multi(j, aa).UnwrapKey(ctx, desc)
	if err != nil || !bytes.Equal(got, e.PrivOpts) {
		t.Fatalf("multi: %v", err)
	}
	delete(desc.Annotations, ocicrypt.AnnotationAttestationAgent)
	if _, err := ocicrypt.Multi(j, aa).UnwrapKey(ctx, desc); !errdefs.IsNotFound(err) {
		t.Fatalf("no annotations: %v", err)
	}
	desc.Annotations[ocicrypt.AnnotationAttestationAgent] = p
	if _, err := ocicrypt.Multi(j, &ocicrypt.AttestationAgent{Resources: resources{}}).UnwrapKey(ctx, desc); !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "fetching key kbs:///a/b/c") {
		t.Fatalf("resource missing: %v", err)
	}
}
