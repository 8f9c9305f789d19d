// Package tpm implements the plain TPM attester (a TPM not bound to a TEE):
// a TPM2_Quote over the SHA-256 PCRs 0–23 signed by an RSA attestation key
// at a persistent handle, serialized as guest-components' tpm attester does:
// {"tpm_quote":{"signature":"<b64 TPMT_SIGNATURE>","message":"<b64
// TPMS_ATTEST>","pcrs":["<hex>"×24]},"ak_public":"<b64 DER SPKI>"}. It also
// extends and reads SHA-256 PCRs (runtime measurement, identity register
// mapping) and binds initdata by extending PCR 8. The TPM is reached through
// a go-tpm transport opened per operation, so tests drive swtpm.
package tpm

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/containerd/errdefs"
	"github.com/cova-project/cova/attester"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// NumPCRs is the number of SHA-256 PCRs quoted and reported.
const NumPCRs = 24

// InitdataPCR is the PCR initdata digests are extended into.
const InitdataPCR = 8

// Config holds the attester's seams.
type Config struct {
	// Open opens the TPM for one operation.
	Open func() (transport.TPMCloser, error)
	// AKHandle is the persistent handle of the RSA attestation key;
	// attester.DefaultAKHandle when 0.
	AKHandle uint32
}

// DeviceOpener opens a TPM character device (e.g. /dev/tpm0).
func DeviceOpener(path string) func() (transport.TPMCloser, error) {
	return func() (transport.TPMCloser, error) { return linuxtpm.Open(path) }
}

// Quote is the tpm_quote object.
type Quote struct {
	Signature string   `json:"signature"`
	Message   string   `json:"message"`
	PCRs      []string `json:"pcrs"`
}

// Evidence is the tpm evidence document.
type Evidence struct {
	TPMQuote Quote  `json:"tpm_quote"`
	AKPublic string `json:"ak_public"`
}

// Attester is the tpm attester. It implements attester.RuntimeMeasurer and
// attester.InitdataBinder.
type Attester struct {
	cfg Config
}

// New returns a tpm attester.
func New(cfg Config) *Attester {
	if cfg.AKHandle == 0 {
		cfg.AKHandle = attester.DefaultAKHandle
	}
	return &Attester{cfg: cfg}
}

// Tee implements attester.Attester.
func (a *Attester) Tee() attester.Tee { return attester.TeeTPM }

func (a *Attester) open(ctx context.Context) (transport.TPMCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if a.cfg.Open == nil {
		return nil, fmt.Errorf("tpm: no device: %w", errdefs.ErrNotFound)
	}
	t, err := a.cfg.Open()
	if err != nil {
		return nil, fmt.Errorf("tpm: open: %w", err)
	}
	return retrying{t}, nil
}

// retrying re-sends a command the TPM answered with a warning asking for
// it (TPM_RC_RETRY, TPM_RC_YIELDED, TPM_RC_TESTING).
type retrying struct{ transport.TPMCloser }

const (
	rcYielded = 0x908
	rcTesting = 0x90A
	rcRetry   = 0x922
	retries   = 50
)

func (r retrying) Send(cmd []byte) ([]byte, error) {
	for i := 0; ; i++ {
		rsp, err := r.TPMCloser.Send(cmd)
		if err != nil || len(rsp) < 10 || i == retries {
			return rsp, err
		}
		switch binary.BigEndian.Uint32(rsp[6:10]) {
		case rcYielded, rcTesting, rcRetry:
			time.Sleep(time.Duration(i+1) * time.Millisecond)
			continue
		}
		return rsp, nil
	}
}

func allPCRs() tpm2.TPMLPCRSelection {
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: []byte{0xff, 0xff, 0xff},
	}}}
}

// quoteRetries bounds attempts when a PCR changes between quote and read.
const quoteRetries = 3

// Evidence implements attester.Attester: report data truncated or padded to
// 32 bytes is the quote's qualifying data.
func (a *Attester) Evidence(ctx context.Context, reportData []byte) ([]byte, error) {
	nonce, err := attester.FitReportData(attester.TeeTPM, reportData)
	if err != nil {
		return nil, err
	}
	t, err := a.open(ctx)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	ak := tpm2.TPMHandle(a.cfg.AKHandle)
	pub, err := tpm2.ReadPublic{ObjectHandle: ak}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("tpm: read AK %#x: %w", a.cfg.AKHandle, err)
	}
	spki, err := akSPKI(pub.OutPublic)
	if err != nil {
		return nil, err
	}
	for range quoteRetries {
		q, err := tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: ak, Name: pub.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  tpm2.TPMAlgRSASSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
			},
			PCRSelect: allPCRs(),
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("tpm: quote with AK %#x: %w", a.cfg.AKHandle, err)
		}
		if q.Signature.SigAlg != tpm2.TPMAlgRSASSA {
			return nil, fmt.Errorf("tpm: quote signature algorithm %v, want RSASSA: %w", q.Signature.SigAlg, errdefs.ErrFailedPrecondition)
		}
		pcrs, err := readPCRs(t)
		if err != nil {
			return nil, err
		}
		msg := q.Quoted.Bytes()
		if ok, err := pcrDigestMatches(msg, pcrs); err != nil {
			return nil, err
		} else if !ok {
			continue // a PCR moved between quote and read; quote again
		}
		ev := Evidence{
			TPMQuote: Quote{
				Signature: base64.StdEncoding.EncodeToString(tpm2.Marshal(q.Signature)),
				Message:   base64.StdEncoding.EncodeToString(msg),
			},
			AKPublic: base64.StdEncoding.EncodeToString(spki),
		}
		for _, p := range pcrs {
			ev.TPMQuote.PCRs = append(ev.TPMQuote.PCRs, hex.EncodeToString(p))
		}
		return json.Marshal(ev)
	}
	return nil, fmt.Errorf("tpm: PCRs kept changing during the quote: %w", errdefs.ErrAborted)
}

// akSPKI returns the DER SubjectPublicKeyInfo of an RSA AK.
func akSPKI(p tpm2.TPM2BPublic) ([]byte, error) {
	pub, err := p.Contents()
	if err != nil {
		return nil, fmt.Errorf("tpm: AK public area: %w", err)
	}
	if pub.Type != tpm2.TPMAlgRSA {
		return nil, fmt.Errorf("tpm: AK is not an RSA key: %w", errdefs.ErrFailedPrecondition)
	}
	detail, err := pub.Parameters.RSADetail()
	if err != nil {
		return nil, fmt.Errorf("tpm: AK parameters: %w", err)
	}
	unique, err := pub.Unique.RSA()
	if err != nil {
		return nil, fmt.Errorf("tpm: AK modulus: %w", err)
	}
	key, err := tpm2.RSAPub(detail, unique)
	if err != nil {
		return nil, fmt.Errorf("tpm: AK key: %w", err)
	}
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, fmt.Errorf("tpm: AK SPKI: %w", err)
	}
	return der, nil
}

// readPCRs reads SHA-256 PCRs 0..23; TPM2_PCR_Read returns at most a few
// per call, so it asks again for the rest.
func readPCRs(t transport.TPM) ([][]byte, error) {
	out := make([][]byte, NumPCRs)
	want := []byte{0xff, 0xff, 0xff}
	for range NumPCRs {
		if bytes.Equal(want, []byte{0, 0, 0}) {
			return out, nil
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: bytes.Clone(want)}}}}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("tpm: read PCRs: %w", err)
		}
		got := 0
		for _, sel := range rsp.PCRSelectionOut.PCRSelections {
			if sel.Hash != tpm2.TPMAlgSHA256 {
				continue
			}
			for i := range min(len(sel.PCRSelect)*8, NumPCRs) {
				if sel.PCRSelect[i/8]&(1<<(i%8)) == 0 {
					continue
				}
				if got >= len(rsp.PCRValues.Digests) {
					return nil, fmt.Errorf("tpm: PCR read returned fewer digests than selected: %w", errdefs.ErrDataLoss)
				}
				d := rsp.PCRValues.Digests[got].Buffer
				if len(d) != sha256.Size {
					return nil, fmt.Errorf("tpm: PCR %d digest is %d bytes: %w", i, len(d), errdefs.ErrDataLoss)
				}
				out[i] = bytes.Clone(d)
				want[i/8] &^= 1 << (i % 8)
				got++
			}
		}
		if got == 0 {
			return nil, fmt.Errorf("tpm: SHA-256 PCR bank not allocated: %w", errdefs.ErrFailedPrecondition)
		}
	}
	if !bytes.Equal(want, []byte{0, 0, 0}) {
		return nil, fmt.Errorf("tpm: could not read all PCRs: %w", errdefs.ErrDataLoss)
	}
	return out, nil
}

// pcrDigestMatches reports whether the quote's PCR digest is SHA-256 over
// the PCR values in order.
func pcrDigestMatches(attest []byte, pcrs [][]byte) (bool, error) {
	a, err := tpm2.Unmarshal[tpm2.TPMSAttest](attest)
	if err != nil {
		return false, fmt.Errorf("tpm: parse quote: %w", err)
	}
	qi, err := a.Attested.Quote()
	if err != nil {
		return false, fmt.Errorf("tpm: quote info: %w", err)
	}
	h := sha256.New()
	for _, p := range pcrs {
		h.Write(p)
	}
	return bytes.Equal(qi.PCRDigest.Buffer, h.Sum(nil)), nil
}

// Register implements attester.RuntimeMeasurer: the PCR index itself.
func (a *Attester) Register(pcr uint64) uint32 { return uint32(pcr) }

// HashAlg implements attester.RuntimeMeasurer.
func (a *Attester) HashAlg() crypto.Hash { return crypto.SHA256 }

func checkPCR(pcr uint64) error {
	if pcr >= NumPCRs {
		return fmt.Errorf("pcr %d: out of range 0..%d: %w", pcr, NumPCRs-1, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Extend implements attester.RuntimeMeasurer: extends the SHA-256 bank of
// pcr with digest zero-padded or truncated to 32 bytes.
func (a *Attester) Extend(ctx context.Context, pcr uint64, digest []byte) error {
	if err := checkPCR(pcr); err != nil {
		return err
	}
	t, err := a.open(ctx)
	if err != nil {
		return err
	}
	defer t.Close()
	return extend(t, pcr, attester.FitDigest(digest, sha256.Size))
}

func extend(t transport.TPM, pcr uint64, d []byte) error {
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d}}},
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("tpm: extend PCR %d: %w", pcr, err)
	}
	return nil
}

// Measurement implements attester.RuntimeMeasurer: the SHA-256 PCR value.
func (a *Attester) Measurement(ctx context.Context, pcr uint64) ([]byte, error) {
	if err := checkPCR(pcr); err != nil {
		return nil, err
	}
	t, err := a.open(ctx)
	if err != nil {
		return nil, err
	}
	defer t.Close()
	pcrs, err := readPCRs(t)
	if err != nil {
		return nil, err
	}
	return pcrs[pcr], nil
}

// BindInitdata implements attester.InitdataBinder: extends PCR 8 with the
// digest, which must be 32 bytes (a SHA-256 initdata digest). The verifier
// then expects PCR 8 = SHA-256(32 zero bytes || digest).
func (a *Attester) BindInitdata(ctx context.Context, digest []byte) error {
	if len(digest) != sha256.Size {
		return fmt.Errorf("tpm: initdata digest is %d bytes; vTPM binding needs a sha256 digest: %w", len(digest), errdefs.ErrInvalidArgument)
	}
	t, err := a.open(ctx)
	if err != nil {
		return err
	}
	defer t.Close()
	return extend(t, InitdataPCR, digest)
}

// StreamTransport frames TPM commands over a byte stream (a swtpm socket):
// it writes a command and reads exactly one response, by its header size.
func StreamTransport(rwc io.ReadWriteCloser) transport.TPMCloser { return &stream{rwc} }

type stream struct{ rwc io.ReadWriteCloser }

// maxResponse bounds a TPM response.
const maxResponse = 1 << 16

func (s *stream) Send(cmd []byte) ([]byte, error) {
	if _, err := s.rwc.Write(cmd); err != nil {
		return nil, fmt.Errorf("tpm: send: %w", err)
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.rwc, hdr); err != nil {
		return nil, fmt.Errorf("tpm: read response header: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[2:6])
	if n < 10 || n > maxResponse {
		return nil, fmt.Errorf("tpm: response size %d: %w", n, errdefs.ErrDataLoss)
	}
	rsp := make([]byte, n)
	copy(rsp, hdr)
	if _, err := io.ReadFull(s.rwc, rsp[10:]); err != nil {
		return nil, fmt.Errorf("tpm: read response: %w", err)
	}
	return rsp, nil
}

func (s *stream) Close() error { return s.rwc.Close() }

// WithRetry wraps t so commands the TPM answers with TPM_RC_RETRY,
// TPM_RC_YIELDED or TPM_RC_TESTING are re-sent (shared with the Azure vTPM
// attesters).
func WithRetry(t transport.TPMCloser) transport.TPMCloser { return retrying{t} }

// ReadPCRs reads the SHA-256 PCRs 0..23 in order.
func ReadPCRs(t transport.TPM) ([][]byte, error) { return readPCRs(t) }

// AllPCRs selects the SHA-256 PCRs 0..23.
func AllPCRs() tpm2.TPMLPCRSelection { return allPCRs() }

// QuoteMatchesPCRs reports whether the quote (a marshalled TPMS_ATTEST)
// digests exactly pcrs, so PCR values read after the quote belong to it.
func QuoteMatchesPCRs(attest []byte, pcrs [][]byte) (bool, error) {
	return pcrDigestMatches(attest, pcrs)
}
