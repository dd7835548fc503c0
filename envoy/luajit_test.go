package envoy_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestFilterUnderRealLuaJIT runs wsgate.lua in a stock LuaJIT (Debian's
// luajit, no Lua 5.2 compatibility) with testdata/envoy_mock.lua, a mock
// of the handle API independent of envoy/luahost: coroutines that
// httpCall and respond yield, as in Envoy, userdata header maps, and a _G
// that refuses globals (Envoy reuses one state per worker).
func TestFilterUnderRealLuaJIT(t *testing.T) {
	bin, err := exec.LookPath("luajit")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("luajit missing (scripts/deps.sh installs it)")
		}
		t.Skip("luajit missing: run scripts/deps.sh")
	}
	out, err := exec.Command(bin, "testdata/envoy_mock.lua", "wsgate.lua").CombinedOutput()
	if err != nil {
		t.Fatalf("luajit: %v\n%s", err, out)
	}
	for _, c := range []string{"admitted", "default_timeout", "filter_error", "not_websocket", "rejected", "timeout"} {
		if !strings.Contains(string(out), "ok "+c+"\n") {
			t.Errorf("case %s did not pass:\n%s", c, out)
		}
	}
}
