-- wsgate: the HTTP Lua filter of Envoy (envoy.filters.http.lua).
--
-- On a WebSocket upgrade it asks the tracker sidecar (POST /v1/admit on the
-- tracker cluster, 127.0.0.1) which backend pod may take the connection,
-- writes the answer into dynamic metadata wsgate.{upstream,conn,fleet} (the
-- access log reports conn and fleet to the tracker) and pins the request to
-- that pod, so the pod is chosen by the tracker, never by the client. A
-- rejection or an unreachable tracker ends the request here: nothing reaches
-- a backend without an admission.
--
-- Pinning (setting "pin"):
--   original_dst  (default; Envoy 1.27+) the route's cluster is an
--                 ORIGINAL_DST cluster whose original_dst_lb_config.metadata_key
--                 is wsgate.upstream: it connects to exactly that address.
--   override_host (Envoy 1.33+) the route's cluster is a normal cluster of the
--                 backend's endpoints (what Envoy Gateway and Istio generate
--                 from a Service); handle:setUpstreamOverrideHost(pod, true)
--                 selects the pod. Always strict: a pod that is not an
--                 endpoint of the cluster, or whose health status is not in
--                 the cluster's override_host_status (default UNKNOWN,
--                 HEALTHY, DEGRADED), gets no host and Envoy's 503 "no
--                 healthy upstream". The non-strict form would fall back to
--                 the load balancer and put the connection on a pod the
--                 tracker did not count.
--
-- Settings, per key the first found of: the route's filter metadata
-- (envoy.filters.http.lua: {fleet, pin, admit_timeout_ms}), the install
-- table INSTALL below, the built-in default.
--   fleet            non-empty string; default "default"
--   pin              "original_dst" | "override_host"; default "original_dst"
--   admit_timeout_ms integer 1..60000: how long to wait for the tracker;
--                    default 250
--   tracker_cluster  non-empty string, INSTALL only: the cluster of the
--                    tracker's admission API; default "wsgate_tracker"
--
-- INSTALL CONTRACT. The statement binding INSTALL to an empty table, below
-- this comment, is the only occurrence of its text in this file, on a line
-- of its own. An installer may replace that text, and only it, by one line
-- binding INSTALL to a Lua table literal of the keys above, e.g.
--   local INSTALL = { fleet = "chat", pin = "override_host", admit_timeout_ms = 250, tracker_cluster = "wsgate_tracker" }
-- (the Helm chart does, with `replace`, where the route's filter metadata
-- cannot be set: Envoy Gateway, Istio). An unknown key or an invalid value
-- refuses every upgrade (filter_error) and logs the key.
--
-- Fail closed: Envoy logs a script error and CONTINUES the request without
-- the filter. So the whole body runs under pcall, and any error ends in the
-- filter's own 503 (reason filter_error). LuaJIT yields across pcall, so
-- httpCall and respond (both yield in Envoy) work inside it.
--
-- Only Lua 5.1 as a stock LuaJIT runs it: no pairs() over Envoy objects
-- (__pairs needs LuaJIT's 5.2 compatibility, which not every build has).
-- Envoy keeps one Lua state per worker and runs every request of that
-- worker in it, so nothing here may write a global: everything at file
-- level is a constant, and the tests run the filter under a _G that
-- refuses new globals. It uses no require, load*, dofile, raw*, *metatable,
-- *fenv, newproxy, module, debug, package or _G: Envoy Gateway's Lua
-- validation removes them (envoy/egvalidate_test.go).

local INSTALL = {}

local TRACKER_CLUSTER = "wsgate_tracker"
local TRACKER_AUTHORITY = "wsgate-tracker"
local ADMIT_PATH = "/v1/admit"
-- The admission is on the path of every new connection: a tracker slower
-- than this is treated as down.
local ADMIT_TIMEOUT_MS = 250
local MAX_TIMEOUT_MS = 60000
local DEFAULT_FLEET = "default"
local DEFAULT_PIN = "original_dst"
-- Retry-After when the tracker could not be asked at all, or the filter
-- failed.
local TRACKER_DOWN_RETRY_AFTER = "1"
-- Dynamic metadata namespace read by the backend cluster and the access log.
local NS = "wsgate"

local function lower(s)
  if s == nil then
    return ""
  end
  return string.lower(s)
end

-- is_upgrade is Envoy's own rule for this route: the upgrade header, all
-- its values joined, equal to "websocket" ignoring case (the route's
-- header matcher, and upgrade_configs comparing the upgrade type). A
-- looser rule would take a slot for a request the route then sends to the
-- 426 route. An RFC 8441 WebSocket over HTTP/2 (extended CONNECT with
-- :protocol websocket) reaches the filters in this same form: Envoy's H2
-- codec rewrites it to GET + upgrade: websocket + connection: upgrade.
local function is_upgrade(headers)
  return lower(headers:get("upgrade")) == "websocket"
end

-- SPOOFABLE are the headers a client could send to pick a pod or to look
-- admitted: the tracker's reply headers and ORIGINAL_DST's host override.
-- A fixed list, removed by name: iterating the header map would need
-- pairs() with __pairs (see the top of the file).
local SPOOFABLE = {
  "x-wsgate-upstream", "x-wsgate-conn", "x-wsgate-fleet", "x-wsgate-reason",
  "x-envoy-original-dst-host",
}

local function strip_spoofed(headers)
  for i = 1, #SPOOFABLE do
    headers:remove(SPOOFABLE[i])
  end
end

local JSON_ESCAPES = {
  ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t",
}

-- json_string quotes s as a JSON string: quotes, backslashes and control
-- characters escaped.
local function json_string(s)
  s = tostring(s or "")
  s = string.gsub(s, '[%c"\\]', function(c)
    return JSON_ESCAPES[c] or string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

local function check_name(v, what)
  if type(v) ~= "string" or v == "" then
    error(what .. " must be a non-empty string, got " .. tostring(v), 0)
  end
  return v
end

local function check_pin(v, what)
  if v ~= "original_dst" and v ~= "override_host" then
    error(what .. ' must be "original_dst" or "override_host", got ' .. tostring(v), 0)
  end
  return v
end

-- Envoy's httpCall refuses a timeout that is not an integer; a bad value is
-- a configuration error, and refusing every upgrade (filter_error) says so
-- louder than a silent default.
local function check_timeout(v, what)
  if type(v) ~= "number" or v ~= math.floor(v) or v < 1 or v > MAX_TIMEOUT_MS then
    error(what .. " must be an integer from 1 to " .. MAX_TIMEOUT_MS .. ", got " .. tostring(v), 0)
  end
  return v
end

-- SETTINGS checks each key a setting may have; ROUTE_KEYS are those a
-- route's filter metadata may set.
local SETTINGS = {
  fleet = check_name, pin = check_pin, admit_timeout_ms = check_timeout, tracker_cluster = check_name,
}
local ROUTE_KEYS = { "fleet", "pin", "admit_timeout_ms" }

-- settings returns this request's settings: route metadata over INSTALL
-- over the defaults. INSTALL is a plain table, so pairs() needs no __pairs.
local function settings(handle)
  local s = { fleet = DEFAULT_FLEET, pin = DEFAULT_PIN, admit_timeout_ms = ADMIT_TIMEOUT_MS, tracker_cluster = TRACKER_CLUSTER }
  for k, v in pairs(INSTALL) do
    local check = SETTINGS[k]
    if check == nil then
      error("install setting " .. tostring(k) .. " is unknown (known: fleet, pin, admit_timeout_ms, tracker_cluster)", 0)
    end
    s[k] = check(v, "install setting " .. k)
  end
  local meta = handle:metadata()
  if meta ~= nil then
    for i = 1, #ROUTE_KEYS do
      local k = ROUTE_KEYS[i]
      local v = meta:get(k)
      if v ~= nil then
        s[k] = SETTINGS[k](v, "route metadata " .. k)
      end
    end
  end
  return s
end

local function reply(handle, status, retry_after, reason, body)
  local h = { [":status"] = tostring(status), ["content-type"] = "text/plain; charset=utf-8" }
  if retry_after ~= nil and retry_after ~= "" then
    h["retry-after"] = retry_after
  end
  if reason ~= nil and reason ~= "" then
    h["x-wsgate-reason"] = reason
  end
  handle:respond(h, body .. "\n")
end

local function admit(handle)
  local headers = handle:headers()
  if not is_upgrade(headers) then
    return
  end
  strip_spoofed(headers)

  local set = settings(handle)
  local fleet = set.fleet
  local client = handle:streamInfo():downstreamRemoteAddress() or ""
  local request_id = headers:get("x-request-id") or ""
  local body = "{" ..
    '"fleet":' .. json_string(fleet) ..
    ',"client":' .. json_string(client) ..
    ',"requestId":' .. json_string(request_id) .. "}"

  local rh, rbody = handle:httpCall(set.tracker_cluster, {
    [":method"] = "POST",
    [":path"] = ADMIT_PATH,
    [":authority"] = TRACKER_AUTHORITY,
    ["content-type"] = "application/json",
  }, body, { timeout_ms = set.admit_timeout_ms })

  local status = tonumber(rh and rh[":status"] or "")
  local reason = rh and rh["x-wsgate-reason"] or ""

  if status == 200 then
    local upstream = rh["x-wsgate-upstream"]
    local conn = rh["x-wsgate-conn"]
    if upstream == nil or upstream == "" or conn == nil or conn == "" then
      handle:logErr("wsgate: tracker admitted without upstream or conn; fleet=" .. fleet)
      reply(handle, 503, TRACKER_DOWN_RETRY_AFTER, "tracker_error", "wsgate: admission failed")
      return
    end
    local dm = handle:streamInfo():dynamicMetadata()
    dm:set(NS, "upstream", upstream)
    dm:set(NS, "conn", conn)
    dm:set(NS, "fleet", fleet)
    if set.pin == "override_host" then
      -- After the metadata: should this raise (an Envoy before 1.33 has no
      -- such method), the filter's 503 is still logged with wsgate.conn,
      -- and the access log releases the slot. Strict, always (see the top).
      handle:setUpstreamOverrideHost(upstream, true)
    end
    return
  end

  if (status == 429 or status == 503) and reason ~= "" then
    -- A decision of the tracker: pass it on with its Retry-After.
    reply(handle, status, rh["retry-after"], reason, "wsgate: connection rejected: " .. reason)
    return
  end

  -- No decision. What Envoy hands back when the tracker was not reached:
  -- 504 "upstream request timeout" (the router's local reply, timeout_ms
  -- passed), 503 "upstream connect error or disconnect/reset before
  -- headers..." (connect failure, reset), 503 "upstream failure" (the async
  -- stream itself reset). Anything else is a bug on one side. Either way
  -- the connection is refused.
  handle:logErr("wsgate: admission failed: fleet=" .. fleet .. " status=" .. tostring(rh and rh[":status"]) ..
    " body=" .. string.sub(tostring(rbody or ""), 1, 200))
  reply(handle, 503, TRACKER_DOWN_RETRY_AFTER, "tracker_unavailable", "wsgate: admission service unavailable")
end

function envoy_on_request(handle)
  local ok, err = pcall(admit, handle)
  if ok then
    return
  end
  -- A bug of this file, an Envoy that differs from what it expects, or a
  -- bad route configuration: without this reply Envoy would continue the
  -- request unadmitted.
  handle:logErr("wsgate: filter error, refusing the upgrade: " .. tostring(err))
  reply(handle, 503, TRACKER_DOWN_RETRY_AFTER, "filter_error", "wsgate: admission failed")
end
