package main

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cova-project/cova/rootfs/verity"
)

// TestVerityCommand appends a tree to an image, checks the printed root hash
// against an independent Verify of the file, and that a flipped data byte
// is caught by Verify with the printed parameters.
func TestVerityCommand(t *testing.T) {
	img := filepath.Join(t.TempDir(), "data.img")
	data := bytes.Repeat([]byte("cova verity test data "), 4096*8/22+1)[:4096*8]
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := run(t.Context(), []string{"verity", "--image", img, "--salt", "00112233", "--uuid", "12345678-1234-4234-8234-123456789abc"}, &out, &errb); err != nil {
		t.Fatalf("%v: %s", err, errb.String())
	}
	var got struct {
		RootHash   string   `json:"root_hash"`
		Salt       string   `json:"salt"`
		HashOffset int64    `json:"hash_offset"`
		DataBlocks uint64   `json:"data_blocks"`
		Options    []string `json:"kata_blk_options"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("output %q: %v", out.String(), err)
	}
	if got.HashOffset != int64(len(data)) || got.DataBlocks != 8 || got.Salt != "00112233" || len(got.RootHash) != 64 {
		t.Fatalf("params %+v", got)
	}
	if !strings.Contains(strings.Join(got.Options, " "), "X-kata.dmverity.roothash="+got.RootHash) {
		t.Fatalf("storage options %v", got.Options)
	}
	sb, err := verity.ReadSuperblock(img, got.HashOffset)
	if err != nil {
		t.Fatal(err)
	}
	if sb.RootHash, err = hex.DecodeString(got.RootHash); err != nil {
		t.Fatal(err)
	}
	if err := verity.Verify(img, img, sb); err != nil {
		t.Fatalf("Verify of the formatted image with the printed root hash: %v", err)
	}
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{'X'}, 5000)
	f.Close()
	if err := verity.Verify(img, img, sb); err == nil {
		t.Fatal("a flipped data byte verified")
	}
}
