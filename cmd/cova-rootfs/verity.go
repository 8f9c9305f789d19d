package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/cova-project/cova/mount"
	"github.com/cova-project/cova/rootfs/verity"
)

// cmdVerity appends a dm-verity hash tree (veritysetup's format 1, sha256,
// 4 KiB blocks, superblock) to an image, or writes it to a separate file,
// and prints what a guest needs: the root hash, the salt, the hash offset,
// and, for an appended tree, the Kata blk-storage options that mount it
// verified (X-kata.dmverity-enabled, X-kata.dmverity.roothash, ...).
func cmdVerity(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verity", flag.ContinueOnError)
	fs.SetOutput(stderr)
	image := fs.String("image", "", "data image (e.g. an ext4 file system); its size must be a multiple of 4096 (required)")
	hash := fs.String("hash", "", "write the hash tree here instead of appending it to --image")
	saltHex := fs.String("salt", "", "salt in hex (default: 32 random bytes; \"-\" for none)")
	uuid := fs.String("uuid", "", "superblock UUID (default: random)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *image == "" || fs.NArg() > 0 {
		return errors.New("verity: --image FILE is required and takes no arguments")
	}
	opts := verity.Options{UUID: *uuid}
	switch *saltHex {
	case "":
	case "-":
		opts.NoSalt = true
	default:
		var b []byte
		if _, err := fmt.Sscanf(*saltHex, "%x", &b); err != nil || len(b) == 0 {
			return fmt.Errorf("verity: --salt %q is not hex", *saltHex)
		}
		opts.Salt = b
	}
	hashPath := *hash
	if hashPath == "" {
		hashPath = *image
	}
	p, err := verity.Format(*image, hashPath, opts)
	if err != nil {
		return err
	}
	out := map[string]any{
		"root_hash": p.RootHashHex(), "salt": p.SaltHex(), "hash_offset": p.HashOffset,
		"data_blocks": p.DataBlocks, "hash_file": hashPath,
	}
	if hashPath == *image {
		// The blk storage options that mount the image verified (the tree
		// follows the data, so hashoffset is also the data size).
		o := []string{mount.OptionVerityEnabled + "=true", mount.OptionVerityPrefix + "roothash=" + p.RootHashHex(),
			fmt.Sprintf("%shashoffset=%d", mount.OptionVerityPrefix, p.HashOffset)}
		if s := p.SaltHex(); s != "" && s != "-" {
			o = append(o, mount.OptionVerityPrefix+"salt="+s)
		}
		out["kata_blk_options"] = o
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
