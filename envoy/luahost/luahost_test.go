package luahost_test

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/wsgate/wsgate/envoy/luahost"
)

func load(t *testing.T, code string, opts luahost.Options) *luahost.Filter {
	t.Helper()
	f, err := luahost.Load([]byte(code), opts)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(f.Close)
	return f
}

func run(t *testing.T, code string, req luahost.Request) luahost.Decision {
	t.Helper()
	d, err := load(t, code, luahost.Options{Clusters: map[string]string{"c": "http://127.0.0.1:1"}}).OnRequest(context.Background(), req)
	if err != nil {
		t.Fatalf("host: %v", err)
	}
	return d
}

func TestRespondEndsTheScriptEvenInsidePcall(t *testing.T) {
	d := run(t, `function envoy_on_request(h)
  local ok = pcall(function() h:respond({[":status"] = "418", ["x-a"] = "b"}, "teapot") end)
  h:streamInfo():dynamicMetadata():set("ns", "after", "respond")
  h:respond({[":status"] = "500"}, "second")
end`, luahost.Request{})
	if d.ScriptError != nil {
		t.Fatal(d.ScriptError)
	}
	if d.Local == nil || d.Local.Status != 418 || d.Local.Body != "teapot" || d.Local.Headers.Get("x-a") != "b" {
		t.Fatalf("local reply %+v", d.Local)
	}
	if len(d.Metadata) != 0 {
		t.Errorf("code after respond ran: metadata %v", d.Metadata)
	}
}

// Envoy logs a script error and continues the request with what the script
// changed so far: an error is a bypass unless the script fails closed.
func TestScriptErrorContinuesTheRequest(t *testing.T) {
	d := run(t, `function envoy_on_request(h)
  h:headers():remove("x-gone")
  h:streamInfo():dynamicMetadata():set("ns", "k", "v")
  error("boom")
end`, luahost.Request{Headers: luahost.HeadersOf("x-gone", "1", "x-kept", "2")})
	if d.ScriptError == nil || !strings.Contains(d.ScriptError.Error(), "boom") {
		t.Fatalf("script error %v, want boom", d.ScriptError)
	}
	if d.Local != nil {
		t.Errorf("local reply %+v: Envoy continues the request", d.Local)
	}
	if d.Headers.Has("x-gone") || !d.Headers.Has("x-kept") || d.Metadata["ns"]["k"] != "v" {
		t.Errorf("changes before the error lost: headers %v metadata %v", d.Headers, d.Metadata)
	}
}

func TestHostErrorsAsEnvoyDoes(t *testing.T) {
	call := `h:httpCall("c", {[":method"]="GET", [":path"]="/", [":authority"]="x"}, "", `
	cases := map[string]string{
		"modified while iterating":      `for k, v in pairs(h:headers()) do h:headers():remove(k) end`,
		"cluster invalid":               `h:httpCall("nowhere", {[":method"]="GET", [":path"]="/", [":authority"]="x"}, "", {timeout_ms = 10})`,
		"must include ':path'":          `h:httpCall("c", {[":method"]="GET"}, "", {timeout_ms = 10})`,
		"is not valid key":              call + `{timeout = 10})`,
		"'timeout_ms' option":           call + `{timeout_ms = 2.5})`,
		"timeout_ms' option: expected":  call + `{timeout_ms = "10"})`,
		"timeout must be >= 0":          call + `{timeout_ms = -1})`,
		"httpCall: expected an integer": call + `nil)`,
		"asynchronous flag":             call + `10, "yes")`,
		"between 200-599":               `h:respond({[":status"] = "101"}, "")`,
		"must be between 200-599":       `h:respond({[":status"] = "600"}, "")`,
		":status must":                  `h:respond({}, "no status")`,
	}
	for want, body := range cases {
		t.Run(want, func(t *testing.T) {
			d := run(t, "function envoy_on_request(h)\n"+body+"\nend", luahost.Request{Headers: luahost.HeadersOf("a", "1", "b", "2")})
			if d.ScriptError == nil || !strings.Contains(d.ScriptError.Error(), want) {
				t.Errorf("script error %v, want one naming %q", d.ScriptError, want)
			}
			if d.Local != nil {
				t.Errorf("local reply %+v after a script error", d.Local)
			}
		})
	}
}

func TestHeadersAndMetadataAPI(t *testing.T) {
	d := run(t, `function envoy_on_request(h)
  local hs = h:headers()
  local n = 0
  for k, v in pairs(hs) do n = n + 1 end
  hs:add("x-count", tostring(n))
  hs:replace("a", "one")
  hs:replace("new", "yes")
  hs:remove("b")
  local dm = h:streamInfo():dynamicMetadata()
  dm:set("ns", "k", h:metadata():get("fleet") .. "@" .. h:streamInfo():downstreamRemoteAddress())
  dm:set("ns", "got", dm:get("ns")["k"])
  if h:metadata():get("missing") ~= nil then error("missing metadata is not nil") end
end`, luahost.Request{Headers: luahost.HeadersOf("A", "1", "b", "2", "a", "3"), RemoteAddr: "1.2.3.4:5",
		RouteMetadata: map[string]map[string]any{luahost.DefaultFilterName: {"fleet": "chat"}}})
	if d.ScriptError != nil {
		t.Fatal(d.ScriptError)
	}
	if got := d.Headers.Get("x-count"); got != "3" {
		t.Errorf("pairs saw %s headers, want 3", got)
	}
	if got := d.Headers.Values("a"); len(got) != 1 || got[0] != "one" {
		t.Errorf("replace left a = %v, want [one]", got)
	}
	if d.Headers.Has("b") || d.Headers.Get("new") != "yes" {
		t.Errorf("headers %v: want b removed and new added", d.Headers)
	}
	if d.Metadata["ns"]["k"] != "chat@1.2.3.4:5" || d.Metadata["ns"]["got"] != "chat@1.2.3.4:5" {
		t.Errorf("metadata %v", d.Metadata)
	}
}

// handle:metadata() reads filter_metadata under the filter's configured
// name, and falls back to envoy.filters.http.lua, as Envoy's getMetadata.
func TestMetadataUnderTheFilterName(t *testing.T) {
	code := `function envoy_on_request(h) h:respond({[":status"] = "200"}, tostring(h:metadata():get("fleet"))) end`
	both := map[string]map[string]any{"wsgate.lua": {"fleet": "own"}, luahost.DefaultFilterName: {"fleet": "fallback"}, "other": {"fleet": "other"}}
	cases := []struct {
		name string
		md   map[string]map[string]any
		want string
	}{
		{"wsgate.lua", both, "own"},
		{"wsgate.lua", map[string]map[string]any{luahost.DefaultFilterName: {"fleet": "fallback"}}, "fallback"},
		{"wsgate.lua", map[string]map[string]any{"other": {"fleet": "other"}}, "nil"},
		{"", both, "fallback"},
	}
	for _, c := range cases {
		f := load(t, code, luahost.Options{FilterName: c.name})
		d, _ := f.OnRequest(context.Background(), luahost.Request{RouteMetadata: c.md})
		if d.Local == nil || d.Local.Body != c.want {
			t.Errorf("filter %q, metadata %v: got %+v, want %s", c.name, c.md, d.Local, c.want)
		}
	}
}

// Envoy keeps one Lua state per worker for all its requests: a global one
// request writes is seen by the next.
func TestStateIsReusedAcrossRequests(t *testing.T) {
	f := load(t, `n = 0
function envoy_on_request(h) n = n + 1; h:respond({[":status"] = "200"}, tostring(n)) end`, luahost.Options{})
	for i, want := range []string{"1", "2", "3"} {
		d, _ := f.OnRequest(context.Background(), luahost.Request{})
		if d.Local == nil || d.Local.Body != want {
			t.Fatalf("request %d saw n = %+v, want %s", i, d.Local, want)
		}
	}
}

func TestRepeatedResponseHeaders(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("x-r", "first")
		w.Header().Add("x-r", "last")
	}))
	t.Cleanup(srv.Close)
	f := load(t, `function envoy_on_request(h)
  local req = {[":method"]="GET", [":path"]="/", [":authority"]="x"}
  local one = h:httpCall("c", req, "", {timeout_ms = 10000})
  local all = h:httpCall("c", req, "", {timeout_ms = 10000, return_duplicate_headers = true})
  h:respond({[":status"] = "200"}, one["x-r"] .. "|" .. table.concat(all["x-r"], ","))
end`, luahost.Options{Clusters: map[string]string{"c": srv.URL}})
	d, _ := f.OnRequest(context.Background(), luahost.Request{})
	if d.ScriptError != nil || d.Local == nil || d.Local.Body != "last|first,last" {
		t.Fatalf("got %+v (%v), want last|first,last", d.Local, d.ScriptError)
	}
}

// httpCall's failures come back as Envoy produces them.
func TestHTTPCallFailuresAsEnvoy(t *testing.T) {
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(slow.Close)
	hijack := func(afterHeaders bool) string {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			if afterHeaders {
				_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
				_ = buf.Flush()
			}
			conn.Close()
		}))
		t.Cleanup(s.Close)
		return s.URL
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := "http://" + ln.Addr().String()
	ln.Close()
	cases := []struct {
		name, url, timeout, status, body string
	}{
		{"timeout", slow.URL, "50", "504", "upstream request timeout"},
		{"connection refused", refused, "10000", "503", "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"},
		{"reset before headers", hijack(false), "10000", "503", "upstream connect error or disconnect/reset before headers. reset reason: connection termination"},
		{"reset after headers", hijack(true), "10000", "503", "upstream failure"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := load(t, `function envoy_on_request(h)
  local rh, body = h:httpCall("c", {[":method"]="GET", [":path"]="/", [":authority"]="x"}, "", {timeout_ms = `+c.timeout+`})
  h:respond({[":status"] = "200"}, rh[":status"] .. " " .. tostring(body))
end`, luahost.Options{Clusters: map[string]string{"c": c.url}})
			d, _ := f.OnRequest(context.Background(), luahost.Request{})
			if d.ScriptError != nil || d.Local == nil {
				t.Fatalf("got %+v (%v)", d.Local, d.ScriptError)
			}
			if want := c.status + " " + c.body; !strings.HasPrefix(d.Local.Body, want) {
				t.Errorf("httpCall returned %q, want %q", d.Local.Body, want)
			}
		})
	}
}
