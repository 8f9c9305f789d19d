// Package z is outside the pathjoin scope (only imagepull/unpack is in it).
package z

import "path/filepath"

func join(dir, name string) string { return filepath.Join(dir, name) }
