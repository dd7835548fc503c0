#!/bin/sh
# chart-sync: copy the Lua filter from its one source in envoy/, the alert
# rules from monitoring/rules/ and the dashboards from monitoring/dashboards/
# into the Helm chart (Helm cannot read files outside the chart). test/chart,
# test/alerts and test/monitoring fail while the copies differ; run this after
# editing any of them. The chart's
# Envoy bootstrap is its own template (templates/_dataplane.tpl), rendered from
# the values; envoy/envoy.yaml is the bootstrap for running without it.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cp "$root/envoy/wsgate.lua" "$root/charts/wsgate/files/wsgate.lua"
echo "charts/wsgate/files/wsgate.lua copied from envoy/"
cp "$root/monitoring/rules/wsgate.rules.yaml" "$root/charts/wsgate/files/wsgate.rules.yaml"
echo "charts/wsgate/files: wsgate.rules.yaml copied from monitoring/rules/"
mkdir -p "$root/charts/wsgate/files/dashboards"
cp "$root"/monitoring/dashboards/*.json "$root/charts/wsgate/files/dashboards/"
echo "charts/wsgate/files/dashboards: copied from monitoring/dashboards/"
