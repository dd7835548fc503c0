#!/usr/bin/env bash
# Installs what wsgate's tests need beyond Go: redis-server and redis-cli,
# the SPIN model checker with a C compiler (tracker/model), and LuaJIT
# (envoy/wsgate.lua under a real LuaJIT), etcd (test/kube's control plane), and
# Prometheus with promtool (test/alerts: the alert rules; test/monitoring: the
# dashboards against a real server), and the CA certificates that make image
# puts in the image, from Debian's packages. Without root it says what to
# install instead.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v spin >/dev/null 2>&1 || missing+=(spin)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v luajit >/dev/null 2>&1 || missing+=(luajit)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || missing+=(prometheus)
[ -s /etc/ssl/certs/ca-certificates.crt ] || missing+=(ca-certificates)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "deps: installing ${missing[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for c in redis-server redis-cli spin gcc luajit etcd prometheus promtool; do
    command -v "$c" >/dev/null || { echo "deps: install finished but $c still missing" >&2; exit 1; }
  done
  [ -s /etc/ssl/certs/ca-certificates.crt ] || { echo "deps: install finished but /etc/ssl/certs/ca-certificates.crt still missing" >&2; exit 1; }
  exit 0
fi
echo "deps: missing ${missing[*]}. Install them, e.g.: sudo apt-get install ${missing[*]}" >&2
echo "      (tests that need them are skipped without them, and fail under CI=true)" >&2
[ "${CI:-}" = "true" ] && exit 1
exit 0
