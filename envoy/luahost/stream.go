package luahost

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// headerMap is handle:headers(): the request headers of c, changed in place.
func (c *call) headerMap(L *lua.LState) lua.LValue {
	ud := object(L, map[string]lua.LGFunction{
		"get": func(L *lua.LState) int {
			if v := c.headers.Values(L.CheckString(2)); len(v) > 0 {
				L.Push(lua.LString(strings.Join(v, ",")))
			} else {
				L.Push(lua.LNil)
			}
			return 1
		},
		"add": func(L *lua.LState) int {
			c.modifiable(L)
			c.headers = append(c.headers, Header{strings.ToLower(L.CheckString(2)), L.CheckString(3)})
			return 0
		},
		"replace": func(L *lua.LState) int {
			c.modifiable(L)
			name, value := strings.ToLower(L.CheckString(2)), L.CheckString(3)
			if !c.headers.Has(name) {
				c.headers = append(c.headers, Header{name, value})
				return 0
			}
			// Like Envoy: the first occurrence takes the value, others go.
			out, done := c.headers[:0], false
			for _, e := range c.headers {
				if e.Name == name {
					if done {
						continue
					}
					e.Value, done = value, true
				}
				out = append(out, e)
			}
			c.headers = out
			return 0
		},
		"remove": func(L *lua.LState) int {
			c.modifiable(L)
			c.headers.Del(L.CheckString(2))
			return 0
		},
	})
	mt := L.GetMetatable(ud).(*lua.LTable)
	mt.RawSetString("__pairs", L.NewFunction(func(L *lua.LState) int {
		// Envoy iterates a snapshot-free view and forbids changes until the
		// iteration ends; the copy here only keeps Go's slice safe.
		snapshot := append(Headers(nil), c.headers...)
		c.iterating++
		i := 0
		L.Push(L.NewFunction(func(L *lua.LState) int {
			if i >= len(snapshot) {
				if i == len(snapshot) {
					c.iterating--
					i++
				}
				L.Push(lua.LNil)
				return 1
			}
			e := snapshot[i]
			i++
			L.Push(lua.LString(e.Name))
			L.Push(lua.LString(e.Value))
			return 2
		}))
		L.Push(lua.LNil)
		L.Push(lua.LNil)
		return 3
	}))
	return ud
}

func (c *call) modifiable(L *lua.LState) {
	if c.iterating > 0 {
		L.RaiseError("header map can not be modified while iterating")
	}
}

// tableHeaders reads a Lua headers table: name -> string (or a list of
// strings for a repeated header).
func tableHeaders(L *lua.LState, t *lua.LTable) Headers {
	var h Headers
	t.ForEach(func(k, v lua.LValue) {
		name := strings.ToLower(k.String())
		switch v := v.(type) {
		case lua.LString, lua.LNumber:
			h = append(h, Header{name, v.String()})
		case *lua.LTable:
			v.ForEach(func(_, e lua.LValue) { h = append(h, Header{name, e.String()}) })
		default:
			L.RaiseError("header %q: value must be a string, got %s", name, v.Type())
		}
	})
	return h
}

// httpCall implements handle:httpCall(cluster, headers, body, options) and
// the positional handle:httpCall(cluster, headers, body, timeout_ms,
// asynchronous), validating as Envoy's luaHttpCall does.
func (c *call) httpCall(L *lua.LState) int {
	var timeoutMS int64
	async, dupHeaders := false, false
	if o, ok := L.Get(5).(*lua.LTable); ok {
		o.ForEach(func(k, v lua.LValue) {
			key, ok := k.(lua.LString)
			if !ok {
				L.RaiseError("httpCall() options key must be a string, got %s", k.Type())
			}
			switch string(key) {
			case "asynchronous":
				async = lua.LVAsBool(v)
			case "timeout_ms":
				timeoutMS = integerOption(L, v, "'timeout_ms' option")
			case "return_duplicate_headers":
				dupHeaders = lua.LVAsBool(v)
			case "trace_sampled", "send_xff":
			default:
				L.RaiseError("%q is not valid key for httpCall() options", string(key))
			}
		})
	} else {
		if v := L.Get(6); v != lua.LNil && v.Type() != lua.LTBool {
			L.RaiseError("http call asynchronous flag must be 'true', 'false', or empty")
		}
		timeoutMS = integerOption(L, L.Get(5), "httpCall")
		async = lua.LVAsBool(L.Get(6))
	}
	cluster := L.CheckString(2)
	h := tableHeaders(L, L.CheckTable(3))
	body := L.OptString(4, "")
	base, ok := c.f.opts.Clusters[cluster]
	if !ok {
		L.RaiseError("http call cluster invalid. Must be configured")
	}
	if !h.Has(":path") || !h.Has(":method") || !h.Has(":authority") {
		L.RaiseError("http call headers must include ':path', ':method', and ':authority'")
	}
	if async {
		go c.do(context.WithoutCancel(c.ctx), base, h, body, timeoutMS)
		return 0
	}
	status, rh, rbody := c.do(c.ctx, base, h, body, timeoutMS)
	t := L.NewTable()
	t.RawSetString(":status", lua.LString(strconv.Itoa(status)))
	for _, e := range rh {
		if !dupHeaders {
			// Envoy sets each header into the table in turn: the last wins.
			t.RawSetString(e.Name, lua.LString(e.Value))
			continue
		}
		switch prev := t.RawGetString(e.Name).(type) {
		case lua.LString:
			list := L.NewTable()
			list.Append(prev)
			list.Append(lua.LString(e.Value))
			t.RawSetString(e.Name, list)
		case *lua.LTable:
			prev.Append(lua.LString(e.Value))
		default:
			t.RawSetString(e.Name, lua.LString(e.Value))
		}
	}
	L.Push(t)
	if rbody == "" {
		L.Push(lua.LNil) // Envoy passes nil, not "", when there is no body
	} else {
		L.Push(lua.LString(rbody))
	}
	return 2
}

// integerOption reads a non-negative integer timeout as Envoy does: a
// number with a fraction, a string or nil is an error.
func integerOption(L *lua.LState, v lua.LValue, what string) int64 {
	n, ok := v.(lua.LNumber)
	if !ok || float64(n) != math.Trunc(float64(n)) {
		L.RaiseError("%s: expected an integer, got %s", what, v.Type())
	}
	if n < 0 {
		L.RaiseError("http call timeout must be >= 0")
	}
	return int64(n)
}

// do makes the call. Its failures come back as the responses Envoy's
// async client hands the script: the router's local replies for a timeout
// and for a failure before the response headers, the async client's
// synthesized 503 for a reset after them.
func (c *call) do(ctx context.Context, base string, h Headers, body string, timeoutMS int64) (int, Headers, string) {
	callCtx := ctx
	if timeoutMS > 0 {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithTimeout(ctx, time.Duration(timeoutMS)*time.Millisecond)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(callCtx, h.Get(":method"), strings.TrimRight(base, "/")+h.Get(":path"), strings.NewReader(body))
	if err != nil {
		return upstreamFailure()
	}
	req.Header = h.HTTP()
	req.Host = h.Get(":authority")
	resp, err := c.f.opts.Client.Do(req)
	if err != nil {
		if ctx.Err() == nil && errors.Is(callCtx.Err(), context.DeadlineExceeded) {
			return routerReply(http.StatusGatewayTimeout, "upstream request timeout")
		}
		reason := "connection termination"
		if errors.Is(err, syscall.ECONNREFUSED) {
			reason = "remote connection failure, transport failure reason: delayed connect error: Connection refused"
		} else if op := (*net.OpError)(nil); errors.As(err, &op) && op.Op == "dial" {
			reason = "remote connection failure"
		}
		return routerReply(http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: "+reason)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		// Headers arrived, then the stream broke: the router can no longer
		// answer locally, the async client reports a reset.
		return upstreamFailure()
	}
	var rh Headers
	for name, vs := range resp.Header {
		for _, v := range vs {
			rh = append(rh, Header{strings.ToLower(name), v})
		}
	}
	return resp.StatusCode, rh, string(b)
}

// routerReply is a local reply of Envoy's router as the async client
// returns it.
func routerReply(status int, body string) (int, Headers, string) {
	return status, HeadersOf("content-length", strconv.Itoa(len(body)), "content-type", "text/plain"), body
}

// upstreamFailure is StreamHandleWrapper::onFailure's fake response.
func upstreamFailure() (int, Headers, string) {
	return http.StatusServiceUnavailable, nil, "upstream failure"
}
