{{- /* The rules across values that the schema cannot express: each one the
binaries enforce (test/chart/rules_test.go runs the same cases through
`wsgate tracker|scaler --check-config`), and the ones across components that
no single binary sees. Each failure names the values and what to do.
Rendered by templates/validate.yaml, which outputs nothing. */ -}}

{{- /* A Go duration ("1m30s", "250ms") in milliseconds, as a float. The
schema has checked its form. */ -}}
{{- define "wsgate.durationMs" -}}
{{- $units := dict "ns" 0.000001 "us" 0.001 "µs" 0.001 "ms" 1.0 "s" 1000.0 "m" 60000.0 "h" 3600000.0 -}}
{{- $ms := 0.0 -}}
{{- range regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h)" (toString .) -1 -}}
{{- $n := regexFind "^[0-9.]+" . -}}
{{- $ms = addf $ms (mulf (float64 $n) (get $units (trimPrefix $n .))) -}}
{{- end -}}
{{- $ms -}}
{{- end -}}

{{- /* Envoy's access_log_flush_interval (wsgate.accessLogOptions): each live
WebSocket's lease is renewed by one access-log entry per interval. */ -}}
{{- define "wsgate.accessLogFlushInterval" -}}30s{{- end -}}

{{- /* The Lua filter's own admission timeout (files/wsgate.lua
ADMIT_TIMEOUT_MS), used where a route sets none. */ -}}
{{- define "wsgate.defaultAdmitTimeoutMs" -}}250{{- end -}}

{{- /* What the tracker's --redis-timeout must leave below the filter's
admission timeout: past --redis-timeout the tracker still has to run its
fallback and answer over loopback HTTP, and Envoy's httpCall has to get the
answer, on a busy node. 150 ms is what cmd/wsgate's demo keeps
(demoAdmitSlack), and what the defaults keep (100 ms against 250 ms). A
filter that times out first answers 503 tracker_unavailable although the
tracker admitted: the slot is held until --establish-timeout. */ -}}
{{- define "wsgate.admitSlackMs" -}}150{{- end -}}

{{- define "wsgate.validate" -}}
{{- $t := .Values.tracker -}}

{{- /* fleets: an entry without a name is what `--set fleets[0].key=v` makes
(Helm replaces the whole list), so say so. Then what fleets.Fleet
and the fleets file's parser refuse beyond the schema. */ -}}
{{- $seen := dict -}}
{{- range $i, $f := .Values.fleets -}}
{{- if not $f.name -}}
{{- fail (printf "fleets[%d].name: missing. `--set fleets[%d].<key>=...` replaces the whole fleets list in Helm (every other fleet and key is gone): give the full list in a values file (-f my-fleets.yaml), or edit it there and `helm upgrade --reuse-values -f my-fleets.yaml`" $i $i) -}}
{{- end -}}
{{- with index $seen $f.name -}}
{{- fail (printf "fleets[%d].name %q: already the name of %s; fleet names must be unique" $i $f.name .) -}}
{{- end -}}
{{- $_ := set $seen $f.name (printf "fleets[%d]" $i) -}}
{{- if and $f.service $f.pods -}}
{{- fail (printf "fleets[%d] (%s): service and pods are both set: choose one, discovery from the Service or a static pod list" $i $f.name) -}}
{{- end -}}
{{- if and $f.port (not $f.service) -}}
{{- fail (printf "fleets[%d] (%s): port %v is only meaningful with service" $i $f.name $f.port) -}}
{{- end -}}
{{- $pods := dict -}}
{{- range $f.pods -}}
{{- if hasKey $pods . -}}
{{- fail (printf "fleets[%d] (%s): pods lists %q twice" $i $f.name .) -}}
{{- end -}}
{{- $_ := set $pods . true -}}
{{- end -}}
{{- if and (hasKey $f "retryAfter") (eq (float64 (include "wsgate.durationMs" $f.retryAfter)) 0.0) -}}
{{- fail (printf "fleets[%d] (%s): retryAfter %s must be positive (leave it out for the default 5s)" $i $f.name $f.retryAfter) -}}
{{- end -}}
{{- end -}}

{{- /* Durations the binaries refuse at zero (an explicit 0 is never the
default in disguise). */ -}}
{{- range $k := list "heartbeat" "instanceTTL" "establishTimeout" "leaseTTL" "redisTimeout" "releaseLinger" -}}
{{- if eq (float64 (include "wsgate.durationMs" (get $t $k))) 0.0 -}}
{{- fail (printf "tracker.%s %s: must be positive" $k (get $t $k)) -}}
{{- end -}}
{{- end -}}
{{- if and $t.shutdownTimeout (eq (float64 (include "wsgate.durationMs" $t.shutdownTimeout)) 0.0) -}}
{{- fail (printf "tracker.shutdownTimeout %s: must be positive (leave it empty for envoy.terminationGracePeriodSeconds less 10s)" $t.shutdownTimeout) -}}
{{- end -}}
{{- /* Redis WAIT on admissions (--redis-wait-replicas). */ -}}
{{- $wait := int (include "wsgate.redisWaitReplicas" .) -}}
{{- $waitMs := float64 (include "wsgate.durationMs" .Values.redis.waitTimeout) -}}
{{- if and (gt $wait 0) .Values.redis.bundled.enabled -}}
{{- fail (printf "redis.waitReplicas %d: the bundled Redis is a single node with no replica, so every admission would wait for one that does not exist and be refused. Leave redis.waitReplicas null (0), or set redis.bundled.enabled=false and point redis.addrs at a Redis with replicas" $wait) -}}
{{- end -}}
{{- if eq $waitMs 0.0 -}}
{{- fail (printf "redis.waitTimeout %s: must be positive (leave it out for the default 50ms)" .Values.redis.waitTimeout) -}}
{{- end -}}
{{- if and (gt $wait 0) (lt $waitMs 1.0) -}}
{{- fail (printf "redis.waitTimeout %s: must be at least 1ms (Redis WAIT with 0 blocks for ever)" .Values.redis.waitTimeout) -}}
{{- end -}}
{{- if and (gt $wait 0) (ge $waitMs (float64 (include "wsgate.durationMs" $t.redisTimeout))) -}}
{{- fail (printf "redis.waitTimeout %s: must be shorter than tracker.redisTimeout %s, which bounds the whole admission call it is part of" .Values.redis.waitTimeout $t.redisTimeout) -}}
{{- end -}}
{{- if eq (float64 (include "wsgate.durationMs" .Values.scaler.settle)) 0.0 -}}
{{- fail (printf "scaler.settle %s: must be positive" .Values.scaler.settle) -}}
{{- end -}}

{{- /* heartbeat < instanceTTL: an instance's counts must outlive the gap
between two of its heartbeats, or every instance is reaped between them
(tracker.Config.Validate). */ -}}
{{- $hb := float64 (include "wsgate.durationMs" $t.heartbeat) -}}
{{- $ttl := float64 (include "wsgate.durationMs" $t.instanceTTL) -}}
{{- if le $ttl $hb -}}
{{- fail (printf "tracker.instanceTTL %s: must be longer than tracker.heartbeat %s (the default is 5 heartbeats)" $t.instanceTTL $t.heartbeat) -}}
{{- end -}}
{{- /* releaseLinger < heartbeat: the heartbeat publishes every release
anyway (tracker.Config.Validate). */ -}}
{{- if ge (float64 (include "wsgate.durationMs" $t.releaseLinger)) $hb -}}
{{- fail (printf "tracker.releaseLinger %s: must be shorter than tracker.heartbeat %s (the default is 50ms)" $t.releaseLinger $t.heartbeat) -}}
{{- end -}}

{{- /* Across components, which no binary sees together. */ -}}

{{- /* leaseTTL vs Envoy's access_log_flush_interval: a live connection's
lease is renewed once per flush interval, so a lease shorter than one
interval releases every live connection and gives its slot away. At least
two intervals: one renewal lost (the gRPC access-log stream reconnecting
drops what Envoy buffered) or late (a busy Envoy, a tracker restart) must
not release a live connection. The default 90s is three. */ -}}
{{- $flush := include "wsgate.accessLogFlushInterval" . -}}
{{- $lease := float64 (include "wsgate.durationMs" $t.leaseTTL) -}}
{{- if lt $lease (mulf 2 (float64 (include "wsgate.durationMs" $flush))) -}}
{{- fail (printf "tracker.leaseTTL %s: must be at least twice Envoy's access_log_flush_interval %s, which renews the leases of live connections (one renewal lost or late must not release a live connection and give its slot away); the default is 90s" $t.leaseTTL $flush) -}}
{{- end -}}

{{- /* redisTimeout vs the filter's admission timeout of every route of the
data plane. */ -}}
{{- $timeouts := list -}}
{{- $mode := .Values.dataPlane.mode -}}
{{- if eq $mode "standalone" -}}
{{- range $i, $r := .Values.dataPlane.standalone.routes -}}
{{- $timeouts = append $timeouts (list (printf "dataPlane.standalone.routes[%d].admitTimeoutMs" $i) (int (default 0 $r.admitTimeoutMs))) -}}
{{- end -}}
{{- if not .Values.dataPlane.standalone.routes -}}
{{- $timeouts = append $timeouts (list "the filter's default admitTimeoutMs" 0) -}}
{{- end -}}
{{- else if eq $mode "envoyGateway" -}}
{{- range $i, $r := .Values.dataPlane.envoyGateway.routes -}}
{{- $timeouts = append $timeouts (list (printf "dataPlane.envoyGateway.routes[%d].admitTimeoutMs" $i) (int (default 0 $r.admitTimeoutMs))) -}}
{{- end -}}
{{- else if eq $mode "istio" -}}
{{- $timeouts = append $timeouts (list "dataPlane.istio.admitTimeoutMs" (int (default 0 .Values.dataPlane.istio.admitTimeoutMs))) -}}
{{- end -}}
{{- $rt := float64 (include "wsgate.durationMs" $t.redisTimeout) -}}
{{- $slack := int (include "wsgate.admitSlackMs" .) -}}
{{- range $timeouts -}}
{{- $at := index . 1 -}}
{{- $from := index . 0 -}}
{{- if eq $at 0 -}}
{{- $at = int (include "wsgate.defaultAdmitTimeoutMs" $) -}}
{{- $from = printf "%s (unset: the filter's default %d)" $from $at -}}
{{- end -}}
{{- if gt (addf $rt $slack) (float64 $at) -}}
{{- fail (printf "tracker.redisTimeout %s: must stay %d ms below the filter's admission timeout, %s = %d ms: past it the tracker still runs its fallback and answers, or the filter gives up first and answers 503 while the tracker admitted. Lower tracker.redisTimeout to at most %d ms or raise the admission timeout" $t.redisTimeout $slack $from $at (sub $at $slack)) -}}
{{- end -}}
{{- end -}}

{{- /* The bundled Redis and an external one are exclusive; the schema
leaves this to the template for a message that says what to do. */ -}}
{{- if and .Values.redis.bundled.enabled .Values.redis.addrs -}}
{{- fail (printf "redis.addrs %v: set redis.bundled.enabled=false to use an external Redis (the bundled one is on, and wsgate would talk to it, not to redis.addrs)" .Values.redis.addrs) -}}
{{- end -}}

{{- /* One scaler: the pod-deletion-cost hook keeps its scale-down
decisions in memory, and the replica KEDA's gRPC connection happens to
reach decides. A replica that decided once keeps re-publishing its
draining flags into the registry (discovery.Registry's ownsDrain) and
leaves its cost annotations, after the connection moved to another that
decides differently: pods drain that the HPA keeps, or the HPA removes
pods that hold connections. Safe only with leader election, which the
scaler lacks. A restarted scaler catches up from Redis and the pods. */ -}}
{{- if gt (int .Values.scaler.replicas) 1 -}}
{{- fail (printf "scaler.replicas %v: run one scaler. Its deletion-cost hook decides scale-downs in memory on whichever replica KEDA's connection reaches; two would publish conflicting draining flags and costs (it has no leader election). One replica restarts in seconds and re-reads its state from Redis and the pods; KEDA's fallback (keda.fallback) covers the gap" .Values.scaler.replicas) -}}
{{- end -}}

{{- /* Several addresses make go-redis a Cluster client: "standalone"
would silently be a Cluster (or, with a db, refused by the binaries). */ -}}
{{- if and (not .Values.redis.bundled.enabled) (eq .Values.redis.mode "standalone") (gt (len .Values.redis.addrs) 1) -}}
{{- fail (printf "redis.addrs %v: redis.mode standalone takes one address (a Cluster's seeds: redis.mode=cluster; Sentinels: redis.mode=sentinel with redis.masterName)" .Values.redis.addrs) -}}
{{- end -}}

{{- /* Prometheus refuses a scrape timeout above the interval. */ -}}
{{- $sm := .Values.metrics.serviceMonitor -}}
{{- if and $sm.enabled $sm.scrapeTimeout (gt (float64 (include "wsgate.durationMs" $sm.scrapeTimeout)) (float64 (include "wsgate.durationMs" $sm.interval))) -}}
{{- fail (printf "metrics.serviceMonitor.scrapeTimeout %s: must not exceed metrics.serviceMonitor.interval %s (Prometheus refuses the scrape config)" $sm.scrapeTimeout $sm.interval) -}}
{{- end -}}

{{- /* The tracker must have left Redis before the kubelet kills the pod. */ -}}
{{- if and (eq $mode "standalone") $t.shutdownTimeout -}}
{{- $grace := mulf 1000 (float64 .Values.envoy.terminationGracePeriodSeconds) -}}
{{- if ge (float64 (include "wsgate.durationMs" $t.shutdownTimeout)) $grace -}}
{{- fail (printf "tracker.shutdownTimeout %s: must be below envoy.terminationGracePeriodSeconds %v, or the kubelet kills the pod before its tracker leaves Redis (its connections then stay counted until it is reaped)" $t.shutdownTimeout .Values.envoy.terminationGracePeriodSeconds) -}}
{{- end -}}
{{- end -}}
{{- end -}}
