#!/usr/bin/env bash
# Builds a real Nomad agent from its Go module (the version pinned below)
# for the Nomad registry's end-to-end test, once per machine, and prints
# the binary's path. Nomad's go.mod replaces its ./api with a local path,
# so the module is copied and that replace pointed at the published api
# module before building (about 4 minutes on 2 cores).
set -euo pipefail
NOMAD_VERSION=${NOMAD_VERSION:-v1.11.3}
NOMAD_API_VERSION=${NOMAD_API_VERSION:-v0.0.0-20261016150620-df630b26e78a}
cache=${WEFT_CACHE:-$HOME/.cache/weft}/nomad-${NOMAD_VERSION}
bin=$cache/nomad
if [ -x "$bin" ] && "$bin" version >/dev/null 2>&1; then
	echo "$bin"
	exit 0
fi
mkdir -p "$cache"
dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/hashicorp/nomad@${NOMAD_VERSION}" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
if [ -z "$dir" ] || [ ! -d "$dir" ]; then
	echo "nomad.sh: could not download github.com/hashicorp/nomad@${NOMAD_VERSION} from the Go module proxy" >&2
	exit 1
fi
src=$(mktemp -d)
trap 'chmod -R u+w "$src" 2>/dev/null; rm -rf "$src"' EXIT
cp -r "$dir/." "$src/"
chmod -R u+w "$src"
cd "$src"
go mod edit -replace "github.com/hashicorp/nomad/api=github.com/hashicorp/nomad/api@${NOMAD_API_VERSION}"
echo "nomad.sh: building nomad ${NOMAD_VERSION} (once per machine, a few minutes)" >&2
GOFLAGS=-mod=mod GOTOOLCHAIN=local go build -o "$bin.tmp" . >&2
mv "$bin.tmp" "$bin"
echo "$bin"
