// Package y is in the oscreate scope but not the pathjoin one.
package y

import (
	"os"
	"path/filepath"
)

func create(dir, name string) (*os.File, error) {
	return os.Create(filepath.Join(dir, name)) // want `os.Create follows symlinks`
}
