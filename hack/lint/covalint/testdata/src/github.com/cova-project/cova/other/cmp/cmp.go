// Package cmp is outside the path scopes; errcompare applies everywhere in
// the module.
package cmp

import (
	"errors"
	"io"
)

// ErrGone is a sentinel.
var ErrGone = errors.New("gone")

// MyErr is an error type.
type MyErr struct{ msg string }

func (e *MyErr) Error() string { return e.msg }

// Is compares with a sentinel: fine inside an Is method.
func (e *MyErr) Is(target error) bool { return target == ErrGone }

func compare(err, other error) bool {
	if err == nil || err == other { // nil and non-sentinels: fine
		return false
	}
	if err == io.EOF { // want `error compared with == against io.EOF: use errors.Is`
		return true
	}
	if ErrGone != err { // want `error compared with != against cmp.ErrGone: use errors.Is`
		return true
	}
	switch err {
	case io.ErrUnexpectedEOF: // want `switch on an error with case io.ErrUnexpectedEOF: use errors.Is`
		return true
	}
	return errors.Is(err, ErrGone)
}
