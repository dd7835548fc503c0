-- wsgate: the HTTP Lua filter of Envoy (envoy.filters.http.lua).
--
-- On a WebSocket upgrade it asks the tracker sidecar (POST /v1/admit on the
-- cluster wsgate_tracker, 127.0.0.1) which backend pod may take the
-- connection, and writes the answer into dynamic metadata wsgate.{upstream,
-- conn,fleet}. The ORIGINAL_DST backend cluster routes by
-- original_dst_lb_config.metadata_key wsgate.upstream, so the pod is chosen
-- by the tracker, never by the client. A rejection or an unreachable tracker
-- ends the request here: nothing reaches a backend without an admission.
--
-- Only the Lua 5.1 subset that Envoy's LuaJIT runs. No state is shared
-- across requests: everything at file level is a constant.

local TRACKER_CLUSTER = "wsgate_tracker"
local TRACKER_AUTHORITY = "wsgate-tracker"
local ADMIT_PATH = "/v1/admit"
-- The admission is on the path of every new connection: a tracker slower
-- than this is treated as down.
local ADMIT_TIMEOUT_MS = 250
-- Fleet of routes whose filter metadata (envoy.filters.http.lua: {fleet: ...})
-- names none.
local DEFAULT_FLEET = "default"
-- Retry-After when the tracker could not be asked at all.
local TRACKER_DOWN_RETRY_AFTER = "1"
-- Dynamic metadata namespace read by the backend cluster and the access log.
local NS = "wsgate"

local function lower(s)
  if s == nil then
    return ""
  end
  return string.lower(s)
end

-- is_upgrade: only WebSocket upgrades are admitted; everything else passes.
local function is_upgrade(headers)
  return string.find(lower(headers:get("upgrade")), "websocket", 1, true) ~= nil
end

-- strip_spoofed removes what a client could send to pick a pod or to look
-- admitted. Envoy forbids changing headers while iterating them, so the
-- names are collected first.
local function strip_spoofed(headers)
  local doomed = {}
  for name, _ in pairs(headers) do
    local n = lower(name)
    if string.sub(n, 1, 9) == "x-wsgate-" or n == "x-envoy-original-dst-host" then
      doomed[#doomed + 1] = name
    end
  end
  for i = 1, #doomed do
    headers:remove(doomed[i])
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

local function route_fleet(handle)
  local meta = handle:metadata()
  if meta ~= nil then
    local fleet = meta:get("fleet")
    if type(fleet) == "string" and fleet ~= "" then
      return fleet
    end
  end
  return DEFAULT_FLEET
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

function envoy_on_request(handle)
  local headers = handle:headers()
  if not is_upgrade(headers) then
    return
  end
  strip_spoofed(headers)

  local fleet = route_fleet(handle)
  local client = handle:streamInfo():downstreamRemoteAddress() or ""
  local request_id = headers:get("x-request-id") or ""
  local body = "{" ..
    '"fleet":' .. json_string(fleet) ..
    ',"client":' .. json_string(client) ..
    ',"requestId":' .. json_string(request_id) .. "}"

  local rh, rbody = handle:httpCall(TRACKER_CLUSTER, {
    [":method"] = "POST",
    [":path"] = ADMIT_PATH,
    [":authority"] = TRACKER_AUTHORITY,
    ["content-type"] = "application/json",
  }, body, { timeout_ms = ADMIT_TIMEOUT_MS })

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
    return
  end

  if (status == 429 or status == 503) and reason ~= "" then
    -- A decision of the tracker: pass it on with its Retry-After.
    reply(handle, status, rh["retry-after"], reason, "wsgate: connection rejected: " .. reason)
    return
  end

  -- No decision: Envoy synthesizes 503 "upstream failure" (no reason header)
  -- when the tracker is unreachable or timed out; anything else is a bug on
  -- one side. Either way the connection is refused.
  handle:logErr("wsgate: admission failed: fleet=" .. fleet .. " status=" .. tostring(rh and rh[":status"]) ..
    " body=" .. string.sub(tostring(rbody or ""), 1, 200))
  reply(handle, 503, TRACKER_DOWN_RETRY_AFTER, "tracker_unavailable", "wsgate: admission service unavailable")
end
