package envoy_test

import (
	"fmt"
	"testing"

	lua "github.com/yuin/gopher-lua"

	"github.com/wsgate/wsgate/envoy"
)

// Envoy Gateway (v1.4+, EnvoyExtensionPolicy.spec.lua) checks a Lua filter
// before it accepts it; its default, "Strict", runs it, as read in
// envoyproxy/gateway internal/gatewayapi/luavalidator (lua_validator.go,
// mocks.lua, security.lua; the same from v1.8.3 to the main of 2026-08):
//   - in gopher-lua (Lua 5.1, no LuaJIT bit/jit), with the standard
//     libraries, print silenced and a 5s limit;
//   - mocks.lua first: a global StreamHandle table whose methods are inert
//     (httpCall returns the request's own headers and body, respond and
//     setUpstreamOverrideHost do nothing, headers():get and
//     metadata():get return fixed strings);
//   - security.lua then removes io.popen, os.execute, os.exit, require,
//     loadfile, dofile, package, debug, load, loadstring, rawget, rawset,
//     getmetatable, setmetatable and _G (and guards io.open, os.getenv and
//     the like with allowlists);
//   - then the code, followed by the line "envoy_on_request(StreamHandle)"
//     (and envoy_on_response likewise if the code names it), in one
//     DoString: any error rejects the policy.
//
// The test does the same with its own mocks, and also removes getfenv,
// setfenv, newproxy and module, which other sandboxes block, so that a
// later validator version cannot catch the filter out.
var blockedGlobals = []string{
	"require", "loadfile", "dofile", "package", "debug", "load", "loadstring",
	"rawget", "rawset", "getmetatable", "setmetatable", "getfenv", "setfenv",
	"newproxy", "module", "_G",
}

// egMocks is a StreamHandle as the validator's: plain tables with inert
// methods. The %s are the upgrade header's value, the route metadata
// table, and the tracker's answer (nil: the request's own headers, as the
// validator's httpCall returns).
const egMocks = `
local Headers = {}
function Headers:get(key) if key == "upgrade" then return %s end return "example_value" end
function Headers:remove(key) end
function Headers:add(key, value) end
function Headers:replace(key, value) end
local Metadata = { data = %s }
function Metadata:get(key) local v = self.data[key] if v == nil then return nil end return v end
local DynamicMetadata = {}
function DynamicMetadata:set(ns, key, value) end
function DynamicMetadata:get(ns) return nil end
local StreamInfo = {}
function StreamInfo:downstreamRemoteAddress() return "10.0.0.1:5050" end
function StreamInfo:dynamicMetadata() return DynamicMetadata end
local answer = %s
StreamHandle = {}
function StreamHandle:headers() return Headers end
function StreamHandle:metadata() return Metadata end
function StreamHandle:streamInfo() return StreamInfo end
function StreamHandle:httpCall(cluster, headers, body, options)
  if answer ~= nil then return answer, "" end
  return headers, body
end
function StreamHandle:respond(headers, body) end
function StreamHandle:setUpstreamOverrideHost(host, strict) end
function StreamHandle:logTrace(m) end
function StreamHandle:logDebug(m) end
function StreamHandle:logInfo(m) end
function StreamHandle:logWarn(m) end
function StreamHandle:logErr(m) end
function StreamHandle:logCritical(m) end
`

// validateAsEnvoyGateway runs code as the Strict validator does and returns
// its error.
func validateAsEnvoyGateway(t *testing.T, code, mocks string) error {
	t.Helper()
	L := lua.NewState()
	defer L.Close()
	L.SetGlobal("print", L.NewFunction(func(*lua.LState) int { return 0 }))
	if err := L.DoString(mocks); err != nil {
		t.Fatalf("mocks: %v", err)
	}
	for _, name := range blockedGlobals {
		L.SetGlobal(name, lua.LNil)
	}
	for lib, fns := range map[string][]string{"io": {"popen"}, "os": {"execute", "exit"}} {
		tbl := L.GetGlobal(lib).(*lua.LTable)
		for _, fn := range fns {
			tbl.RawSetString(fn, lua.LNil)
		}
	}
	return L.DoString(code + "\nenvoy_on_request(StreamHandle)")
}

func TestFilterPassesEnvoyGatewayStrictLuaValidation(t *testing.T) {
	installed, err := envoy.WithInstall(envoy.FilterLua, `{ fleet = "chat", pin = "override_host", admit_timeout_ms = 250, tracker_cluster = "outbound|9090||wsgate-tracker.wsgate.local" }`)
	if err != nil {
		t.Fatal(err)
	}
	admitted := `{ [":status"] = "200", ["x-wsgate-upstream"] = "10.0.0.7:8080", ["x-wsgate-conn"] = "c1" }`
	cases := map[string]struct{ upgrade, meta, answer string }{
		// The validator's own mocks: headers():get and metadata():get
		// answer fixed strings, so no upgrade is seen.
		"validator mocks": {`"example_value"`, `setmetatable({}, { __index = function() return "get_example" end })`, "nil"},
		// Through every branch of an upgrade.
		"upgrade admitted":               {`"websocket"`, `{}`, admitted},
		"upgrade admitted, route pin":    {`"websocket"`, `{ pin = "override_host", fleet = "chat" }`, admitted},
		"upgrade, validator's httpCall":  {`"websocket"`, `{}`, "nil"},
		"upgrade rejected":               {`"websocket"`, `{}`, `{ [":status"] = "503", ["x-wsgate-reason"] = "capacity", ["retry-after"] = "3" }`},
		"upgrade, route metadata broken": {`"websocket"`, `{ admit_timeout_ms = "get_example", pin = "get_example" }`, admitted},
	}
	for name, c := range cases {
		for form, code := range map[string][]byte{"as shipped": envoy.FilterLua, "installed": installed} {
			t.Run(name+"/"+form, func(t *testing.T) {
				if err := validateAsEnvoyGateway(t, string(code), fmt.Sprintf(egMocks, c.upgrade, c.meta, c.answer)); err != nil {
					t.Fatalf("Envoy Gateway would reject the filter: %v", err)
				}
			})
		}
	}
}

// The validation must bite: code that uses what the validator removes fails.
func TestEnvoyGatewayValidationRejectsBlockedGlobals(t *testing.T) {
	mocks := fmt.Sprintf(egMocks, `"websocket"`, `{}`, "nil")
	for _, name := range blockedGlobals {
		code := "local x = " + name + ".x\nfunction envoy_on_request(h) end"
		if name == "_G" {
			code = "function envoy_on_request(h) local y = _G.print end"
		}
		if err := validateAsEnvoyGateway(t, code, mocks); err == nil {
			t.Errorf("code using %s passed", name)
		}
	}
}
