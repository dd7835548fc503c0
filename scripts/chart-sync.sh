#!/bin/sh
# chart-sync: copy the Lua filter from its one source in envoy/ into the Helm
# chart (Helm cannot read files outside the chart). test/chart fails while
# the copies differ; run this after editing envoy/wsgate.lua. The chart's
# Envoy bootstrap is its own template (templates/_dataplane.tpl), rendered
# from the values; envoy/envoy.yaml is the bootstrap for running without it.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cp "$root/envoy/wsgate.lua" "$root/charts/wsgate/files/wsgate.lua"
echo "charts/wsgate/files/wsgate.lua copied from envoy/"
