#!/usr/bin/env bash
# kube-tools: builds the control plane test/kube runs (kube-apiserver and
# kube-controller-manager from the k8s.io/kubernetes release that
# test/kube/tools pins) into the user cache, outside any test's timeout, and
# prints the directory. make test passes it to test/kube as
# WSGATE_KUBE_BINDIR. The first build takes many minutes on two cores; later
# runs reuse the binaries while the pinned version is unchanged.
set -euo pipefail
cd "$(dirname "$0")/../test/kube/tools"
v=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
dir="${XDG_CACHE_HOME:-$HOME/.cache}/wsgate-kube/$v"
if [ -x "$dir/kube-apiserver" ] && [ -x "$dir/kube-controller-manager" ]; then
  echo "$dir"
  exit 0
fi
IFS=. read -r major minor _ <<<"${v#v}"
pkg=k8s.io/component-base/version.
# Stamped as Kubernetes' own build does: without it kube-apiserver reports
# v0.0.0-master and helm refuses the chart's kubeVersion.
ldflags="-X ${pkg}gitVersion=$v -X ${pkg}gitMajor=$major -X ${pkg}gitMinor=$minor -X ${pkg}gitTreeState=clean"
tmp=$(mktemp -d "${dir%/*}/build-XXXXXX" 2>/dev/null || { mkdir -p "${dir%/*}"; mktemp -d "${dir%/*}/build-XXXXXX"; })
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
go build -ldflags "$ldflags" -o "$tmp/" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager >&2
rm -rf "$dir" && mv "$tmp" "$dir"
echo "kube-tools: control plane $v built in $(( $(date +%s) - start ))s" >&2
echo "$dir"
