package api_test

import (
	"context"
	"log/slog"

	"github.com/cova-project/cova/cdh/api"
	"github.com/cova-project/cova/cdh/kbs"
	"github.com/cova-project/cova/cdh/sealed"
	"github.com/cova-project/cova/imagepull/ocicrypt"
)

// The existing pieces fit the dependencies as they are.
var (
	_ api.Unsealer       = (*sealed.Unsealer)(nil)
	_ api.ResourceGetter = api.ResourceGetterFunc((*kbs.Client)(nil).Resource)
)

// Example wires the CDH API the way the agent does: the KBS client for
// resources and key-encryption keys, the sealed-secret unsealer, and the
// keyprovider unwrap of CoCo annotation packets. Dependencies left nil
// (here SecureMounter and ImagePuller) answer UNIMPLEMENTED.
func Example() {
	ctx := context.Background()
	kc, err := kbs.New(kbs.Config{URL: "https://kbs.example:8080"})
	if err != nil {
		return
	}
	res := api.ResourceGetterFunc(kc.Resource)
	srv, err := api.New(api.Config{
		Resources: res,
		Unsealer:  &sealed.Unsealer{Resources: res},
		KeyUnwrapper: api.KeyUnwrapperFunc(func(ctx context.Context, packet []byte) ([]byte, error) {
			return ocicrypt.UnwrapPacket(ctx, res, packet)
		}),
		Logger: slog.Default(),
	})
	if err != nil {
		return
	}
	// Serves on /run/confidential-containers/cdh.sock until ctx is done.
	_ = srv.Start(ctx, api.DefaultAddr)
}
