package agent

import (
	"context"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
)

// sealedPrefix marks a CoCo sealed secret.
const sealedPrefix = "sealed."

// unsealEnv replaces every env value that is a sealed secret with its
// plaintext. Unlike the reference, which only warns, a secret that cannot be
// unsealed fails the request: the workload must not start without it. Error
// messages name the variable, never a value.
func (a *Agent) unsealEnv(ctx context.Context, field string, env []string) error {
	for i, e := range env {
		name, value, ok := strings.Cut(e, "=")
		if !ok || !strings.HasPrefix(value, sealedPrefix) {
			continue
		}
		if a.opts.Unseal == nil {
			return fmt.Errorf("%s[%d] (%s) is a sealed secret but no Confidential Data Hub is configured: %w", field, i, name, errdefs.ErrFailedPrecondition)
		}
		plain, err := a.opts.Unseal(ctx, value)
		if err != nil {
			return fmt.Errorf("unseal %s[%d] (%s): %w", field, i, name, err)
		}
		env[i] = name + "=" + string(plain)
	}
	return nil
}
