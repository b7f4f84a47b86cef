#!/usr/bin/env bash
# Runs weft's whole test suite the way CI does: installs what the tests need
# (scripts/test-deps.sh: etcd, iptables), checks formatting and vet, then
# runs every package's tests with the race detector. Extra arguments go to
# `go test` (e.g. scripts/test.sh -run Kubectl ./test/e2e/).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/test-deps.sh
# A real Nomad agent for the Nomad registry test (built from Go modules).
if [ -z "${WEFT_NOMAD_BIN:-}" ]; then
	WEFT_NOMAD_BIN=$(scripts/nomad.sh)
	export WEFT_NOMAD_BIN
fi

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt would change:" >&2
	echo "$unformatted" >&2
	exit 1
fi
go vet ./...

if [ "$#" -eq 0 ]; then
	set -- ./...
fi
exec go test -race -count=1 -timeout 30m "$@"
