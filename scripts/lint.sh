#!/usr/bin/env bash
# Static checks: gofmt, go vet, and staticcheck with the settings in
# staticcheck.conf (installed from the Go module proxy on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
STATICCHECK_VERSION=${STATICCHECK_VERSION:-v0.8.2}

unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" >&2; echo "$unformatted" >&2; exit 1
fi
go vet ./...
bin="$(go env GOPATH)/bin/staticcheck"
if [ ! -x "$bin" ]; then
	go install "honnef.co/go/tools/cmd/staticcheck@${STATICCHECK_VERSION}"
fi
"$bin" ./...
