# wsgate: one static binary for `wsgate tracker` (the Envoy sidecar) and
# `wsgate scaler` (the KEDA external scaler).
#   docker build -t ghcr.io/wsgate/wsgate:dev .
ARG GO_VERSION=1.26

# Build on the builder's own platform and cross-compile: no emulation.
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS=linux
ARG TARGETARCH=amd64
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /out/wsgate ./cmd/wsgate

# distroless static: no shell, no package manager, CA roots for Redis TLS,
# and the nonroot user (65532) the chart's securityContext expects.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/wsgate /usr/local/bin/wsgate
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/wsgate"]
