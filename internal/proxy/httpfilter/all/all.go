// Package all links every HTTP filter of weft-proxy (RBAC, JWT
// authentication, …) into the binary that imports it: each filter package
// registers itself with internal/proxy/httpfilter in init.
package all

import (
	_ "github.com/weftmesh/weft/internal/proxy/httpfilter/jwtauthn" // envoy.filters.http.jwt_authn
)
