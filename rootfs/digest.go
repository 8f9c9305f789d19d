package rootfs

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// Digests are the hex digests of one artifact.
type Digests struct {
	SHA256 string `json:"sha256"`
	SHA384 string `json:"sha384"`
}

// DigestReader hashes everything r yields.
func DigestReader(r io.Reader) (Digests, error) {
	h256, h384 := sha256.New(), sha512.New384()
	if _, err := io.Copy(io.MultiWriter(h256, h384), r); err != nil {
		return Digests{}, err
	}
	return Digests{SHA256: hex.EncodeToString(h256.Sum(nil)), SHA384: hex.EncodeToString(h384.Sum(nil))}, nil
}

// DigestFile hashes the file at p.
func DigestFile(p string) (Digests, error) {
	f, err := os.Open(p)
	if err != nil {
		return Digests{}, fmt.Errorf("digest: %w", err)
	}
	defer f.Close()
	d, err := DigestReader(f)
	if err != nil {
		return Digests{}, fmt.Errorf("digest of %s: %w", p, err)
	}
	return d, nil
}
