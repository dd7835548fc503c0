# wsgate: make run (try it), make test (what CI runs), make bench (figures).
GO      ?= go
BIN     ?= bin/wsgate
PKGS    ?= ./...
BENCH   ?= .
BENCHTIME ?= 2s

.PHONY: all deps build test vet bench run clean

all: build

# deps installs what the tests need beyond Go, from Debian's packages:
# redis-server and redis-cli, spin and gcc (tracker/model), luajit (the
# filter under a stock LuaJIT), etcd (test/kube's control plane), prometheus
# and promtool (test/alerts).
deps:
	@./scripts/deps.sh

build:
	$(GO) build -o $(BIN) ./cmd/wsgate

vet:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# test: every test, race detector on. Under CI=true a test that needs
# redis-server fails instead of skipping when it is missing. test/dataplane
# is a module of its own (Envoy Gateway's and Istio's Go types).
test: deps vet
	$(GO) test -race -count=1 -timeout 20m $(PKGS)
	cd test/dataplane && $(GO) test -race -count=1 -timeout 20m ./...
	cd test/monitoring && $(GO) test -race -count=1 -timeout 20m ./...

# bench: Go benchmarks against a real redis-server started on a free port;
# figures are reported as ratios to a bare Redis round trip of the same run.
bench: deps
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -benchmem $(PKGS)

# run: the whole system on this machine (embedded Redis, backends, two
# gateways running envoy/wsgate.lua, trackers, the scaler) until Ctrl-C.
run: build
	$(BIN) demo $(RUNFLAGS)

clean:
	rm -rf bin
