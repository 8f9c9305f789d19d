// Package azvtpmtest emulates the Azure paravisor's vTPM on a swtpm for
// the Azure attester tests: it provisions the attestation key at
// 0x81000003, keeps a fake HCL report in NV index 0x01400001, and — like
// the paravisor — regenerates that report whenever the guest writes report
// data to NV index 0x01400002 (user-data = the written bytes, hardware
// report data = SHA-256 of the variable data, produced by a test-chosen
// hardware report function). It also builds and parses the HCL layout
// independently of package azvtpm so tests check the structure.
package azvtpmtest

import (
	"bytes"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"

	tpmpb "github.com/google/go-tpm-tools/proto/tpm"
	"github.com/google/go-tpm-tools/quote"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/cova-project/cova/attester/tpm"
)

// Dialer opens a connection to a running swtpm's command port (test/swtpm's
// Start returns one). This package does not start swtpm itself so that it
// builds without the test tooling.
type Dialer func() (net.Conn, error)

// Handles of the emulated paravisor.
const (
	HCLIndex        = 0x01400001
	ReportDataIndex = 0x01400002
	AKHandle        = 0x81000003
	// NVSize is the size of the HCL report NV index (reports are
	// zero-padded to it, as on Azure).
	NVSize = 2048
)

// Report types.
const (
	TypeSNP = 2
	TypeTDX = 4
)

// HWReport returns the hardware report (1184-byte SNP report or 1024-byte
// TDREPORT) whose report data is reportData.
type HWReport func(reportData [64]byte) []byte

// TDReport is an HWReport for TDX: a TDREPORT with REPORTDATA at 128.
func TDReport(reportData [64]byte) []byte {
	r := make([]byte, 1024)
	r[0] = 0x81 // REPORTTYPE.TYPE = TDX
	copy(r[128:192], reportData[:])
	for i := 512; i < 1024; i++ { // some non-zero TDINFO
		r[i] = byte(i)
	}
	return r
}

// VarData builds the variable data JSON: the AK as JWK with kid
// "HCLAkPub", a VM configuration, and user-data as uppercase hex of
// userData zero-padded to 64 bytes.
func VarData(ak *rsa.PublicKey, userData []byte) []byte {
	ud := make([]byte, 64)
	copy(ud, userData)
	e := big.NewInt(int64(ak.E)).Bytes()
	return fmt.Appendf(nil, `{"keys":[{"kid":"HCLAkPub","key_ops":["sign"],"kty":"RSA","e":%q,"n":%q}],`+
		`"vm-configuration":{"console-enabled":false,"secure-boot":true,"tpm-enabled":true,"vmUniqueId":"6A2F1C2E-0B1D-4C8F-9E3A-5D7B2C1E4F60"},"user-data":%q}`,
		base64.RawURLEncoding.EncodeToString(e), base64.RawURLEncoding.EncodeToString(ak.N.Bytes()),
		strings.ToUpper(hex.EncodeToString(ud)))
}

// BuildHCLReport lays out an HCL report of reportType around varData,
// with the hardware report from hw bound to SHA-256(varData), zero-padded
// to size (no padding when size is smaller).
func BuildHCLReport(reportType uint32, hw HWReport, varData []byte, size int) []byte {
	le := binary.LittleEndian
	var rd [64]byte
	h := sha256.Sum256(varData)
	copy(rd[:], h[:])
	hwr := hw(rd)
	b := make([]byte, 1236, max(size, 1236+len(varData)))
	le.PutUint32(b[0:], 0x414C4348) // "HCLA"
	le.PutUint32(b[4:], 1)
	le.PutUint32(b[8:], uint32(1236+len(varData)))
	le.PutUint32(b[12:], 2)
	copy(b[32:32+1184], hwr)
	le.PutUint32(b[1216:], uint32(20+len(varData)))
	le.PutUint32(b[1220:], 1)
	le.PutUint32(b[1224:], reportType)
	le.PutUint32(b[1228:], 1) // SHA-256
	le.PutUint32(b[1232:], uint32(len(varData)))
	b = append(b, varData...)
	for len(b) < size {
		b = append(b, 0)
	}
	return b
}

// Parsed is the test-side view of an HCL report.
type Parsed struct {
	Type         uint32
	HWReport     []byte
	HWReportData []byte
	VarData      []byte
}

// Parse splits an HCL report by its documented layout (independent of
// package azvtpm's parser).
func Parse(b []byte) (*Parsed, error) {
	if len(b) < 1236 {
		return nil, fmt.Errorf("hcl report: %d bytes", len(b))
	}
	le := binary.LittleEndian
	if le.Uint32(b) != 0x414C4348 {
		return nil, fmt.Errorf("hcl report: signature %#x", le.Uint32(b))
	}
	p := &Parsed{Type: le.Uint32(b[1224:])}
	n := int(le.Uint32(b[1232:]))
	if 1236+n > len(b) || le.Uint32(b[1216:]) != uint32(20+n) {
		return nil, fmt.Errorf("hcl report: variable data size %d", n)
	}
	p.VarData = b[1236 : 1236+n]
	switch p.Type {
	case TypeSNP:
		p.HWReport = b[32 : 32+1184]
		p.HWReportData = p.HWReport[0x50:0x90]
	case TypeTDX:
		p.HWReport = b[32 : 32+1024]
		p.HWReportData = p.HWReport[128:192]
	default:
		return nil, fmt.Errorf("hcl report: type %d", p.Type)
	}
	return p, nil
}

// Paravisor is the emulated vTPM.
type Paravisor struct {
	dial       Dialer
	reportType uint32
	hw         HWReport
	AK         *rsa.PublicKey
	mu         sync.Mutex
	// Writes counts report-data writes seen.
	Writes int
	// NoRegenerate makes the paravisor ignore report-data writes (a stale
	// HCL report).
	NoRegenerate bool
}

// Options control what Start provisions.
type Options struct {
	// NoAK skips the attestation key.
	NoAK bool
	// NoHCL skips the HCL report NV index.
	NoHCL bool
	// RawHCL, when set, is stored instead of a generated report.
	RawHCL []byte
}

// Start provisions the swtpm reached through dial as the paravisor would.
func Start(t testing.TB, dial func() (net.Conn, error), reportType uint32, hw HWReport, opts Options) *Paravisor {
	t.Helper()
	p := &Paravisor{dial: dial, reportType: reportType, hw: hw}
	tp := p.raw(t)
	defer tp.Close()
	if !opts.NoAK {
		provisionAK(t, tp)
		pub, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(AKHandle)}.Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
		p.AK = rsaPublic(t, pub.OutPublic)
	}
	if opts.NoHCL {
		return p
	}
	if err := defineNV(tp, HCLIndex, NVSize); err != nil {
		t.Fatalf("define HCL NV index: %v", err)
	}
	blob := opts.RawHCL
	if blob == nil {
		blob = p.report(nil)
	}
	if err := writeNV(tp, HCLIndex, blob); err != nil {
		t.Fatalf("write HCL report: %v", err)
	}
	return p
}

func (p *Paravisor) raw(t testing.TB) transport.TPMCloser {
	t.Helper()
	c, err := p.dial()
	if err != nil {
		t.Fatal(err)
	}
	return tpm.StreamTransport(c)
}

func (p *Paravisor) report(userData []byte) []byte {
	ak := p.AK
	if ak == nil {
		ak = &rsa.PublicKey{N: big.NewInt(1), E: 65537}
	}
	return BuildHCLReport(p.reportType, p.hw, VarData(ak, userData), NVSize)
}

// Open is the opener the attester under test uses: a fresh connection to
// the swtpm whose report-data writes regenerate the HCL report.
func (p *Paravisor) Open() (transport.TPMCloser, error) {
	c, err := p.dial()
	if err != nil {
		return nil, err
	}
	return &intercept{TPMCloser: tpm.StreamTransport(c), p: p}, nil
}

// RawOpen opens the swtpm without the paravisor emulation.
func (p *Paravisor) RawOpen() (transport.TPMCloser, error) {
	c, err := p.dial()
	if err != nil {
		return nil, err
	}
	return tpm.StreamTransport(c), nil
}

type intercept struct {
	transport.TPMCloser
	p *Paravisor
}

const ccNVWrite = 0x137

func (i *intercept) Send(cmd []byte) ([]byte, error) {
	rsp, err := i.TPMCloser.Send(cmd)
	if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		return rsp, err
	}
	data, ok := nvWriteData(cmd)
	if !ok {
		return rsp, nil
	}
	i.p.mu.Lock()
	defer i.p.mu.Unlock()
	i.p.Writes++
	if i.p.NoRegenerate {
		return rsp, nil
	}
	if err := writeNV(i.TPMCloser, HCLIndex, i.p.report(data)); err != nil {
		return nil, fmt.Errorf("paravisor: regenerate HCL report: %w", err)
	}
	return rsp, nil
}

// nvWriteData returns the data of a TPM2_NV_Write to the report-data index.
func nvWriteData(cmd []byte) ([]byte, bool) {
	be := binary.BigEndian
	if len(cmd) < 22 || be.Uint32(cmd[6:10]) != ccNVWrite || be.Uint32(cmd[14:18]) != ReportDataIndex {
		return nil, false
	}
	off := 22 + int(be.Uint32(cmd[18:22]))
	if off+2 > len(cmd) {
		return nil, false
	}
	n := int(be.Uint16(cmd[off:]))
	if off+2+n > len(cmd) {
		return nil, false
	}
	return bytes.Clone(cmd[off+2 : off+2+n]), true
}

var owner = tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}

func defineNV(tp transport.TPM, index uint32, size int) error {
	_, err := tpm2.NVDefineSpace{AuthHandle: owner, PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
		NVIndex:    tpm2.TPMHandle(index),
		NameAlg:    tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, AuthRead: true, AuthWrite: true, NT: tpm2.TPMNTOrdinary},
		DataSize:   uint16(size),
	})}.Execute(tp)
	return err
}

func writeNV(tp transport.TPM, index uint32, data []byte) error {
	pub, err := tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(index)}.Execute(tp)
	if err != nil {
		return err
	}
	for off := 0; off < len(data); off += 512 {
		end := min(off+512, len(data))
		if _, err := (tpm2.NVWrite{
			AuthHandle: owner,
			NVIndex:    tpm2.NamedHandle{Handle: tpm2.TPMHandle(index), Name: pub.NVName},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]},
			Offset:     uint16(off),
		}).Execute(tp); err != nil {
			return err
		}
	}
	return nil
}

func rsaPublic(t testing.TB, p tpm2.TPM2BPublic) *rsa.PublicKey {
	t.Helper()
	pub, err := p.Contents()
	if err != nil {
		t.Fatal(err)
	}
	detail, err := pub.Parameters.RSADetail()
	if err != nil {
		t.Fatal(err)
	}
	unique, err := pub.Unique.RSA()
	if err != nil {
		t.Fatal(err)
	}
	k, err := tpm2.RSAPub(detail, unique)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// CheckQuote verifies an Azure tpm_quote as verifiers do: the RSASSA
// signature over the message with the AK (trustee's check), go-tpm-tools'
// server-side quote check (signature, nonce = qualifying data, PCR digest
// over the given values), and the selection of SHA-256 PCRs 0–23.
func CheckQuote(sigHex, msgHex string, pcrsHex []string, ak *rsa.PublicKey, nonce []byte) error {
	sig, err := hex.DecodeString(sigHex)
	if err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	msg, err := hex.DecodeString(msgHex)
	if err != nil {
		return fmt.Errorf("message: %w", err)
	}
	if len(pcrsHex) != 24 {
		return fmt.Errorf("%d PCRs, want 24", len(pcrsHex))
	}
	pcrs := map[uint32][]byte{}
	for i, h := range pcrsHex {
		v, err := hex.DecodeString(h)
		if err != nil || len(v) != 32 || h != strings.ToLower(h) {
			return fmt.Errorf("pcr %d %q: not 32 bytes of lowercase hex", i, h)
		}
		pcrs[uint32(i)] = v
	}
	d := sha256.Sum256(msg)
	if err := rsa.VerifyPKCS1v15(ak, crypto.SHA256, d[:], sig); err != nil {
		return fmt.Errorf("quote not signed by the AK: %w", err)
	}
	att, err := tpm2.Unmarshal[tpm2.TPMSAttest](msg)
	if err != nil {
		return fmt.Errorf("message: %w", err)
	}
	qi, err := att.Attested.Quote()
	if err != nil {
		return fmt.Errorf("message is not a quote: %w", err)
	}
	sel := qi.PCRSelect.PCRSelections
	if len(sel) != 1 || sel[0].Hash != tpm2.TPMAlgSHA256 || !bytes.Equal(sel[0].PCRSelect, []byte{0xff, 0xff, 0xff}) {
		return fmt.Errorf("quote selects %+v, want SHA-256 PCRs 0-23", sel)
	}
	tsig := tpm2.Marshal(tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgRSASSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{
			Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: sig},
		}),
	})
	return quote.Verify(&tpmpb.Quote{Quote: msg, RawSig: tsig, Pcrs: &tpmpb.PCRs{Hash: tpmpb.HashAlgo_SHA256, Pcrs: pcrs}}, ak, nonce)
}

// provisionAK persists an RSA-2048 RSASSA-SHA256 restricted signing key at
// AKHandle, like the paravisor's attestation key.
func provisionAK(t testing.TB, tp transport.TPM) {
	t.Helper()
	tmpl := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgRSA,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			UserWithAuth: true, Restricted: true, SignEncrypt: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Scheme: tpm2.TPMTRSAScheme{
				Scheme:  tpm2.TPMAlgRSASSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			KeyBits: 2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
	}
	cp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tmpl),
	}.Execute(tp)
	if err != nil {
		t.Fatalf("create AK: %v", err)
	}
	defer func() { _, _ = tpm2.FlushContext{FlushHandle: cp.ObjectHandle}.Execute(tp) }()
	if _, err := (tpm2.EvictControl{
		Auth:             owner,
		ObjectHandle:     &tpm2.NamedHandle{Handle: cp.ObjectHandle, Name: cp.Name},
		PersistentHandle: tpm2.TPMHandle(AKHandle),
	}).Execute(tp); err != nil {
		t.Fatalf("persist AK: %v", err)
	}
}

// SNPReport is an HWReport for SNP: an unsigned v3 report with REPORT_DATA
// at 0x50 (tests that verify the signature bring their own).
func SNPReport(reportData [64]byte) []byte {
	r := make([]byte, 1184)
	r[0] = 3
	copy(r[0x50:0x90], reportData[:])
	return r
}
