package resource

import (
	"errors"
	"strings"
)

// PathTemplateError says why an AuthorizationPolicy path that uses Istio's
// path templates ({*}: one path segment, {**}: any number of them) is not
// one Istio accepts; nil for a valid one, or a path without templates.
// The rules are Istio's: each operator is a whole path segment, {**} is
// the last operator, and no other '*' or braces appear.
func PathTemplateError(p string) error {
	if !strings.Contains(p, "{*}") && !strings.Contains(p, "{**}") {
		return nil
	}
	if !strings.HasPrefix(p, "/") {
		return errors.New("a path template must start with /")
	}
	seenAny := false
	for _, seg := range strings.Split(p[1:], "/") {
		switch {
		case seg == "{*}" || seg == "{**}":
			if seenAny {
				return errors.New("{**} must be the last operator of a path template")
			}
			seenAny = seg == "{**}"
		case strings.ContainsAny(seg, "{}*"):
			return errors.New("{*} and {**} must be whole path segments, with no other '*' or braces in the path")
		}
	}
	return nil
}
