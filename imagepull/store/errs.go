package store

import "golang.org/x/sys/unix"

// errNotEmpty is what rename(2) returns when the target directory exists.
var errNotEmpty = unix.ENOTEMPTY
