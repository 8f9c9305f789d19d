// Package copyfile is a path-safety package: pathjoin does not check it.
package copyfile

import "path/filepath"

func join(root, p string) string { return filepath.Join(root, p) }
