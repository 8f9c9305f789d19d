package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/cova-project/cova/cdh/securemount"
	"github.com/cova-project/cova/imagepull"
	"github.com/cova-project/cova/mount/dm"
)

// newSecureMount builds the CDH's SecureMount service on the kernel's
// device mapper. Keys named by a request come from the KBS (resources) and
// the sealed-secret unsealer (unseal); either may be nil, and a request
// that needs it then fails with ErrFailedPrecondition. The one service
// serves both the CDH API (cdhDeps.mounter) and the blk/scsi storages with
// encryption_key=ephemeral (mount.Options.SecureMounter), so Unmount finds
// what either set up.
func newSecureMount(base *slog.Logger, resources imagepull.ResourceGetter, unseal func(context.Context, string) ([]byte, error)) (*securemount.Service, error) {
	log := base.With("component", "securemount")
	keys := securemount.KeyFuncs{UnsealFunc: unseal}
	if resources != nil {
		keys.ResourceFunc = resources.GetResource
	}
	svc, err := securemount.New(securemount.Config{
		Log:    log,
		Keys:   keys,
		Mapper: dm.New(log),
	})
	if err != nil {
		return nil, fmt.Errorf("secure mount: %w", err)
	}
	return svc, nil
}

// trustedStore moves the puller's layer store onto the trusted device (Kata's
// /dev/trusted_store) as an ephemeral dm-crypt volume (with dm-integrity
// when agent.secure_storage_integrity, kata's default, is on): the same
// volume type the blk driver makes for encryption_key=ephemeral, mounted at
// the store's root while the store is still empty.
func trustedStore(p *imagepull.Puller, secure *securemount.Service, integrity bool) func(ctx context.Context, major, minor uint32) error {
	return func(ctx context.Context, major, minor uint32) error {
		return p.Store().Remount(func(root string) error {
			_, err := secure.SecureMount(ctx, "block-device", securemount.EphemeralOptions(fmt.Sprintf("%d:%d", major, minor), integrity), nil, root)
			return err
		})
	}
}
