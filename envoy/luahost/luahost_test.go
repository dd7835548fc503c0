package luahost_test

import (
	"context"
	"strings"
	"testing"

	"github.com/wsgate/wsgate/envoy/luahost"
)

func run(t *testing.T, code string, req luahost.Request) (luahost.Decision, error) {
	t.Helper()
	f, err := luahost.Load([]byte(code), luahost.Options{})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	return f.OnRequest(context.Background(), req)
}

func TestRespondEndsTheScript(t *testing.T) {
	d, err := run(t, `function envoy_on_request(h)
  h:respond({[":status"] = "418", ["x-a"] = "b"}, "teapot")
  h:streamInfo():dynamicMetadata():set("ns", "after", "respond")
end`, luahost.Request{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Local == nil || d.Local.Status != 418 || d.Local.Body != "teapot" || d.Local.Headers.Get("x-a") != "b" {
		t.Fatalf("local reply %+v", d.Local)
	}
	if len(d.Metadata) != 0 {
		t.Errorf("code after respond ran: metadata %v", d.Metadata)
	}
}

func TestHostErrorsAsEnvoyDoes(t *testing.T) {
	cases := map[string]string{
		"modified while iterating": `for k, v in pairs(h:headers()) do h:headers():remove(k) end`,
		"cluster invalid":          `h:httpCall("nowhere", {[":method"]="GET", [":path"]="/", [":authority"]="x"}, "", {timeout_ms = 10})`,
		":status":                  `h:respond({}, "no status")`,
	}
	for want, body := range cases {
		t.Run(want, func(t *testing.T) {
			_, err := run(t, "function envoy_on_request(h)\n"+body+"\nend", luahost.Request{Headers: luahost.HeadersOf("a", "1", "b", "2")})
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v, want one naming %q", err, want)
			}
		})
	}
}

func TestHeadersAndMetadataAPI(t *testing.T) {
	d, err := run(t, `function envoy_on_request(h)
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
end`, luahost.Request{Headers: luahost.HeadersOf("A", "1", "b", "2", "a", "3"), RemoteAddr: "1.2.3.4:5", RouteMetadata: map[string]any{"fleet": "chat"}})
	if err != nil {
		t.Fatal(err)
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
