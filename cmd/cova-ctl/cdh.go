package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/containerd/ttrpc"

	"github.com/cova-project/cova/agent/transport"
	cdhpb "github.com/cova-project/cova/protocols/cdh"
)

// Confidential Data Hub commands: they talk to the CDH socket in the guest
// (package api services), not to the agent API.

const (
	defaultCDHAddr = "unix:///run/confidential-containers/cdh.sock"
	// maxSecretInput bounds unseal @FILE (ttrpc messages are at most 4 MiB).
	maxSecretInput = 1 << 20
)

type cdhFlags struct {
	addr   string
	bundle string
	out    string
	// secure-mount
	volumeType string
	options    keyValues
	flags      stringList
}

var cdhFlagsByOpts sync.Map // *options -> *cdhFlags

func cdhFlagsOf(o *options) *cdhFlags {
	v, _ := cdhFlagsByOpts.LoadOrStore(o, &cdhFlags{options: keyValues{}})
	return v.(*cdhFlags)
}

func cdhAddrFlag(fs *flag.FlagSet, f *cdhFlags) {
	fs.StringVar(&f.addr, "cdh", defaultCDHAddr, "Confidential Data Hub address (unix:///PATH)")
}

func oneArg(what string) func(*options) error {
	return func(o *options) error {
		if len(o.args) != 1 || o.args[0] == "" {
			return usagef("want exactly one %s", what)
		}
		return nil
	}
}

var pullCommand = command{
	name: "pull", args: "IMAGE --bundle DIR [--cdh ADDR]",
	help: "CDH PullImage: pull IMAGE in the guest (signature policy, decryption) and mount it at DIR/rootfs; prints the manifest digest",
	flags: func(fs *flag.FlagSet, o *options) {
		f := cdhFlagsOf(o)
		fs.StringVar(&f.bundle, "bundle", "", "bundle directory in the guest, under the Kata root (required)")
		cdhAddrFlag(fs, f)
	},
	check: func(o *options) error {
		if err := oneArg("image reference")(o); err != nil {
			return err
		}
		if cdhFlagsOf(o).bundle == "" {
			return usagef("--bundle is required")
		}
		return nil
	},
	run: cmdPull,
}

var resourceCommand = command{
	name: "resource", args: "kbs:///REPO/TYPE/TAG [--out FILE] [--cdh ADDR]",
	help: "CDH GetResource: fetch a resource from the KBS (after attestation) and write it to stdout or FILE",
	flags: func(fs *flag.FlagSet, o *options) {
		f := cdhFlagsOf(o)
		fs.StringVar(&f.out, "out", "", "write the resource to FILE (mode 0600) instead of stdout")
		cdhAddrFlag(fs, f)
	},
	check: oneArg("resource URI"),
	run:   cmdResource,
}

var unsealCommand = command{
	name: "unseal", args: "sealed.…|@FILE [--out FILE] [--cdh ADDR]",
	help: "CDH UnsealSecret: unseal a sealed secret (signature checked) and write the plaintext to stdout or FILE",
	flags: func(fs *flag.FlagSet, o *options) {
		f := cdhFlagsOf(o)
		fs.StringVar(&f.out, "out", "", "write the plaintext to FILE (mode 0600) instead of stdout")
		cdhAddrFlag(fs, f)
	},
	check: oneArg("sealed secret"),
	run:   cmdUnseal,
}

// keyValues is a repeatable KEY=VALUE flag.
type keyValues map[string]string

func (kv keyValues) String() string { return fmt.Sprint(map[string]string(kv)) }

func (kv keyValues) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want KEY=VALUE", s)
	}
	if _, dup := kv[k]; dup {
		return fmt.Errorf("%q: option %s given twice", s, k)
	}
	kv[k] = v
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

var secureMountCommand = command{
	name: "secure-mount", args: "MOUNT_POINT --option KEY=VALUE... [--type block-device] [--flag F]... [--cdh ADDR]",
	help: "CDH SecureMount: set up an encrypted volume (options as guest-components' block-device: deviceId|devicePath,\n" +
		"sourceType=empty|encrypted, encryptionType=luks2, key=sealed.…|kbs:///…|file:///…, dataIntegrity, mapperName,\n" +
		"targetType, filesystemType, mkfsOpts) at MOUNT_POINT in the guest; prints where it is mounted",
	flags: func(fs *flag.FlagSet, o *options) {
		m := cdhFlagsOf(o)
		fs.StringVar(&m.volumeType, "type", "block-device", "volume type")
		fs.Var(m.options, "option", "volume option KEY=VALUE (repeatable)")
		fs.Var(&m.flags, "flag", "mount flag (repeatable)")
		cdhAddrFlag(fs, m)
	},
	check: func(o *options) error {
		if err := oneArg("mount point")(o); err != nil {
			return err
		}
		if len(cdhFlagsOf(o).options) == 0 {
			return usagef("at least one --option KEY=VALUE is required")
		}
		return nil
	},
	run: cmdSecureMount,
}

// dialsCDH reports whether c talks to the CDH socket itself.
func dialsCDH(c *command) bool {
	return c != nil && (c.name == pullCommand.name || c.name == resourceCommand.name || c.name == unsealCommand.name || c.name == secureMountCommand.name)
}

func cmdSecureMount(ctx context.Context, a *app, o *options) error {
	m := cdhFlagsOf(o)
	c, err := a.cdhClient(ctx, m.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	// Opening a LUKS2 volume runs its KDF (argon2 may take seconds) and an
	// empty one is formatted: no per-call timeout, as for pull.
	req := &cdhpb.SecureMountRequest{VolumeType: m.volumeType, Options: m.options, Flags: m.flags, MountPoint: o.args[0]}
	if _, err := longCall(ctx, "SecureMount", func(ctx context.Context) (*cdhpb.SecureMountResponse, error) {
		return cdhpb.NewSecureMountServiceClient(c).SecureMount(ctx, req)
	}); err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, o.args[0])
	return nil
}

// cdhClient dials the CDH.
func (a *app) cdhClient(ctx context.Context, addr string) (*ttrpc.Client, error) {
	dctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	conn, err := transport.Dial(dctx, addr)
	if err != nil {
		return nil, fmt.Errorf("connecting to the Confidential Data Hub at %s: %w", addr, err)
	}
	return ttrpc.NewClient(conn), nil
}

// writeOut writes b to --out (0600, created anew) or stdout.
func (a *app) writeOut(f *cdhFlags, b []byte) error {
	if f.out == "" {
		_, err := a.stdout.Write(b)
		return err
	}
	fh, err := os.OpenFile(f.out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("--out: %w", err)
	}
	if _, err := fh.Write(b); err != nil {
		fh.Close()
		return fmt.Errorf("--out: %w", err)
	}
	return fh.Close()
}

func cmdPull(ctx context.Context, a *app, o *options) error {
	f := cdhFlagsOf(o)
	c, err := a.cdhClient(ctx, f.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := longCall(ctx, "PullImage", func(ctx context.Context) (*cdhpb.ImagePullResponse, error) {
		return cdhpb.NewImagePullServiceClient(c).PullImage(ctx, &cdhpb.ImagePullRequest{ImageUrl: o.args[0], BundlePath: f.bundle})
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(a.stdout, r.ManifestDigest)
	return nil
}

func cmdResource(ctx context.Context, a *app, o *options) error {
	f := cdhFlagsOf(o)
	c, err := a.cdhClient(ctx, f.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := call(ctx, a, "GetResource", func(ctx context.Context) (*cdhpb.GetResourceResponse, error) {
		return cdhpb.NewGetResourceServiceClient(c).GetResource(ctx, &cdhpb.GetResourceRequest{ResourcePath: o.args[0]})
	})
	if err != nil {
		return err
	}
	return a.writeOut(f, r.Resource)
}

func cmdUnseal(ctx context.Context, a *app, o *options) error {
	f := cdhFlagsOf(o)
	secret := []byte(o.args[0])
	if name, ok := strings.CutPrefix(o.args[0], "@"); ok {
		fh, err := os.Open(name)
		if err != nil {
			return err
		}
		secret, err = io.ReadAll(io.LimitReader(fh, maxSecretInput+1))
		fh.Close()
		if err != nil {
			return err
		}
		if len(secret) > maxSecretInput {
			return fmt.Errorf("%s is larger than %d bytes", name, maxSecretInput)
		}
		secret = []byte(strings.TrimSpace(string(secret)))
	}
	c, err := a.cdhClient(ctx, f.addr)
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := call(ctx, a, "UnsealSecret", func(ctx context.Context) (*cdhpb.UnsealSecretOutput, error) {
		return cdhpb.NewSealedSecretServiceClient(c).UnsealSecret(ctx, &cdhpb.UnsealSecretInput{Secret: secret})
	})
	if err != nil {
		return err
	}
	return a.writeOut(f, r.Plaintext)
}
