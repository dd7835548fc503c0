#!/bin/sh
# chart-sync: copy Envoy's config and Lua filter from their one source in
# envoy/ into the Helm chart (Helm cannot read files outside the chart).
# test/chart fails while the copies differ; run this after editing envoy/.
# The Grafana dashboards of monitoring/dashboards are copied the same way
# (test/monitoring fails while they differ).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
for f in envoy.yaml wsgate.lua; do
	cp "$root/envoy/$f" "$root/charts/wsgate/files/$f"
done
mkdir -p "$root/charts/wsgate/files/dashboards" && cp "$root"/monitoring/dashboards/*.json "$root/charts/wsgate/files/dashboards/"
echo "charts/wsgate/files: envoy.yaml and wsgate.lua copied from envoy/, dashboards from monitoring/dashboards/"
