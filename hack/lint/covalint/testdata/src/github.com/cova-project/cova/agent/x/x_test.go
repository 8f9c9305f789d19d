package x

import (
	"os"
	"path/filepath"
)

func helperInTest(dir, name string) (*os.File, error) {
	return os.Create(filepath.Join(dir, name)) // test files are not checked
}
