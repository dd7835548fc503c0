package tracker

import (
	"embed"

	"github.com/redis/go-redis/v9"
)

//go:embed scripts/*.lua
var scriptFS embed.FS

// loadScript joins lib.lua and one script. go-redis runs it with EVALSHA and
// falls back to EVAL on NOSCRIPT, so a restarted or failed-over Redis is
// reloaded transparently.
func loadScript(name string) *redis.Script {
	lib, err := scriptFS.ReadFile("scripts/lib.lua")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	body, err := scriptFS.ReadFile("scripts/" + name + ".lua")
	if err != nil {
		panic(err)
	}
	return redis.NewScript(string(lib) + "\n" + string(body))
}

var (
	scriptAdmit    = loadScript("admit")
	scriptRelease  = loadScript("release")
	scriptSync     = loadScript("sync")
	scriptReap     = loadScript("reap")
	scriptLeave    = loadScript("leave")
	scriptSetPods  = loadScript("setpods")
	scriptSummary  = loadScript("summary")
	scriptSnapshot = loadScript("snapshot")
	scriptRecovery = loadScript("recovery")
)
