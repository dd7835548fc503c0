# wsgate: make run (try it), make test (what CI runs), make bench (figures).
GO      ?= go
BIN     ?= bin/wsgate
PKGS    ?= ./...
BENCH   ?= .
BENCHTIME ?= 2s
COUNT   ?= 1

.PHONY: all deps build image print-version test vet bench run clean

# The build's identity, stamped into the binary (`wsgate version`, the
# wsgate_build_info metric) and the image's labels. VERSION is the tag
# (v0.2.0 -> 0.2.0) when the commit has one; between releases it is the
# chart's appVersion with -dev.<commit> (a pre-release of the version being
# worked on: never mistaken for the release the chart pins), plus .dirty
# for uncommitted changes. The date is the commit's time, not now, so two
# builds of one commit are the same bytes.
APP_VERSION := $(shell sed -n 's/^appVersion: *"*\([^"]*\)"*$$/\1/p' charts/wsgate/Chart.yaml)
REVISION    ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
DIRTY       := $(shell git status --porcelain --untracked-files=no 2>/dev/null | head -c1)
TAG         := $(shell git describe --tags --exact-match --match 'v[0-9]*' 2>/dev/null)
VERSION     ?= $(if $(TAG),$(patsubst v%,%,$(TAG))$(if $(DIRTY),-dirty),$(APP_VERSION)-dev.$(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)$(if $(DIRTY),.dirty))
BUILD_DATE  := $(shell date -u -d @$(SOURCE_DATE_EPOCH) +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -r $(SOURCE_DATE_EPOCH) +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS     := -s -w -X github.com/wsgate/wsgate/buildinfo.Version=$(VERSION) \
               -X github.com/wsgate/wsgate/buildinfo.Revision=$(REVISION) \
               -X github.com/wsgate/wsgate/buildinfo.Date=$(BUILD_DATE)
# Static (no libc in the image), paths trimmed, symbols stripped.
GOBUILD     := CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'

# The image: see build/image. IMAGE_REPO is only the name `docker load`
# gives it; push it anywhere (README: "Build and publish the image").
IMAGE_DIR       ?= bin/image
IMAGE_REPO      ?= ghcr.io/wsgate/wsgate
IMAGE_PLATFORMS ?= linux/amd64 linux/arm64
CA_BUNDLE       ?= /etc/ssl/certs/ca-certificates.crt

all: build

# deps installs what the tests need beyond Go, from Debian's packages:
# redis-server and redis-cli, spin and gcc (tracker/model), luajit (the
# filter under a stock LuaJIT), etcd (test/kube's control plane), prometheus
# and promtool (test/alerts, test/monitoring), ca-certificates (make image).
deps:
	@./scripts/deps.sh

build:
	$(GOBUILD) -o $(BIN) ./cmd/wsgate

# image: a reproducible OCI image index (one image per platform) of the
# static binary and Debian's CA certificates, built with no Docker daemon
# and no registry: $(IMAGE_DIR)/oci (an OCI layout) and
# $(IMAGE_DIR)/wsgate.oci.tar (an OCI archive that docker load also reads).
image:
	@for p in $(IMAGE_PLATFORMS); do \
	  echo "go build $$p"; \
	  GOOS=$${p%/*} GOARCH=$${p#*/} $(GOBUILD) -o $(IMAGE_DIR)/$$p/wsgate ./cmd/wsgate || exit 1; \
	done
	cd build/image && $(GO) run . -out $(abspath $(IMAGE_DIR)) -repository $(IMAGE_REPO) \
	  -version $(VERSION) -revision $(REVISION) -source-date-epoch $(SOURCE_DATE_EPOCH) -ca-bundle $(CA_BUNDLE) \
	  $(foreach p,$(IMAGE_PLATFORMS),-binary $(p)=$(abspath $(IMAGE_DIR))/$(p)/wsgate)

vet:
	$(GO) vet $(PKGS)
	cd build/image && $(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# test: every test, race detector on. Under CI=true a test that needs
# redis-server fails instead of skipping when it is missing. test/dataplane,
# test/monitoring and build/image are modules of their own (Envoy Gateway's
# and Istio's Go types; Prometheus' parser; go-containerregistry).
# The control plane test/kube runs is built first (scripts/kube-tools.sh,
# cached), outside any test's timeout.
test: deps vet
	WSGATE_KUBE_BINDIR="$$(./scripts/kube-tools.sh)" && export WSGATE_KUBE_BINDIR && \
	  $(GO) test -race -count=1 -timeout 20m $(PKGS)
	cd test/dataplane && $(GO) test -race -count=1 -timeout 20m ./...
	cd test/monitoring && $(GO) test -race -count=1 -timeout 20m ./...
	cd build/image && $(GO) test -race -count=1 -timeout 20m ./...

# print-version: the version make build and make image stamp.
print-version:
	@echo $(VERSION)

# bench: Go benchmarks against a real redis-server started on a free port;
# figures are reported as ratios to a bare Redis round trip of the same run.
# COUNT=3 runs each benchmark three times; test/load then prints a summary
# line per peer-comparison mode: median [min–max] over the runs.
bench: deps
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -count $(COUNT) -benchmem $(PKGS)

# run: the whole system on this machine (embedded Redis, backends, two
# gateways running envoy/wsgate.lua, trackers, the scaler) until Ctrl-C.
run: build
	$(BIN) demo $(RUNFLAGS)

clean:
	rm -rf bin
