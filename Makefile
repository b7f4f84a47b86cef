# weft's everyday targets. `make test` is what CI runs (via .ci/run).
GO ?= go
BIN ?= bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/weftmesh/weft/internal/cli.Version=$(VERSION) -X main.version=$(VERSION)

.PHONY: build test lint bench demo clean

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/weft ./cmd/weft
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/weft-proxy ./cmd/weft-proxy

test:
	scripts/test.sh

lint:
	scripts/lint.sh

bench:
	$(GO) run ./bench/apiserver -store both -out bench/results/apiserver.md

clean:
	rm -rf $(BIN)
