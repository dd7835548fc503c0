#!/bin/sh
# chart-sync: copy the Lua filter from its one source in envoy/, and the alert
# rules from monitoring/rules/, into the Helm chart (Helm cannot read files
# outside the chart). test/chart and test/alerts fail while the copies differ;
# run this after editing envoy/wsgate.lua or monitoring/rules/. The chart's
# Envoy bootstrap is its own template (templates/_dataplane.tpl), rendered from
# the values; envoy/envoy.yaml is the bootstrap for running without it.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cp "$root/envoy/wsgate.lua" "$root/charts/wsgate/files/wsgate.lua"
echo "charts/wsgate/files/wsgate.lua copied from envoy/"
cp "$root/monitoring/rules/wsgate.rules.yaml" "$root/charts/wsgate/files/wsgate.rules.yaml"
echo "charts/wsgate/files: wsgate.rules.yaml copied from monitoring/rules/"
