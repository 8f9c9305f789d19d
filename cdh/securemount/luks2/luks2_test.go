package luks2

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/containerd/errdefs"
)

// seeded is a deterministic io.Reader for reproducible formats.
type seeded struct{ r *rand.ChaCha8 }

func newSeeded(seed byte) *seeded {
	var s [32]byte
	s[0] = seed
	return &seeded{rand.NewChaCha8(s)}
}

func (s *seeded) Read(p []byte) (int, error) { return s.r.Read(p) }

var fastKDF = KDF{Type: "pbkdf2", Iterations: 1000}

// image is an in-memory device.
type image struct{ b []byte }

func (m *image) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *image) ReadAt(p []byte, off int64) (int, error) {
	if int(off) >= len(m.b) {
		return 0, fmt.Errorf("read past end")
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, fmt.Errorf("short read")
	}
	return n, nil
}

func TestBinaryHeaderLayout(t *testing.T) {
	// struct luks2_hdr_disk from cryptsetup's lib/luks2/luks2.h, in order.
	decl := []struct {
		name string
		size int
	}{
		{"magic", 6}, {"version", 2}, {"hdr_size", 8}, {"seqid", 8}, {"label", 48},
		{"checksum_alg", 32}, {"salt", 64}, {"uuid", 40}, {"subsystem", 48},
		{"hdr_offset", 8}, {"_padding", 184}, {"csum", 64}, {"_padding4096", 7 * 512},
	}
	ours := map[string]int{"magic": offMagic, "version": offVersion, "hdr_size": offHdrSize, "seqid": offSeqID,
		"label": offLabel, "checksum_alg": offCsumAlg, "salt": offSalt, "uuid": offUUID, "subsystem": offSubsystem,
		"hdr_offset": offHdrOffset, "csum": offCsum}
	off := 0
	for _, f := range decl {
		if o, ok := ours[f.name]; ok && o != off {
			t.Errorf("%s at %d, constant %d", f.name, off, o)
		}
		off += f.size
	}
	if off != binHeaderSize {
		t.Errorf("struct is %d bytes, want %d", off, binHeaderSize)
	}

	m := &image{}
	if _, err := Format(m, []byte("pw"), FormatOptions{KDF: fastKDF, Label: "lbl", UUID: "01234567-89ab-4cde-8f01-23456789abcd", Rand: newSeeded(1)}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []struct {
		magic string
		off   uint64
	}{{magic1, 0}, {magic2, defaultHdrSize}} {
		b := m.b[want.off : want.off+binHeaderSize]
		if string(b[0:6]) != want.magic || binary.BigEndian.Uint16(b[6:]) != 2 || binary.BigEndian.Uint64(b[8:]) != defaultHdrSize ||
			binary.BigEndian.Uint64(b[16:]) != 1 || cString(b[24:72]) != "lbl" || cString(b[72:104]) != "sha256" ||
			cString(b[168:208]) != "01234567-89ab-4cde-8f01-23456789abcd" || binary.BigEndian.Uint64(b[256:]) != want.off {
			t.Errorf("header %d fields wrong: %x", i, b[:264])
		}
		if !bytes.Equal(b[264:448], make([]byte, 184)) || !bytes.Equal(b[448+32:512], make([]byte, 32)) {
			t.Errorf("header %d: padding or checksum tail not zero", i)
		}
	}
}

func TestAFSplitMerge(t *testing.T) {
	for _, hf := range []func() hash.Hash{sha1.New, sha256.New, sha512.New} {
		for _, ks := range []int{16, 32, 64, 33} {
			key := make([]byte, ks)
			newSeeded(byte(ks)).Read(key)
			m, err := afSplit(key, 17, hf, newSeeded(9))
			if err != nil {
				t.Fatal(err)
			}
			if got := afMerge(m, ks, 17, hf); !bytes.Equal(got, key) {
				t.Fatalf("key size %d hash %d: merge gives %x, want %x", ks, hf().Size(), got, key)
			}
			m[3] ^= 1
			if got := afMerge(m, ks, 17, hf); bytes.Equal(got, key) {
				t.Fatalf("a flipped stripe byte still merges to the key")
			}
		}
	}
}

func TestFormatUnlock(t *testing.T) {
	kdfs := map[string]KDF{
		"pbkdf2 sha256": fastKDF,
		"pbkdf2 sha512": {Type: "pbkdf2", Hash: "sha512", Iterations: 1000},
		"argon2id":      {Type: "argon2id", Time: 1, MemoryKiB: 1024, CPUs: 1},
		"argon2i":       {Type: "argon2i", Time: 1, MemoryKiB: 1024, CPUs: 2},
	}
	for name, kdf := range kdfs {
		t.Run(name, func(t *testing.T) {
			m := &image{}
			v, err := Format(m, []byte("correct horse"), FormatOptions{KDF: kdf, SectorSize: 512})
			if err != nil {
				t.Fatal(err)
			}
			h, err := ReadHeader(m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := h.Unlock(context.Background(), []byte("correct horse"))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Key, v.Key) || got.Offset != defaultDataOffset || got.SectorSize != 512 || got.Cipher != "aes-xts-plain64" || got.Size != 0 || got.Integrity != "" {
				t.Fatalf("unlocked %+v, formatted %+v", got, v)
			}
			_, err = h.Unlock(context.Background(), []byte("wrong horse"))
			if !errors.Is(err, ErrWrongKey) || !errors.Is(err, errdefs.ErrPermissionDenied) {
				t.Fatalf("wrong passphrase: %v", err)
			}
		})
	}
}

func TestHeaderRecovery(t *testing.T) {
	m := &image{}
	v, err := Format(m, []byte("pw"), FormatOptions{KDF: fastKDF})
	if err != nil {
		t.Fatal(err)
	}
	unlock := func(img *image) error {
		h, err := ReadHeader(img)
		if err != nil {
			return err
		}
		got, err := h.Unlock(context.Background(), []byte("pw"))
		if err != nil {
			return err
		}
		if !bytes.Equal(got.Key, v.Key) {
			return fmt.Errorf("wrong volume key")
		}
		return nil
	}
	clone := func() *image { return &image{append([]byte(nil), m.b...)} }

	t.Run("primary corrupt", func(t *testing.T) {
		c := clone()
		c.b[binHeaderSize+10] ^= 1 // JSON area of the primary
		if err := unlock(c); err != nil {
			t.Fatalf("secondary header not used: %v", err)
		}
	})
	t.Run("secondary corrupt", func(t *testing.T) {
		c := clone()
		c.b[defaultHdrSize+100] ^= 1
		if err := unlock(c); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("both corrupt", func(t *testing.T) {
		c := clone()
		c.b[binHeaderSize+10] ^= 1
		c.b[defaultHdrSize+binHeaderSize+10] ^= 1
		if _, err := ReadHeader(c); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "checksum") {
			t.Fatalf("error %v, want a checksum error", err)
		}
	})
	t.Run("keyslot area corrupt", func(t *testing.T) {
		c := clone()
		c.b[keyslotsOffset+5] ^= 1
		if err := unlock(c); !errors.Is(err, ErrWrongKey) {
			t.Fatalf("error %v, want wrong key (digest mismatch)", err)
		}
	})
	t.Run("not luks", func(t *testing.T) {
		if _, err := ReadHeader(&image{make([]byte, 8<<20)}); err == nil {
			t.Fatal("zeros parsed as LUKS2")
		}
	})
	t.Run("higher seqid wins", func(t *testing.T) {
		c := clone()
		// Re-sign the secondary with seqid 2 and a changed label.
		sec := c.b[defaultHdrSize : 2*defaultHdrSize]
		binary.BigEndian.PutUint64(sec[offSeqID:], 2)
		copy(sec[offLabel:], "newer")
		clear(sec[offCsum : offCsum+csumLen])
		sum := sha256.Sum256(sec)
		copy(sec[offCsum:], sum[:])
		h, err := ReadHeader(c)
		if err != nil {
			t.Fatal(err)
		}
		if h.SeqID != 2 || h.Label != "newer" {
			t.Fatalf("header seqid %d label %q, want the secondary's", h.SeqID, h.Label)
		}
	})
}

func TestFormatErrors(t *testing.T) {
	for name, o := range map[string]FormatOptions{
		"sector":      {KDF: fastKDF, SectorSize: 1024},
		"data offset": {KDF: fastKDF, DataOffset: 4096},
		"kdf":         {KDF: KDF{Type: "scrypt"}},
		"uuid":        {KDF: fastKDF, UUID: "short"},
		"label":       {KDF: fastKDF, Label: strings.Repeat("l", 48)},
	} {
		if _, err := Format(&image{}, []byte("pw"), o); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
	if _, err := Format(&image{}, nil, FormatOptions{KDF: fastKDF}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("empty passphrase: %v", err)
	}
}

func requireCryptsetup(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("cryptsetup"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("cryptsetup not found (CI=true: .ci/run must install cryptsetup-bin)")
		}
		t.Skip("cryptsetup not installed (apt-get install cryptsetup-bin)")
	}
}

func cryptsetup(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("cryptsetup", args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// dumpVolumeKey asks cryptsetup for the volume key of img.
func dumpVolumeKey(t *testing.T, img, pass string) []byte {
	t.Helper()
	out, err := cryptsetup(t, pass, "luksDump", "--dump-volume-key", "--batch-mode", "--key-file", "-", img)
	if err != nil {
		t.Fatalf("luksDump --dump-volume-key: %v\n%s", err, out)
	}
	_, after, ok := strings.Cut(out, "MK dump:")
	if !ok {
		t.Fatalf("no MK dump in:\n%s", out)
	}
	key, err := hex.DecodeString(strings.Join(regexp.MustCompile(`\b[0-9a-f]{2}\b`).FindAllString(after, -1), ""))
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func newImageFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

func unlockFile(t *testing.T, p, pass string) (*Header, *Volume, error) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h, err := ReadHeader(f)
	if err != nil {
		return nil, nil, err
	}
	v, err := h.Unlock(context.Background(), []byte(pass))
	return h, v, err
}

// TestReadsCryptsetupHeaders opens images made by cryptsetup luksFormat.
func TestReadsCryptsetupHeaders(t *testing.T) {
	requireCryptsetup(t)
	tests := []struct {
		name   string
		args   []string
		sector uint32
		offset uint64
	}{
		{"pbkdf2 4096", []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--sector-size", "4096"}, 4096, 16 << 20},
		{"pbkdf2 512 sha512", []string{"--pbkdf", "pbkdf2", "--hash", "sha512", "--pbkdf-force-iterations", "1000", "--sector-size", "512"}, 512, 16 << 20},
		{"argon2id", []string{"--pbkdf", "argon2id", "--pbkdf-memory", "1024", "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "1"}, 4096, 16 << 20},
		{"argon2i aes-128", []string{"--pbkdf", "argon2i", "--pbkdf-memory", "2048", "--pbkdf-force-iterations", "4", "--pbkdf-parallel", "2", "--key-size", "256"}, 4096, 16 << 20},
		{"offset and label", []string{"--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--offset", "65536", "--label", "cova"}, 4096, 65536 * 512},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := newImageFile(t, 40<<20)
			args := append([]string{"luksFormat", "--batch-mode", "--type", "luks2"}, tc.args...)
			if out, err := cryptsetup(t, "s3cret", append(args, img, "-")...); err != nil {
				t.Fatalf("luksFormat: %v\n%s", err, out)
			}
			h, v, err := unlockFile(t, img, "s3cret")
			if err != nil {
				t.Fatal(err)
			}
			if want := dumpVolumeKey(t, img, "s3cret"); !bytes.Equal(v.Key, want) {
				t.Fatalf("volume key %x, cryptsetup %x", v.Key, want)
			}
			if v.SectorSize != tc.sector || v.Offset != tc.offset || v.Cipher != "aes-xts-plain64" {
				t.Fatalf("segment %+v, want sector %d offset %d", v, tc.sector, tc.offset)
			}
			if out, _ := cryptsetup(t, "", "luksUUID", img); strings.TrimSpace(out) != h.UUID {
				t.Fatalf("uuid %q, cryptsetup %q", h.UUID, out)
			}
			if _, _, err := unlockFile(t, img, "wrong"); !errors.Is(err, ErrWrongKey) {
				t.Fatalf("wrong passphrase: %v", err)
			}
		})
	}
	t.Run("second keyslot", func(t *testing.T) {
		img := newImageFile(t, 20<<20)
		if out, err := cryptsetup(t, "one", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", img, "-"); err != nil {
			t.Fatalf("luksFormat: %v\n%s", err, out)
		}
		newKey := filepath.Join(t.TempDir(), "k2")
		os.WriteFile(newKey, []byte("two"), 0o600)
		if out, err := cryptsetup(t, "one", "luksAddKey", "--batch-mode", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", "-", img, newKey); err != nil {
			t.Fatalf("luksAddKey: %v\n%s", err, out)
		}
		h, v2, err := unlockFile(t, img, "two")
		if err != nil {
			t.Fatal(err)
		}
		_, v1, err := unlockFile(t, img, "one")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(v1.Key, v2.Key) || len(h.Keyslots()) != 2 || h.SeqID < 2 {
			t.Fatalf("keyslots %v seqid %d, keys equal %v", h.Keyslots(), h.SeqID, bytes.Equal(v1.Key, v2.Key))
		}
	})
}

// TestCryptsetupReadsOurHeaders checks Format's output with cryptsetup.
func TestCryptsetupReadsOurHeaders(t *testing.T) {
	requireCryptsetup(t)
	for name, o := range map[string]FormatOptions{
		"pbkdf2":    {KDF: fastKDF},
		"argon2id":  {KDF: KDF{Type: "argon2id", Time: 4, MemoryKiB: 1024, CPUs: 1}},
		"integrity": {KDF: fastKDF, Integrity: IntegrityHMACSHA256},
	} {
		t.Run(name, func(t *testing.T) {
			img := newImageFile(t, 20<<20)
			f, err := os.OpenFile(img, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			o.Label = "cova-test"
			v, err := Format(f, []byte("s3cret"), o)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			out, err := cryptsetup(t, "", "luksDump", img)
			if err != nil {
				t.Fatalf("luksDump: %v\n%s", err, out)
			}
			wants := []string{"Version:       \t2", "Label:         \tcova-test", "offset: 16777216 [bytes]", "sector: 4096 [bytes]", "cipher: aes-xts-plain64", "AF stripes: 4000"}
			if o.Integrity != "" {
				wants = append(wants, "integrity: hmac(sha256)", "Key:        768 bits", "Cipher key: 512 bits")
			}
			for _, want := range wants {
				if !strings.Contains(out, want) {
					t.Errorf("luksDump lacks %q:\n%s", want, out)
				}
			}
			if out, err := cryptsetup(t, "s3cret", "open", "--test-passphrase", "--key-file", "-", img); err != nil {
				t.Fatalf("cryptsetup rejects the passphrase: %v\n%s", err, out)
			}
			if _, err := cryptsetup(t, "wrong", "open", "--test-passphrase", "--key-file", "-", img); err == nil {
				t.Fatal("cryptsetup accepts a wrong passphrase")
			}
			if got := dumpVolumeKey(t, img, "s3cret"); !bytes.Equal(got, v.Key) {
				t.Fatalf("cryptsetup volume key %x, ours %x", got, v.Key)
			}
			if out, err := cryptsetup(t, "", "repair", "--batch-mode", "--debug", img); err != nil || strings.Contains(out, "Repairing") {
				t.Fatalf("cryptsetup repair found something to fix: %v\n%s", err, out)
			}
		})
	}
}

// TestRewrittenSegmentCipherRefused rewrites the (unauthenticated) segment
// cipher to cipher_null and fixes both checksums, as a hostile host could.
func TestRewrittenSegmentCipherRefused(t *testing.T) {
	m := &image{}
	if _, err := Format(m, []byte("pw"), FormatOptions{KDF: fastKDF}); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0, defaultHdrSize} {
		area := m.b[off : off+defaultHdrSize]
		json := area[binHeaderSize:]
		i := bytes.Index(json, []byte(`"encryption":"aes-xts-plain64","sector_size"`))
		if i < 0 {
			t.Fatalf("segment cipher not found in %s", json[:200])
		}
		copy(json[i:], `"encryption":"cipher_null-ecb","sector_size"`) // same length
		clear(area[offCsum : offCsum+csumLen])
		sum := sha256.Sum256(area)
		copy(area[offCsum:], sum[:])
	}
	h, err := ReadHeader(m)
	if err != nil {
		t.Fatalf("rewritten header does not parse: %v", err)
	}
	if _, err := h.Unlock(context.Background(), []byte("pw")); !errors.Is(err, errdefs.ErrNotImplemented) || !strings.Contains(err.Error(), "cipher_null") {
		t.Fatalf("null-cipher segment: %v, want refused", err)
	}
}

// rewriteJSON edits the JSON metadata of both headers of m and fixes their
// checksums, as a hostile host (or another LUKS2 writer) could.
func rewriteJSON(t *testing.T, m *image, edit func(string) string) {
	t.Helper()
	for _, off := range []int{0, defaultHdrSize} {
		area := m.b[off : off+defaultHdrSize]
		js := area[binHeaderSize:]
		text := edit(cString(js))
		if len(text) >= len(js) {
			t.Fatalf("edited JSON of %d bytes does not fit", len(text))
		}
		clear(js)
		copy(js, text)
		clear(area[offCsum : offCsum+csumLen])
		sum := sha256.Sum256(area)
		copy(area[offCsum:], sum[:])
	}
}

// TestIntegritySegments: segments with integrity as cryptsetup writes them
// for --integrity hmac-sha256 unlock (with a 96-byte key: XTS then HMAC);
// other integrity types, journal options and ciphers are refused.
func TestIntegritySegments(t *testing.T) {
	const cryptsetupIntegrity = `"integrity":{"type":"hmac(sha256)","journal_encryption":"none","journal_integrity":"none"}`
	tests := []struct {
		name      string
		edit      func(string) string
		wantErr   func(error) bool
		text      string
		wantCiph  string
		integrity string
	}{
		{"as formatted", nil, nil, "", "aes-xts-plain64", IntegrityHMACSHA256},
		{"aes-xts-random", func(s string) string {
			return strings.Replace(s, `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"aes-xts-random","sector_size"`, 1)
		}, nil, "", "aes-xts-random", IntegrityHMACSHA256},
		{"aead type", func(s string) string { return strings.Replace(s, `"type":"hmac(sha256)"`, `"type":"aead"`, 1) }, errdefs.IsNotImplemented, `integrity "aead"`, "", ""},
		{"journal encryption", func(s string) string {
			return strings.Replace(s, `"journal_encryption":"none"`, `"journal_encryption":"ctr(aes)"`, 1)
		}, errdefs.IsNotImplemented, "journal_encryption", "", ""},
		{"integrity not an object", func(s string) string { return strings.Replace(s, cryptsetupIntegrity, `"integrity":"hmac(sha256)"`, 1) }, errdefs.IsInvalidArgument, "segment integrity", "", ""},
		{"random IV without integrity", func(s string) string {
			s = strings.Replace(s, ","+cryptsetupIntegrity, "", 1)
			return strings.Replace(s, `"encryption":"aes-xts-plain64","sector_size"`, `"encryption":"aes-xts-random","sector_size"`, 1)
		}, errdefs.IsInvalidArgument, "without integrity", "", ""},
		{"integrity dropped", func(s string) string { return strings.Replace(s, ","+cryptsetupIntegrity, "", 1) }, errdefs.IsInvalidArgument, "96-byte volume key", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &image{}
			v, err := Format(m, []byte("pw"), FormatOptions{KDF: fastKDF, Integrity: IntegrityHMACSHA256})
			if err != nil {
				t.Fatal(err)
			}
			if len(v.Key) != 96 || !strings.Contains(string(m.b[binHeaderSize:defaultHdrSize]), cryptsetupIntegrity) {
				t.Fatalf("formatted key %d bytes; JSON lacks %s", len(v.Key), cryptsetupIntegrity)
			}
			if tc.edit != nil {
				rewriteJSON(t, m, tc.edit)
			}
			h, err := ReadHeader(m)
			if err != nil {
				t.Fatal(err)
			}
			got, err := h.Unlock(context.Background(), []byte("pw"))
			if tc.wantErr != nil {
				if !tc.wantErr(err) || !strings.Contains(err.Error(), tc.text) {
					t.Fatalf("got %v, want an error with %q", err, tc.text)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Key, v.Key) || got.Cipher != tc.wantCiph || got.Integrity != tc.integrity {
				t.Fatalf("unlocked cipher %q integrity %q key equal %v", got.Cipher, got.Integrity, bytes.Equal(got.Key, v.Key))
			}
		})
	}
	if _, err := Format(&image{}, []byte("pw"), FormatOptions{KDF: fastKDF, Integrity: "aead"}); !errdefs.IsInvalidArgument(err) {
		t.Fatalf("Format with integrity aead: %v", err)
	}
}
