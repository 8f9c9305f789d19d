package aaservice

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/containerd/errdefs"

	"github.com/cova-project/cova/attester"
	"github.com/cova-project/cova/attester/azsnpvtpm"
	"github.com/cova-project/cova/attester/aztdxvtpm"
	"github.com/cova-project/cova/attester/azvtpm"
	"github.com/cova-project/cova/attester/cca"
	"github.com/cova-project/cova/attester/sample"
	"github.com/cova-project/cova/attester/se"
	"github.com/cova-project/cova/attester/snp"
	"github.com/cova-project/cova/attester/tdx"
	"github.com/cova-project/cova/attester/tpm"
	"github.com/cova-project/cova/attester/tsm"
)

// NewAttester builds the attester for tee on the real machine. env reads
// AA_TPM_DEVICE, AA_TPM_AK_HANDLE and AAEL_PATH (os.LookupEnv when nil).
// The Azure attesters use the vTPM (/dev/tpmrm0, else /dev/tpm0) and IMDS;
// cca needs configfs-tsm; se uses /dev/uv (linux/s390x only) and takes the
// SeAttestationRequest JSON as its report data.
// TEEs Cova has no attester for yet are an error wrapping
// errdefs.ErrNotImplemented: falling back to a weaker attester would hide
// the TEE from the verifier.
func NewAttester(tee attester.Tee, env attester.Env) (attester.Attester, error) {
	if env == nil {
		env = os.LookupEnv
	}
	switch tee {
	case attester.TeeSample:
		return sample.New(), nil
	case attester.TeeSampleDevice:
		return sample.NewDevice(), nil
	case attester.TeeTDX:
		return tdx.New(tdx.DefaultConfig(env)), nil
	case attester.TeeSNP:
		src, err := snp.DefaultSource()
		if err != nil {
			return nil, fmt.Errorf("snp attester: %w", err)
		}
		return snp.New(src), nil
	case attester.TeeAzSNPvTPM:
		return azsnpvtpm.New(azvtpm.New(nil, -1), &azvtpm.IMDSClient{}), nil
	case attester.TeeAzTDXvTPM:
		return aztdxvtpm.New(azvtpm.New(nil, -1), &azvtpm.IMDSClient{}), nil
	case attester.TeeCCA:
		client, err := tsm.DefaultClient()
		if err != nil {
			return nil, fmt.Errorf("cca attester: %w", err)
		}
		return cca.New(client), nil
	case attester.TeeSE:
		return se.New(se.DeviceUV{}), nil
	case attester.TeeTPM:
		dev, ok := attester.TPMDevice(env)
		if !ok {
			return nil, fmt.Errorf("tpm attester: no TPM device: %w", errdefs.ErrNotFound)
		}
		handle := attester.DefaultAKHandle
		if h, ok := env("AA_TPM_AK_HANDLE"); ok {
			v, err := attester.ParseAKHandle(h)
			if err != nil {
				return nil, fmt.Errorf("AA_TPM_AK_HANDLE %q: %w: %w", h, err, errdefs.ErrInvalidArgument)
			}
			handle = v
		}
		return tpm.New(tpm.Config{Open: tpm.DeviceOpener(dev), AKHandle: handle}), nil
	}
	return nil, fmt.Errorf("%s attester: %w", tee, errdefs.ErrNotImplemented)
}

// Detect detects the TEE in guest-components' order and builds its attester
// and the additional (device) attesters. With no TEE the primary attester is
// sample, with a warning.
func Detect(ctx context.Context, env attester.Env, log *slog.Logger) (primary attester.Attester, additional []attester.Attester, err error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	client, err := tsm.DefaultClient()
	if err != nil {
		client = nil // no configfs-tsm: the probes fall back to device nodes
	}
	probes := attester.DefaultProbes(client, env, azvtpm.New(nil, 0).DetectTee, log)
	tees := attester.Detect(ctx, probes)
	if tees[0] == attester.TeeSample {
		log.Warn("no TEE detected: using the sample attester (evidence proves nothing)")
	}
	if primary, err = NewAttester(tees[0], env); err != nil {
		return nil, nil, err
	}
	for _, t := range attester.DetectAdditional(ctx, probes) {
		a, err := NewAttester(t, env)
		if err != nil {
			return nil, nil, err
		}
		additional = append(additional, a)
	}
	return primary, additional, nil
}
