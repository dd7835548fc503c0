-- envoy_mock.lua: runs wsgate.lua under a stock LuaJIT with a mock of
-- Envoy's handle API, independent of the Go host (envoy/luahost). Like
-- Envoy, each request runs as a coroutine of ONE Lua state; httpCall and
-- respond yield it, and a responded coroutine is never resumed. Header maps
-- are userdata (newproxy), so pairs() over them fails as in a LuaJIT
-- without 5.2 compatibility. After loading, _G refuses new globals.
-- Usage: luajit envoy_mock.lua wsgate.lua [installed] ; prints "ok <case>"
-- per case. With "installed", wsgate.lua carries the install table
-- { fleet = "chat", pin = "override_host", admit_timeout_ms = 900 } and
-- only the cases about it run.
assert(loadfile(arg[1]))()
setmetatable(_G, { __newindex = function(_, k) error("global written: " .. tostring(k), 2) end,
                   __index = function(_, k) error("global read: " .. tostring(k), 2) end })

local function headermap(init)
  local h = {}
  for k, v in pairs(init) do h[k] = v end
  local p = newproxy(true)
  local mt = getmetatable(p)
  mt.__index = {
    get = function(_, k) return h[string.lower(k)] end,
    remove = function(_, k) h[string.lower(k)] = nil end,
    add = function(_, k, v) h[string.lower(k)] = v end,
    replace = function(_, k, v) h[string.lower(k)] = v end,
  }
  return p, h
end

-- request runs envoy_on_request; tracker(headers, body, options) answers
-- httpCall with (response headers, body).
local function request(hdrs, route, tracker)
  local proxy, raw = headermap(hdrs)
  local r = { meta = {}, calls = 0, logs = {} }
  local handle = {}
  function handle:headers() return proxy end
  function handle:metadata() return { get = function(_, k) return route[k] end } end
  function handle:streamInfo()
    return {
      downstreamRemoteAddress = function() return "203.0.113.7:1" end,
      dynamicMetadata = function() return { set = function(_, ns, k, v) r.meta[ns .. "." .. k] = v end } end,
    }
  end
  function handle:httpCall(cluster, h, body, opts)
    assert(cluster == "wsgate_tracker", "cluster invalid")
    assert(type(opts) == "table" and opts.timeout_ms == math.floor(opts.timeout_ms), "timeout_ms must be an integer")
    return coroutine.yield({ call = { h, body, opts } })
  end
  function handle:respond(h, body)
    local s = tonumber(h[":status"])
    assert(s and s >= 200 and s < 600, ":status must be between 200-599")
    coroutine.yield({ respond = { h, body } })
    error("resumed after respond")
  end
  function handle:logErr(m) r.logs[#r.logs + 1] = m end
  -- Envoy's checks (lua_filter.cc luaSetUpstreamOverrideHost): an IP
  -- authority, strict a boolean when passed.
  function handle:setUpstreamOverrideHost(host, ...)
    assert(type(host) == "string" and host:match("^%d+%.%d+%.%d+%.%d+:%d+$"), "host is not a valid IP address")
    local strict = false
    if select("#", ...) >= 1 then
      strict = ...
      assert(type(strict) == "boolean", "bad argument #3 (boolean expected)")
    end
    r.override = { host = host, strict = strict }
  end
  local co = coroutine.create(envoy_on_request)
  local ok, y = coroutine.resume(co, handle)
  while true do
    if not ok then r.script_error = y; break end
    if coroutine.status(co) == "dead" then break end
    if y.respond then r.reply = y.respond[1]; r.body = y.respond[2]; break end
    r.calls = r.calls + 1
    r.opts = y.call[3]
    ok, y = coroutine.resume(co, tracker(y.call[1], y.call[2], y.call[3]))
  end
  r.headers = raw
  return r
end

local function upgrade(extra)
  local h = { [":method"] = "GET", [":path"] = "/ws", upgrade = "websocket", connection = "upgrade" }
  for k, v in pairs(extra or {}) do h[k] = v end
  return h
end
local admitted = function() return { [":status"] = "200", ["x-wsgate-upstream"] = "10.0.0.1:8080", ["x-wsgate-conn"] = "c1" } end

local cases = {
  admitted = function()
    local r = request(upgrade({ ["x-wsgate-upstream"] = "6.6.6.6:1", ["x-envoy-original-dst-host"] = "6.6.6.6:1" }), { fleet = "chat", admit_timeout_ms = 1000 }, admitted)
    assert(r.script_error == nil, tostring(r.script_error))
    assert(r.reply == nil and r.meta["wsgate.upstream"] == "10.0.0.1:8080" and r.meta["wsgate.fleet"] == "chat", "not admitted")
    assert(r.headers["x-wsgate-upstream"] == nil and r.headers["x-envoy-original-dst-host"] == nil, "spoofed header kept")
    assert(r.opts.timeout_ms == 1000, "route timeout not used")
  end,
  default_timeout = function()
    local r = request(upgrade(), {}, admitted)
    assert(r.opts.timeout_ms == 250 and r.meta["wsgate.fleet"] == "default", "defaults")
  end,
  rejected = function()
    local r = request(upgrade(), {}, function() return { [":status"] = "429", ["x-wsgate-reason"] = "rate_limit", ["retry-after"] = "3" } end)
    assert(r.reply and r.reply[":status"] == "429" and r.reply["retry-after"] == "3", "rejection not passed on")
  end,
  timeout = function()
    local r = request(upgrade(), {}, function() return { [":status"] = "504" }, "upstream request timeout" end)
    assert(r.reply and r.reply[":status"] == "503" and r.reply["x-wsgate-reason"] == "tracker_unavailable", "timeout not refused")
  end,
  not_websocket = function()
    for _, v in ipairs({ "websocket, h2c", "foo-websocket" }) do
      local r = request(upgrade({ upgrade = v }), {}, admitted)
      assert(r.calls == 0 and r.reply == nil and next(r.meta) == nil, "admitted " .. v)
    end
  end,
  filter_error = function()
    local r = request(upgrade(), { admit_timeout_ms = 2.5 }, admitted)
    assert(r.script_error == nil, tostring(r.script_error))
    assert(r.reply and r.reply[":status"] == "503" and r.reply["x-wsgate-reason"] == "filter_error" and r.reply["retry-after"], "error not closed")
  end,
}
cases.override_host = function()
  local r = request(upgrade(), { pin = "override_host" }, admitted)
  assert(r.script_error == nil and r.reply == nil, tostring(r.script_error))
  assert(r.override and r.override.host == "10.0.0.1:8080" and r.override.strict == true, "not pinned strictly")
  assert(r.meta["wsgate.conn"] == "c1" and r.meta["wsgate.upstream"] == "10.0.0.1:8080", "metadata missing")
  local o = request(upgrade(), {}, admitted)
  assert(o.override == nil and o.meta["wsgate.upstream"] == "10.0.0.1:8080", "original_dst pinned by override")
end
cases.bad_settings = function()
  for _, route in ipairs({ { pin = "strict" }, { pin = true }, { fleet = "" }, { fleet = 7 } }) do
    local r = request(upgrade(), route, admitted)
    assert(r.script_error == nil, tostring(r.script_error))
    assert(r.calls == 0 and r.reply and r.reply["x-wsgate-reason"] == "filter_error", "bad route setting not refused")
  end
end

local installed = {
  installed = function()
    local r = request(upgrade(), {}, admitted)
    assert(r.script_error == nil and r.reply == nil, tostring(r.script_error))
    assert(r.meta["wsgate.fleet"] == "chat" and r.opts.timeout_ms == 900, "install table not used")
    assert(r.override and r.override.strict == true, "install pin not used")
    local o = request(upgrade(), { pin = "original_dst", fleet = "other", admit_timeout_ms = 100 }, admitted)
    assert(o.override == nil and o.meta["wsgate.fleet"] == "other" and o.opts.timeout_ms == 100, "route does not beat install")
  end,
}
if arg[2] == "installed" then cases = installed end

local names = {}
for name in pairs(cases) do names[#names + 1] = name end
table.sort(names)
for _, name in ipairs(names) do
  local ok, err = pcall(cases[name])
  if ok then print("ok " .. name) else print("FAIL " .. name .. ": " .. tostring(err)); os.exit(1) end
end
