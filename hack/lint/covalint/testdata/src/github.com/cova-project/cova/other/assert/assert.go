// Package assert is outside the path scopes; errassert applies everywhere
// in the module.
package assert

import (
	"errors"
	"fmt"
)

// MyErr is an error type.
type MyErr struct{ msg string }

func (e *MyErr) Error() string { return e.msg }

// As asserts: fine inside an As method.
func (e *MyErr) As(target any) bool {
	_, ok := target.(error)
	return ok
}

func assert(err error, v any) string {
	if me, ok := err.(*MyErr); ok { // want `type assertion on error err: use errors.As`
		return me.msg
	}
	switch e := err.(type) { // want `type switch on error err: use errors.As`
	case *MyErr:
		return e.msg
	}
	if s, ok := v.(fmt.Stringer); ok { // not an error: fine
		return s.String()
	}
	var me *MyErr
	if errors.As(err, &me) {
		return me.msg
	}
	return ""
}
