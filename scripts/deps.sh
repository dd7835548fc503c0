#!/usr/bin/env bash
# Installs what wsgate's tests need beyond Go: redis-server and redis-cli,
# from Debian's packages. Without root it says what to install instead.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "deps: installing ${missing[*]} from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends redis-server redis-tools >/dev/null
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { echo "deps: install finished but redis-server/redis-cli still missing" >&2; exit 1; }
  exit 0
fi
echo "deps: missing ${missing[*]}. Install them, e.g.: sudo apt-get install redis-server redis-tools" >&2
echo "      (tests that need a real Redis are skipped without them, and fail under CI=true)" >&2
[ "${CI:-}" = "true" ] && exit 1
exit 0
