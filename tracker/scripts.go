package tracker

import (
	"context"
	"embed"
	"strings"

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
	src := string(lib) + "\n" + string(body)
	s := redis.NewScript(src)
	sources[s.Hash()] = src
	return s
}

// sources are the scripts' texts by hash, for runHot's EVAL.
var sources = map[string]string{}

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

// runHot runs the EVALSHA command args (from evalsha), and EVAL of the
// script's text when Redis does not know it yet (NOSCRIPT: restarted,
// failed over, flushed), as redis.Script.Run does. It takes the arguments
// already boxed, so that the admit and release calls box only their own.
//
// The client never retries these calls: one whose reply was lost may have
// run, and a release that runs twice takes another connection's slot off
// Redis' count (a Cluster client retries after EOF, timeouts and
// CLUSTERDOWN whatever MaxRetries says). Redirects (MOVED, ASK) are still
// followed: a redirected call did not run.
func runHot(ctx context.Context, c redis.UniversalClient, s *redis.Script, args []any) *redis.Cmd {
	cmd := once(ctx, c, args)
	if err := cmd.Err(); err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		cmd = once(ctx, c, append([]any{"eval", sources[s.Hash()]}, args[2:]...))
	}
	return cmd
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
func policyArg(p Policy) any {
	if p == PolicySpread {
		return spreadArg
	}
	return packArg
}

var packArg, spreadArg any = string(PolicyPack), string(PolicySpread)

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
