package store

import (
	"context"
	"embed"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/fleets"
)

//go:embed scripts/*.lua
var scriptFS embed.FS

// loadScript joins lib.lua and one script. go-redis runs it with EVALSHA and
// falls back to EVAL on NOSCRIPT, so a restarted or failed-over Redis is
// reloaded transparently. This text reads Redis' run id with INFO; the hot
// scripts also have a text per Redis process (forRun).
func loadScript(name string) *redis.Script {
	lib, err := scriptFS.ReadFile("scripts/lib.lua")
	if err != nil {
		panic(err) // embedded at build time: cannot happen
	}
	body, err := scriptFS.ReadFile("scripts/" + name + ".lua")
	if err != nil {
		panic(err)
	}
	src := string(lib) + "\n" + string(body)
	s := redis.NewScript("local RUN = false\n" + src)
	sources[s.Hash()] = src
	return s
}

// sources are the scripts' texts by hash, without their first line (RUN).
var sources = map[string]string{}

// text is s as EVAL sends it.
func text(s *redis.Script) string { return "local RUN = false\n" + sources[s.Hash()] }

// forRun is the text of s for the Redis process whose run_id is run: it
// answers run_id() without INFO. It must only be loaded where it is true
// (loadRun).
func forRun(s *redis.Script, run string) string {
	return "local RUN = '" + run + "'\n" + sources[s.Hash()]
}

// evalsha begins an EVALSHA command of s on keys: the fixed part of the
// calls runHot makes.
func evalsha(s *redis.Script, keys ...string) []any {
	args := make([]any, 0, 3+len(keys))
	args = append(args, "evalsha", s.Hash(), len(keys))
	for _, k := range keys {
		args = append(args, k)
	}
	return args
}

// noRetry is a command the client sends once.
type noRetry struct{ *redis.Cmd }

func (noRetry) NoRetry() bool { return true }

func once(ctx context.Context, c redis.UniversalClient, args []any) *redis.Cmd {
	cmd := redis.NewCmd(ctx, args...)
	_ = c.Process(ctx, noRetry{cmd})
	return cmd
}

// policyArg is a policy as a script argument, boxed once.
func policyArg(p fleets.Policy) any {
	if p == fleets.PolicySpread {
		return spreadArg
	}
	return packArg
}

var packArg, spreadArg any = string(fleets.PolicyPack), string(fleets.PolicySpread)

var (
	scriptAdmit     = loadScript("admit")
	scriptRelease   = loadScript("release")
	scriptSync      = loadScript("sync")
	scriptInstances = loadScript("instances")
	scriptReap      = loadScript("reap")
	scriptLeave     = loadScript("leave")
	scriptSetPods   = loadScript("setpods")
	scriptSummary   = loadScript("summary")
	scriptSnapshot  = loadScript("snapshot")
	scriptRecovery  = loadScript("recovery")

	scriptDecisionRecord = loadScript("decision_record")
	scriptDecisionOthers = loadScript("decision_others")
	scriptScaleDown      = loadScript("scaledown")
	scriptLayout         = loadScript("layout")
	scriptLayoutMirror   = loadScript("layout_mirror")
)
