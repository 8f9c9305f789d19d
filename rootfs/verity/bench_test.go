package verity

import (
	"os"
	"path/filepath"
	"testing"
)

// BenchmarkFormat formats a 64 MiB image (sha256 bound: ~1.4 GB/s here).
func BenchmarkFormat(b *testing.B) {
	dir := b.TempDir()
	data := filepath.Join(dir, "data")
	f, err := os.Create(data)
	if err != nil {
		b.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		b.Fatal(err)
	}
	f.Close()
	b.SetBytes(64 << 20)
	for b.Loop() {
		if _, err := Format(data, filepath.Join(dir, "hash"), Options{}); err != nil {
			b.Fatal(err)
		}
	}
}
