package envoy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wsgate/wsgate/envoy"
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
	run := func(t *testing.T, file, mode string, want ...string) {
		out, err := exec.Command(bin, "testdata/envoy_mock.lua", file, mode).CombinedOutput()
		if err != nil {
			t.Fatalf("luajit: %v\n%s", err, out)
		}
		for _, c := range want {
			if !strings.Contains(string(out), "ok "+c+"\n") {
				t.Errorf("case %s did not pass:\n%s", c, out)
			}
		}
	}
	run(t, "wsgate.lua", "", "admitted", "bad_settings", "default_timeout", "filter_error", "not_websocket", "override_host", "rejected", "timeout")
	// The form the Helm chart installs, its INSTALL line replaced.
	installed, err := envoy.WithInstall(envoy.FilterLua, `{ fleet = "chat", pin = "override_host", admit_timeout_ms = 900 }`)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "wsgate.lua")
	if err := os.WriteFile(file, installed, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, file, "installed", "installed")
}
