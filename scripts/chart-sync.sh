#!/bin/sh
# chart-sync: copy Envoy's config and Lua filter from their one source in
# envoy/, and the alert rules from monitoring/rules/, into the Helm chart (Helm
# cannot read files outside the chart). test/chart and test/alerts fail while
# the copies differ; run this after editing envoy/ or monitoring/rules/.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
for f in envoy.yaml wsgate.lua; do
	cp "$root/envoy/$f" "$root/charts/wsgate/files/$f"
done
echo "charts/wsgate/files: envoy.yaml and wsgate.lua copied from envoy/"
cp "$root/monitoring/rules/wsgate.rules.yaml" "$root/charts/wsgate/files/wsgate.rules.yaml"
echo "charts/wsgate/files: wsgate.rules.yaml copied from monitoring/rules/"
