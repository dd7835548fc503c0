{{- /* The data plane: which Envoy runs the filter (dataPlane.mode), the
filter as each profile installs it, the tracker sidecar every profile adds,
and the standalone profile's Envoy bootstrap rendered from the values. */ -}}

{{- define "wsgate.standalone" -}}
{{- if eq .Values.dataPlane.mode "standalone" }}true{{ end -}}
{{- end -}}

{{- /* Fails unless fleet (the value at path) is one of fleets[].name: a route
into a fleet the trackers do not know would answer every upgrade with
503 tracker_unavailable. Include with (list $ fleet path). */ -}}
{{- define "wsgate.requireFleet" -}}
{{- $root := index . 0 -}}
{{- $names := list -}}
{{- range $root.Values.fleets }}{{ $names = append $names .name }}{{ end -}}
{{- if not (has (index . 1) $names) -}}
{{- fail (printf "%s: fleet %q is not one of fleets[].name %v (rename the route's fleet with the fleet)" (index . 2) (index . 1) $names) -}}
{{- end -}}
{{- end -}}

{{- /* The Lua filter with its per-install settings: the one line
`local INSTALL = {}` of files/wsgate.lua replaced by the settings of a
profile that cannot give the filter route metadata. Include with
(dict "root" $ "fleet" name "pin" mode "admitTimeoutMs" n "trackerCluster" c). */ -}}
{{- define "wsgate.filterLua" -}}
{{- $src := .root.Files.Get "files/wsgate.lua" -}}
{{- $line := "local INSTALL = {}" -}}
{{- if ne (len (regexFindAll "(?m)^local INSTALL = \\{\\}\\r?$" $src -1)) 1 -}}
{{- fail (printf "charts/wsgate/files/wsgate.lua: dataPlane.mode %s sets the filter's settings in its one line %q, which the file does not hold exactly once: copy the current filter with scripts/chart-sync.sh" .root.Values.dataPlane.mode $line) -}}
{{- end -}}
{{- $set := list (printf "fleet = %q" .fleet) (printf "pin = %q" .pin) -}}
{{- with .admitTimeoutMs }}{{ $set = append $set (printf "admit_timeout_ms = %d" (int .)) }}{{ end -}}
{{- $set = append $set (printf "tracker_cluster = %q" .trackerCluster) -}}
{{- $src | replace $line (printf "local INSTALL = { %s }" (join ", " $set)) -}}
{{- end -}}

{{- /* The tracker sidecar beside an Envoy: include with (dict "root" $
"native" bool "envoyAdmin" "127.0.0.1:9901" "shutdown" bool). native makes
it an init container with restartPolicy Always (Kubernetes 1.29+), which
starts before Envoy and stops after it. */ -}}
{{- define "wsgate.trackerContainer" -}}
{{- $v := .root.Values -}}
- name: tracker
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  image: {{ include "wsgate.image" .root | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - tracker
    - --config=/etc/wsgate/fleets/fleets.yaml
    - --instance-id=$(POD_NAME)
    - --listen=127.0.0.1:9090
    - --access-log-listen=127.0.0.1:9091
    - --telemetry-listen=:9102
    - --heartbeat={{ $v.tracker.heartbeat }}
    - --establish-timeout={{ $v.tracker.establishTimeout }}
    - --lease-ttl={{ $v.tracker.leaseTTL }}
    - --redis-timeout={{ $v.tracker.redisTimeout }}
    - --release-linger={{ $v.tracker.releaseLinger }}
    - --redis-run-check={{ $v.tracker.redisRunCheck }}
    - --redis-wait-replicas={{ include "wsgate.redisWaitReplicas" .root }}
    - --redis-wait-timeout={{ $v.redis.waitTimeout }}
    - --redis-replication-check={{ $v.redis.replicationCheck }}
    - --fallback={{ $v.tracker.fallback }}
    - --log-level={{ $v.tracker.logLevel }}
    {{- if .shutdown }}
    - --shutdown-listen=127.0.0.1:9103
    {{- end }}
    - --envoy-admin={{ .envoyAdmin }}
    - --shutdown-timeout={{ include "wsgate.trackerShutdownTimeout" .root }}
    {{- with $v.tracker.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- include "wsgate.redisEnv" .root | nindent 4 }}
    {{- with $v.tracker.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: metrics
      containerPort: 9102
      protocol: TCP
  {{- include "wsgate.probes" (dict "probes" $v.tracker.probes "readiness" "httpGet:\n  path: /readyz\n  port: metrics" "liveness" "httpGet:\n  path: /healthz\n  port: metrics") | nindent 2 }}
  resources:
    {{- toYaml $v.tracker.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.tracker.securityContext | nindent 4 }}
  volumeMounts:
    - name: wsgate-fleets
      mountPath: /etc/wsgate/fleets
      readOnly: true
    {{- include "wsgate.redisTLSMount" .root | nindent 4 }}
    {{- with $v.tracker.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{- /* The pod volumes the tracker container mounts. */ -}}
{{- define "wsgate.trackerVolumes" -}}
- name: wsgate-fleets
  configMap:
    name: {{ include "wsgate.fleetsConfig" . }}
{{- include "wsgate.redisTLSVolume" . }}
{{- end -}}

{{- /* The two clusters of the tracker on loopback, as Envoy clusters: its
admission API (HTTP/1.1) and its access-log receiver (gRPC). */ -}}
{{- define "wsgate.trackerClusters" -}}
# The admission API of the tracker sidecar.
- name: wsgate_tracker
  type: STATIC
  connect_timeout: 0.25s
  # The tracker closes keep-alive connections idle for 2 minutes
  # (httplimit.Default); Envoy lets go of them first, so that no
  # admission is sent on a connection the tracker is closing.
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      common_http_protocol_options:
        idle_timeout: 60s
      explicit_http_config:
        http_protocol_options: {}
  load_assignment:
    cluster_name: wsgate_tracker
    endpoints:
      - lb_endpoints:
          - endpoint:
              address:
                socket_address: { address: 127.0.0.1, port_value: 9090 }
  circuit_breakers:
    thresholds:
      - priority: DEFAULT
        max_connections: 10000
        max_pending_requests: 10000
        max_requests: 10000
# The tracker's access-log receiver (gRPC needs HTTP/2).
- name: wsgate_accesslog
  type: STATIC
  connect_timeout: 0.25s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config:
        http2_protocol_options: {}
  load_assignment:
    cluster_name: wsgate_accesslog
    endpoints:
      - lb_endpoints:
          - endpoint:
              address:
                socket_address: { address: 127.0.0.1, port_value: 9091 }
{{- end -}}

{{- /* The access-log settings of an HTTP connection manager that the tracker
relies on: one entry when the 101 comes back (established), one per
interval while the WebSocket lives (lease renewal, well under the
tracker's --lease-ttl of 90s), one at the end (release). */ -}}
{{- define "wsgate.accessLogOptions" -}}
flush_log_on_tunnel_successfully_established: true
access_log_flush_interval: {{ include "wsgate.accessLogFlushInterval" . }}
{{- end -}}

{{- /* The gRPC access log into the tracker, of the connections it admitted
only. include with the cluster name. */ -}}
{{- define "wsgate.accessLog" -}}
name: envoy.access_loggers.http_grpc
filter:
  # Only connections the tracker admitted.
  metadata_filter:
    matcher:
      filter: wsgate
      path: [{ key: conn }]
      value: { present_match: true }
    match_if_key_not_found: false
typed_config:
  "@type": type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig
  common_config:
    log_name: wsgate
    transport_api_version: V3
    grpc_service:
      envoy_grpc: { cluster_name: {{ . }} }
    # Send at once: establishment and release should reach the tracker
    # within milliseconds, not a buffer flush.
    buffer_size_bytes: 0
    buffer_flush_interval: 0.1s
{{- end -}}

{{- /* The standalone profile's listeners with defaults filled in. */ -}}
{{- define "wsgate.listeners" -}}
{{- $out := list -}}
{{- $seen := dict (toString .Values.dataPlane.standalone.statsPort) "dataPlane.standalone.statsPort" -}}
{{- range $i, $l := .Values.dataPlane.standalone.listeners -}}
{{- range $k := list $l.name (toString $l.port) -}}
{{- with get $seen $k -}}
{{- fail (printf "dataPlane.standalone.listeners[%d]: %s is already taken by %s" $i $k .) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $seen $l.name (printf "listeners[%d]" $i) -}}
{{- $_ := set $seen (toString $l.port) (printf "listeners[%d]" $i) -}}
{{- $tlsv := default dict $l.tls -}}
{{- $tls := and $tlsv.enabled true -}}
{{- if and $tls (not $tlsv.secretName) -}}
{{- fail (printf "dataPlane.standalone.listeners[%d] (%s): tls.enabled needs tls.secretName, a kubernetes.io/tls Secret with tls.crt and tls.key" $i $l.name) -}}
{{- end -}}
{{- $out = append $out (dict "name" $l.name "port" $l.port "servicePort" (default $l.port $l.servicePort) "tls" $tls "secretName" (default "" $tlsv.secretName)) -}}
{{- end -}}
{{- if not $out -}}
{{- fail "dataPlane.standalone.listeners: the standalone Envoy needs at least one listener" -}}
{{- end -}}
{{- dict "listeners" $out | toJson -}}
{{- end -}}

{{- /* The standalone profile's routes with defaults filled in and checked:
none given means one route per fleet, which only one fleet can have. */ -}}
{{- define "wsgate.routes" -}}
{{- $s := .Values.dataPlane.standalone -}}
{{- $routes := $s.routes -}}
{{- $path := "dataPlane.standalone.routes" -}}
{{- if not $routes -}}
{{- if gt (len .Values.fleets) 1 -}}
{{- fail (printf "%s: with %d fleets, say which upgrades go to which fleet (hosts and/or pathPrefix per route)" $path (len .Values.fleets)) -}}
{{- end -}}
{{- $routes = list (dict "fleet" (index .Values.fleets 0).name) -}}
{{- end -}}
{{- $out := list -}}
{{- range $i, $r := $routes -}}
{{- $at := printf "%s[%d]" $path $i -}}
{{- include "wsgate.requireFleet" (list $ $r.fleet $at) -}}
{{- $pin := default "original_dst" $r.pin -}}
{{- $up := default dict $r.upstream -}}
{{- if and (eq $pin "override_host") (not (and $up.address $up.port)) -}}
{{- fail (printf "%s (fleet %s): pin override_host needs upstream.address and upstream.port (a headless Service of the fleet's pods, e.g. backend-headless.<namespace>.svc.cluster.local)" $at $r.fleet) -}}
{{- end -}}
{{- $out = append $out (dict "fleet" $r.fleet "hosts" (default (list "*") $r.hosts) "pathPrefix" (default "/" $r.pathPrefix) "pin" $pin "upstream" $up "admitTimeoutMs" (default 0 $r.admitTimeoutMs) "cluster" (ternary (printf "wsgate_upstream_%d" $i) "wsgate_backend" (eq $pin "override_host"))) -}}
{{- end -}}
{{- dict "routes" $out | toJson -}}
{{- end -}}

{{- /* The last route of every upgrade virtual host: anything that no
upgrade route took has no admitted pod to go to. The filter does not run
here: an upgrade outside every route would be admitted into the filter's
default fleet. */ -}}
{{- define "wsgate.upgradesOnly" -}}
- match: { prefix: "/" }
  direct_response:
    status: 426
    body: { inline_string: "this listener serves WebSocket upgrades only\n" }
  response_headers_to_add:
    - header: { key: upgrade, value: websocket }
  typed_per_filter_config:
    envoy.filters.http.lua:
      "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute
      disabled: true
{{- end -}}

{{- /* The standalone Envoy's bootstrap (Envoy 1.27 or newer; a route with
pin override_host needs 1.33). */ -}}
{{- define "wsgate.envoyBootstrap" -}}
{{- $s := .Values.dataPlane.standalone -}}
{{- $listeners := (include "wsgate.listeners" . | fromJson).listeners -}}
{{- $routes := (include "wsgate.routes" . | fromJson).routes -}}
{{- /* Virtual hosts by their domain list; Envoy refuses a domain in two. */ -}}
{{- $vhosts := dict -}}
{{- $owner := dict -}}
{{- range $i, $r := $routes -}}
{{- $key := join "," $r.hosts -}}
{{- range $r.hosts -}}
{{- $prev := get $owner . -}}
{{- if and $prev (ne $prev $key) -}}
{{- fail (printf "dataPlane.standalone.routes[%d]: host %q is also in another route's hosts %q: give routes of one host the same hosts list" $i . $prev) -}}
{{- end -}}
{{- $_ := set $owner . $key -}}
{{- end -}}
{{- $_ := set $vhosts $key (append (get $vhosts $key | default list) $r) -}}
{{- end -}}
{{- $originalDst := false -}}
{{- range $routes }}{{ if eq .pin "original_dst" }}{{ $originalDst = true }}{{ end }}{{ end -}}
# wsgate: Envoy bootstrap of one standalone Envoy replica with its tracker
# sidecar, rendered by the Helm chart from dataPlane.standalone.
#
# Requires Envoy 1.27 or newer (flush_log_on_tunnel_successfully_established,
# original_dst_lb_config.metadata_key); a route with pin override_host
# needs 1.33 (setUpstreamOverrideHost). The Lua code is read from
# /etc/envoy/wsgate.lua.
admin:
  address:
    socket_address: { address: 127.0.0.1, port_value: 9901 }

static_resources:
  listeners:
    {{- range $listeners }}
    - name: {{ .name }}
      address:
        socket_address: { address: 0.0.0.0, port_value: {{ .port }} }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: {{ .name }}
                codec_type: AUTO
                upgrade_configs:
                  - upgrade_type: websocket
                # RFC 8441 WebSockets over HTTP/2 (extended CONNECT), which
                # browsers use when the proxy offers it (h2 needs TLS or
                # prior knowledge). Envoy's H2 codec hands them to the
                # filters as GET + upgrade: websocket.
                http2_protocol_options:
                  allow_connect: true
                # WebSocket connections live for hours: no idle cut from the
                # connection manager; the backend and the client ping.
                stream_idle_timeout: 0s
                access_log_options:
                  {{- include "wsgate.accessLogOptions" $ | nindent 18 }}
                access_log:
                  - {{- include "wsgate.accessLog" "wsgate_accesslog" | nindent 20 }}
                route_config:
                  name: wsgate
                  virtual_hosts:
                    {{- range $i, $key := keys $vhosts | sortAlpha }}
                    - name: {{ printf "hosts_%d" $i }}
                      domains: {{ splitList "," $key | toJson }}
                      routes:
                        {{- range (get $vhosts $key) }}
                        # Upgrades into fleet {{ .fleet }}, to the pod the tracker chose.
                        - match:
                            prefix: {{ .pathPrefix | quote }}
                            headers:
                              - name: upgrade
                                string_match: { exact: websocket, ignore_case: true }
                          metadata:
                            filter_metadata:
                              envoy.filters.http.lua:
                                fleet: {{ .fleet | quote }}
                                pin: {{ .pin }}
                                {{- if .admitTimeoutMs }}
                                admit_timeout_ms: {{ .admitTimeoutMs }}
                                {{- end }}
                          route:
                            cluster: {{ .cluster }}
                            # No timeout for the life of a WebSocket.
                            timeout: 0s
                        {{- end }}
                        {{- include "wsgate.upgradesOnly" $ | nindent 24 }}
                    {{- end }}
                    {{- if not (hasKey $owner "*") }}
                    # Hosts of no route: the same answer, and no filter (in a
                    # request that matches no virtual host, Envoy runs it).
                    - name: other_hosts
                      domains: ["*"]
                      routes:
                        {{- include "wsgate.upgradesOnly" $ | nindent 24 }}
                    {{- end }}
                http_filters:
                  - name: envoy.filters.http.lua
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
                      default_source_code:
                        filename: /etc/envoy/wsgate.lua
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          {{- if .tls }}
          # TLS from Secret {{ .secretName }}, mounted at /etc/envoy/tls/{{ .name }};
          # Envoy reloads it when the kubelet updates the mount.
          transport_socket:
            name: envoy.transport_sockets.tls
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
              common_tls_context:
                alpn_protocols: [h2, http/1.1]
                tls_certificates:
                  - certificate_chain: { filename: /etc/envoy/tls/{{ .name }}/tls.crt }
                    private_key: { filename: /etc/envoy/tls/{{ .name }}/tls.key }
                    watched_directory: { path: /etc/envoy/tls/{{ .name }} }
          {{- end }}
    {{- end }}
    # Envoy's own metrics for Prometheus: only /stats/prometheus of the admin
    # API (which stays on loopback), as Envoy Gateway serves it on 19001.
    - name: stats
      address:
        socket_address: { address: 0.0.0.0, port_value: {{ $s.statsPort }} }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: stats
                codec_type: AUTO
                route_config:
                  name: stats
                  virtual_hosts:
                    - name: stats
                      domains: ["*"]
                      routes:
                        - match: { path: /stats/prometheus }
                          route: { cluster: wsgate_admin }
                        - match: { prefix: "/" }
                          direct_response: { status: 404 }
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router

  clusters:
    {{- include "wsgate.trackerClusters" . | nindent 4 }}
    # Envoy's admin API, for the stats listener only.
    - name: wsgate_admin
      type: STATIC
      connect_timeout: 0.25s
      load_assignment:
        cluster_name: wsgate_admin
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: 127.0.0.1, port_value: 9901 }
    {{- if $originalDst }}
    # Routes with pin original_dst: connect to exactly the address the
    # tracker chose. use_http_header stays false, so no client header can
    # pick the pod, and the listener restores no original destination:
    # without wsgate.upstream ORIGINAL_DST has no host and answers 503.
    - name: wsgate_backend
      type: ORIGINAL_DST
      lb_policy: CLUSTER_PROVIDED
      connect_timeout: 2s
      cleanup_interval: 60s
      original_dst_lb_config:
        use_http_header: false
        metadata_key:
          key: wsgate
          path: [{ key: upstream }]
      circuit_breakers:
        # Every WebSocket holds an upstream connection and a request: the
        # 1024 defaults would cap the whole proxy at 1024 connections.
        thresholds:
          - priority: DEFAULT
            max_connections: 1000000
            max_pending_requests: 100000
            max_requests: 1000000
            max_retries: 3
    {{- end }}
    {{- range $routes }}
    {{- if eq .pin "override_host" }}
    # Fleet {{ .fleet }} with pin override_host: the filter pins each upgrade
    # to the tracker's pod with setUpstreamOverrideHost (strict), which must
    # be an endpoint of this cluster: the fleet's pods by DNS.
    - name: {{ .cluster }}
      type: STRICT_DNS
      connect_timeout: 2s
      dns_refresh_rate: 5s
      respect_dns_ttl: false
      load_assignment:
        cluster_name: {{ .cluster }}
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: {{ .upstream.address | quote }}, port_value: {{ .upstream.port }} }
      circuit_breakers:
        thresholds:
          - priority: DEFAULT
            max_connections: 1000000
            max_pending_requests: 100000
            max_requests: 1000000
            max_retries: 3
    {{- end }}
    {{- end }}
{{- end -}}

{{- /* The Service over the Envoy pods that carry the trackers: the scaler
counts its ready endpoints as the trackers to expect. */ -}}
{{- define "wsgate.envoyService" -}}
{{- $mode := .Values.dataPlane.mode -}}
{{- if eq $mode "standalone" -}}
{{ include "wsgate.envoy" . }}
{{- else -}}
{{- $svc := (index .Values.dataPlane $mode).envoyService -}}
{{- if and (not $svc) (eq .Values.tracker.expiredInstances "kube") -}}
{{- fail (printf "dataPlane.%s.envoyService: name the Service of the gateway's Envoy pods (in namespace %s), or give every fleet its envoyService: with tracker.expiredInstances kube the scaler asks Kubernetes whether a silent tracker's pod still exists" $mode .Release.Namespace) -}}
{{- end -}}
{{ $svc }}
{{- end -}}
{{- end -}}

{{- /* Labels that select the Envoy pods carrying the trackers. */ -}}
{{- define "wsgate.envoyPodSelector" -}}
{{- $mode := .Values.dataPlane.mode -}}
{{- if eq $mode "standalone" -}}
{{ include "wsgate.selectorLabels" (list . "envoy") }}
{{- else if eq $mode "envoyGateway" -}}
{{- $eg := .Values.dataPlane.envoyGateway -}}
{{- /* The labels Envoy Gateway puts on a Gateway's proxy pods. */ -}}
app.kubernetes.io/name: envoy
app.kubernetes.io/component: proxy
app.kubernetes.io/managed-by: envoy-gateway
gateway.envoyproxy.io/owning-gateway-name: {{ $eg.gateway }}
gateway.envoyproxy.io/owning-gateway-namespace: {{ .Release.Namespace }}
{{- else -}}
{{ toYaml .Values.dataPlane.istio.gatewaySelector }}
{{- end -}}
{{- end -}}

{{- /* The port on which the data plane's Envoy serves /stats/prometheus. */ -}}
{{- define "wsgate.envoyStatsPort" -}}
{{- $mode := .Values.dataPlane.mode -}}
{{- if eq $mode "standalone" }}{{ .Values.dataPlane.standalone.statsPort }}
{{- else if eq $mode "envoyGateway" }}19001
{{- else }}15090
{{- end -}}
{{- end -}}
