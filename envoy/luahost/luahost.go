// Package luahost runs an Envoy HTTP Lua filter (envoy.filters.http.lua) in
// Go, on gopher-lua (Lua 5.1), so that wsgate's tests and demo execute the
// very envoy/wsgate.lua that Envoy runs. It implements the part of Envoy's
// Lua stream API the filter uses, and fails as Envoy's source
// (source/extensions/filters/http/lua/lua_filter.cc) does:
//
//   - envoy_on_request(request_handle). A script error is logged and the
//     request CONTINUES without the filter (Decision.ScriptError), as in
//     Envoy: only the script itself can fail closed.
//   - handle:headers() with get (all values joined by ","), add, replace,
//     remove and pairs() iteration through __pairs, as official Envoy builds
//     (LuaJIT with Lua 5.2 compatibility) have it; changing headers while
//     iterating is an error.
//   - handle:httpCall(cluster, headers, body, options) and the positional
//     form (timeout_ms, asynchronous). Unknown option keys, a timeout that is
//     not a non-negative integer and an unknown cluster are errors. Failures
//     come back as Envoy produces them: a timeout as the router's 504
//     "upstream request timeout", a connect failure or a reset before
//     headers as the router's 503 "upstream connect error or
//     disconnect/reset before headers. reset reason: ...", and only a reset
//     after the headers as the async client's 503 "upstream failure".
//     Repeated response headers keep the last value unless
//     return_duplicate_headers is set.
//   - handle:respond(headers, body), :status 200-599, which ends the script
//     even inside pcall (Envoy yields the coroutine and never resumes it).
//   - handle:streamInfo():dynamicMetadata():set/get and
//     handle:streamInfo():downstreamRemoteAddress()
//   - handle:metadata():get(key), the matched route's filter metadata under
//     the filter's configured name, falling back to envoy.filters.http.lua.
//   - handle:setUpstreamOverrideHost(host [, strict]) (Envoy 1.33+), checked
//     as luaSetUpstreamOverrideHost does: host must be a string whose
//     authority (Http::Utility::parseAuthority) is an IP address, with or
//     without a port ("host is not a valid IP address"); strict, when
//     passed at all (nil too), must be a boolean; it defaults to false. The
//     last call wins (Decision.OverrideHost); what the cluster does with it
//     is the caller's (envoy/gateway models Envoy's host selection).
//   - handle:logTrace/logDebug/logInfo/logWarn/logErr/logCritical
//
// Lua states are reused across requests, as Envoy keeps one per worker:
// globals a request writes are seen by later ones. Envoy interleaves the
// coroutines of a worker's requests in its one state; here httpCall blocks
// the goroutine and a request in flight holds a state of its own, so there
// are as many states as requests were ever in flight at once.
package luahost

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
)

// Options configure a Filter.
type Options struct {
	// Clusters maps the Envoy cluster names httpCall may use to the base URL
	// that reaches them ("http://127.0.0.1:9090").
	Clusters map[string]string
	// Client makes httpCall's requests (default: a client with no timeout of
	// its own; each call's timeout_ms bounds it).
	Client *http.Client
	// Logger receives the script's log calls (default: slog.Default()).
	Logger *slog.Logger
	// FilterName is the filter's name in the HTTP filter chain: the key of
	// the route's filter_metadata that handle:metadata() reads (default
	// envoy.filters.http.lua, which Envoy also falls back to).
	FilterName string
}

// DefaultFilterName is the name Envoy's Lua filter is registered under.
const DefaultFilterName = "envoy.filters.http.lua"

// Filter is a compiled Lua filter, safe for concurrent requests. Its Lua
// states are kept and reused (last used first), so a script that keeps
// state in globals shows it, as in Envoy.
type Filter struct {
	proto *lua.FunctionProto
	opts  Options

	mu   sync.Mutex
	free []*lua.LState
}

// Load compiles code and checks that it defines envoy_on_request.
func Load(code []byte, opts Options) (*Filter, error) {
	chunk, err := parse.Parse(bytes.NewReader(code), "wsgate.lua")
	if err != nil {
		return nil, fmt.Errorf("parse lua filter: %w", err)
	}
	proto, err := lua.Compile(chunk, "wsgate.lua")
	if err != nil {
		return nil, fmt.Errorf("compile lua filter: %w", err)
	}
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.FilterName == "" {
		opts.FilterName = DefaultFilterName
	}
	f := &Filter{proto: proto, opts: opts}
	L, err := f.newState()
	if err != nil {
		return nil, err
	}
	if _, ok := L.GetGlobal("envoy_on_request").(*lua.LFunction); !ok {
		L.Close()
		return nil, errors.New("lua filter: no function envoy_on_request")
	}
	f.free = append(f.free, L)
	return f, nil
}

// Close releases the Lua states.
func (f *Filter) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, L := range f.free {
		L.Close()
	}
	f.free = nil
}

func (f *Filter) take() (*lua.LState, error) {
	f.mu.Lock()
	if n := len(f.free); n > 0 {
		L := f.free[n-1]
		f.free = f.free[:n-1]
		f.mu.Unlock()
		return L, nil
	}
	f.mu.Unlock()
	return f.newState()
}

func (f *Filter) put(L *lua.LState) {
	f.mu.Lock()
	f.free = append(f.free, L)
	f.mu.Unlock()
}

func (f *Filter) newState() (*lua.LState, error) {
	L := lua.NewState()
	installPairs(L)
	L.Push(L.NewFunctionFromProto(f.proto))
	if err := L.PCall(0, 0, nil); err != nil {
		L.Close()
		return nil, fmt.Errorf("run lua filter chunk: %w", err)
	}
	return L, nil
}

// Request is what a filter sees of one downstream request.
type Request struct {
	// Headers are the request headers, pseudo-headers (":path") included.
	Headers Headers
	// RemoteAddr is the downstream "ip:port".
	RemoteAddr string
	// RouteMetadata is the matched route's filter_metadata, by filter
	// name; handle:metadata() reads the entry of Options.FilterName.
	RouteMetadata map[string]map[string]any
}

// Decision is what the filter decided for one request.
type Decision struct {
	// Local is the response the filter sent itself (respond); nil when the
	// request continues upstream.
	Local *LocalReply
	// Headers are the request headers as the filter left them.
	Headers Headers
	// Metadata is the dynamic metadata the filter set, by namespace.
	Metadata map[string]map[string]any
	// Logs are the script's log calls, in order.
	Logs []Log
	// OverrideHost is what the script passed to setUpstreamOverrideHost,
	// nil when it did not call it.
	OverrideHost *OverrideHost
	// ScriptError is the error that ended the script, if one did. Envoy
	// logs it and continues the request (Local is nil): what the filter
	// changed before it stays.
	ScriptError error
}

// OverrideHost is an upstream override host (Envoy's
// LoadBalancerContext::OverrideHost): an address the route's cluster
// should select, and whether the request must fail rather than fall back to
// the load balancer when the cluster will not take it.
type OverrideHost struct {
	Host   string
	Strict bool
}

// LocalReply is a response sent by handle:respond.
type LocalReply struct {
	Status  int
	Headers Headers
	Body    string
}

// Log is one call of a handle:log* function.
type Log struct {
	Level   string // trace, debug, info, warn, err, critical
	Message string
}

// OnRequest runs envoy_on_request for req. A Lua error does not fail the
// call: as in Envoy the request continues, with Decision.ScriptError set.
func (f *Filter) OnRequest(ctx context.Context, req Request) (Decision, error) {
	L, err := f.take()
	if err != nil {
		return Decision{}, err
	}
	// respond cancels the script's context: gopher-lua then raises at the
	// next instruction, also inside the script's own pcall, so nothing of
	// the script runs after respond.
	sctx, cancel := context.WithCancel(ctx)
	L.SetContext(sctx)
	c := &call{ctx: ctx, f: f, req: req, headers: append(Headers(nil), req.Headers...), meta: map[string]map[string]any{}, end: cancel}
	c.headers.lower()
	err = L.CallByParam(lua.P{Fn: L.GetGlobal("envoy_on_request"), NRet: 0, Protect: true}, c.handle(L))
	cancel()
	L.RemoveContext()
	L.SetTop(0)
	f.put(L)
	d := Decision{Local: c.reply, Headers: c.headers, Metadata: c.meta, Logs: c.logs, OverrideHost: c.override}
	if err != nil && c.reply == nil {
		d.ScriptError = fmt.Errorf("envoy_on_request: %w", err)
		f.opts.Logger.ErrorContext(ctx, "script log: lua error", "err", err, "source", "lua")
	}
	return d, nil
}

// call is the state of one request, owned by the goroutine running it.
type call struct {
	ctx       context.Context
	f         *Filter
	req       Request
	headers   Headers
	iterating int
	meta      map[string]map[string]any
	reply     *LocalReply
	override  *OverrideHost
	logs      []Log
	end       context.CancelFunc
}

func (c *call) handle(L *lua.LState) lua.LValue {
	return object(L, map[string]lua.LGFunction{
		"headers":    func(L *lua.LState) int { L.Push(c.headerMap(L)); return 1 },
		"httpCall":   c.httpCall,
		"respond":    c.respond,
		"streamInfo": func(L *lua.LState) int { L.Push(c.streamInfo(L)); return 1 },
		"metadata": func(L *lua.LState) int {
			md, ok := c.req.RouteMetadata[c.f.opts.FilterName]
			if !ok {
				md = c.req.RouteMetadata[DefaultFilterName]
			}
			L.Push(object(L, map[string]lua.LGFunction{"get": func(L *lua.LState) int {
				L.Push(toLua(L, md[L.CheckString(2)]))
				return 1
			}}))
			return 1
		},
		"setUpstreamOverrideHost": c.setUpstreamOverrideHost,
		"logTrace":                c.logger("trace", slog.LevelDebug-4),
		"logDebug":                c.logger("debug", slog.LevelDebug),
		"logInfo":                 c.logger("info", slog.LevelInfo),
		"logWarn":                 c.logger("warn", slog.LevelWarn),
		"logErr":                  c.logger("err", slog.LevelError),
		"logCritical":             c.logger("critical", slog.LevelError+4),
	})
}

func (c *call) logger(level string, l slog.Level) lua.LGFunction {
	return func(L *lua.LState) int {
		msg := L.CheckString(2)
		c.logs = append(c.logs, Log{Level: level, Message: msg})
		c.f.opts.Logger.Log(c.ctx, l, msg, "source", "lua")
		return 0
	}
}

// setUpstreamOverrideHost checks its arguments as Envoy's
// luaSetUpstreamOverrideHost does and records them.
func (c *call) setUpstreamOverrideHost(L *lua.LState) int {
	host := L.CheckString(2)
	if !authorityIsIP(host) {
		L.RaiseError("host is not a valid IP address")
	}
	strict := false
	if L.GetTop() >= 3 {
		strict = bool(L.CheckBool(3))
	}
	c.override = &OverrideHost{Host: host, Strict: strict}
	return 0
}

// authorityIsIP is Http::Utility::parseAuthority(host).is_ip_address_: the
// host part of "host[:port]" ("[v6]:port" for IPv6 with a port) is an IP
// address. A port that is not a number makes the whole string the host.
func authorityIsIP(authority string) bool {
	host := authority
	if h, port, err := net.SplitHostPort(authority); err == nil {
		if p, err := strconv.ParseUint(port, 10, 32); err == nil && p <= 65535 {
			host = h
		}
	} else if strings.HasPrefix(authority, "[") && strings.HasSuffix(authority, "]") {
		host = authority[1 : len(authority)-1]
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Zone() == ""
}

func (c *call) respond(L *lua.LState) int {
	h := tableHeaders(L, L.CheckTable(2))
	status := 0
	if v, err := strconv.ParseUint(h.Get(":status"), 10, 64); err == nil && v >= 200 && v < 600 {
		status = int(v)
	} else {
		L.RaiseError(":status must be between 200-599")
	}
	h.Del(":status")
	c.reply = &LocalReply{Status: status, Headers: h, Body: L.OptString(3, "")}
	c.end()
	return 0
}

func (c *call) streamInfo(L *lua.LState) lua.LValue {
	return object(L, map[string]lua.LGFunction{
		"downstreamRemoteAddress": func(L *lua.LState) int { L.Push(lua.LString(c.req.RemoteAddr)); return 1 },
		"dynamicMetadata": func(L *lua.LState) int {
			L.Push(object(L, map[string]lua.LGFunction{
				"set": func(L *lua.LState) int {
					ns, key := L.CheckString(2), L.CheckString(3)
					if c.meta[ns] == nil {
						c.meta[ns] = map[string]any{}
					}
					c.meta[ns][key] = fromLua(L.Get(4))
					return 0
				},
				"get": func(L *lua.LState) int {
					m, ok := c.meta[L.CheckString(2)]
					if !ok {
						L.Push(lua.LNil)
						return 1
					}
					anyMap := make(map[string]any, len(m))
					for k, v := range m {
						anyMap[k] = v
					}
					L.Push(toLua(L, anyMap))
					return 1
				},
			}))
			return 1
		},
	})
}

// object is a userdata whose methods are fns, called with ':' as in Envoy.
func object(L *lua.LState, fns map[string]lua.LGFunction) *lua.LUserData {
	ud := L.NewUserData()
	mt := L.NewTable()
	L.SetField(mt, "__index", L.SetFuncs(L.NewTable(), fns))
	L.SetMetatable(ud, mt)
	return ud
}

// installPairs makes pairs() honour a __pairs metamethod, as Envoy's LuaJIT
// (built with Lua 5.2 compatibility) does for header maps.
func installPairs(L *lua.LState) {
	orig := L.GetGlobal("pairs")
	L.SetGlobal("pairs", L.NewFunction(func(L *lua.LState) int {
		v := L.Get(1)
		if mm := L.GetMetaField(v, "__pairs"); mm != lua.LNil {
			L.Push(mm)
			L.Push(v)
			L.Call(1, 3)
			return 3
		}
		L.Push(orig)
		L.Push(v)
		L.Call(1, 3)
		return 3
	}))
}

func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case map[string]any:
		t := L.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, e := range v {
			t.Append(toLua(L, e))
		}
		return t
	default:
		return lua.LString(fmt.Sprint(v))
	}
}

func fromLua(v lua.LValue) any {
	switch v := v.(type) {
	case lua.LString:
		return string(v)
	case lua.LNumber:
		return float64(v)
	case lua.LBool:
		return bool(v)
	case *lua.LTable:
		m := map[string]any{}
		v.ForEach(func(k, e lua.LValue) { m[k.String()] = fromLua(e) })
		return m
	default:
		return nil
	}
}

// Headers is an ordered header list with lower-case names, as Envoy's
// header map holds them.
type Headers []Header

// Header is one header line.
type Header struct{ Name, Value string }

// HeadersOf builds Headers from name, value pairs.
func HeadersOf(kv ...string) Headers {
	h := make(Headers, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		h = append(h, Header{strings.ToLower(kv[i]), kv[i+1]})
	}
	return h
}

// Get returns the values of name joined by ",", as Envoy's get does, or ""
// when absent.
func (h Headers) Get(name string) string { return strings.Join(h.Values(name), ",") }

// Values returns every value of name.
func (h Headers) Values(name string) []string {
	name = strings.ToLower(name)
	var out []string
	for _, e := range h {
		if e.Name == name {
			out = append(out, e.Value)
		}
	}
	return out
}

// Has reports whether name is present.
func (h Headers) Has(name string) bool { return len(h.Values(name)) > 0 }

// Del removes every value of name.
func (h *Headers) Del(name string) {
	name = strings.ToLower(name)
	out := (*h)[:0]
	for _, e := range *h {
		if e.Name != name {
			out = append(out, e)
		}
	}
	*h = out
}

func (h Headers) lower() {
	for i := range h {
		h[i].Name = strings.ToLower(h[i].Name)
	}
}

// HTTP converts h to net/http headers, pseudo-headers left out.
func (h Headers) HTTP() http.Header {
	out := http.Header{}
	for _, e := range h {
		if !strings.HasPrefix(e.Name, ":") {
			out.Add(e.Name, e.Value)
		}
	}
	return out
}
