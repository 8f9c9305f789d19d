// Package clean is outside every path scope and follows the error rules:
// no analyzer reports anything here.
package clean

import (
	"errors"
	"io"
	"os"
	"path/filepath"
)

func outOfScope(dir, name string) (*os.File, error) {
	f, err := os.Create(filepath.Join(dir, name))
	if errors.Is(err, io.EOF) {
		return nil, err
	}
	return f, err
}
