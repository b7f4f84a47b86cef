// Package all links every HTTP filter of weft-proxy (RBAC, JWT
// authentication, …) into the binary that imports it: each filter package
// registers itself with internal/proxy/httpfilter in init.
package all

import (
	// JWT authentication: envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication.
	_ "github.com/weftmesh/weft/internal/proxy/httpfilter/jwtauthn"
	// RBAC: envoy.extensions.filters.http.rbac.v3.RBAC.
	_ "github.com/weftmesh/weft/internal/proxy/httpfilter/rbac"
)
