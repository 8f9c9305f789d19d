// Package x is in the pathjoin scope.
package x

import (
	"path"
	"path/filepath"

	securejoin "github.com/cyphar/filepath-securejoin"
)

const base = "/run/kata-containers"

func constants() string {
	return filepath.Join(base, "shared", "containers") // constants: fine
}

func hostID(root, id string) string {
	return filepath.Join(root, id) // want `filepath.Join of non-constant components: argument 1 \(id\), argument 0 \(root\)`
}

func slashPath(dir string) string {
	return path.Join(dir, "c") // want `path.Join of non-constant components: argument 0 \(dir\)`
}

func viaHelper(root, id string) (string, error) {
	p, err := securejoin.SecureJoin(root, id)
	if err != nil {
		return "", err
	}
	return filepath.Join(p, "rootfs"), nil // the helper's result: fine
}

func helperThenReassigned(root, id string) string {
	p, _ := securejoin.SecureJoin(root, id)
	p = id
	return filepath.Join(p, "rootfs") // want `argument 0 \(p\)`
}

func allowedJoin(root, id string) string {
	return filepath.Join(root, id) // allowed by the test's allowlist
}
