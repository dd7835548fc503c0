package luahost

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
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
// the older handle:httpCall(cluster, headers, body, timeout_ms, asynchronous).
func (c *call) httpCall(L *lua.LState) int {
	cluster := L.CheckString(2)
	h := tableHeaders(L, L.CheckTable(3))
	body := L.OptString(4, "")
	var timeoutMS int64
	async := false
	switch o := L.Get(5).(type) {
	case *lua.LTable:
		if v, ok := o.RawGetString("timeout_ms").(lua.LNumber); ok {
			timeoutMS = int64(v)
		}
		async = lua.LVAsBool(o.RawGetString("asynchronous"))
	case lua.LNumber:
		timeoutMS = int64(o)
		async = lua.LVAsBool(L.Get(6))
	case *lua.LNilType:
	default:
		L.ArgError(5, "options table or timeout in ms expected")
	}
	base, ok := c.f.opts.Clusters[cluster]
	if !ok {
		L.RaiseError("http call cluster invalid. Must be configured")
	}
	for _, p := range []string{":method", ":path", ":authority"} {
		if !h.Has(p) {
			L.RaiseError("http call: headers must include %s", p)
		}
	}
	if timeoutMS < 0 {
		L.RaiseError("http call timeout must be >= 0")
	}
	if async {
		go c.do(context.WithoutCancel(c.ctx), base, h, body, timeoutMS)
		return 0
	}
	status, rh, rbody := c.do(c.ctx, base, h, body, timeoutMS)
	t := L.NewTable()
	t.RawSetString(":status", lua.LString(strconv.Itoa(status)))
	for _, e := range rh {
		if prev, ok := t.RawGetString(e.Name).(lua.LString); ok {
			t.RawSetString(e.Name, lua.LString(string(prev)+","+e.Value))
			continue
		}
		t.RawSetString(e.Name, lua.LString(e.Value))
	}
	L.Push(t)
	if rbody == "" {
		L.Push(lua.LNil) // Envoy passes nil, not "", when there is no body
	} else {
		L.Push(lua.LString(rbody))
	}
	return 2
}

// do makes the call; any failure, timeout included, becomes the response
// Envoy synthesizes for a failed async client request.
func (c *call) do(ctx context.Context, base string, h Headers, body string, timeoutMS int64) (int, Headers, string) {
	if timeoutMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(timeoutMS)*time.Millisecond)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, h.Get(":method"), strings.TrimRight(base, "/")+h.Get(":path"), strings.NewReader(body))
	if err != nil {
		return upstreamFailure()
	}
	req.Header = h.HTTP()
	req.Host = h.Get(":authority")
	resp, err := c.f.opts.Client.Do(req)
	if err != nil {
		return upstreamFailure()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
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

func upstreamFailure() (int, Headers, string) {
	return http.StatusServiceUnavailable, nil, "upstream failure"
}
