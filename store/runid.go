package store

import (
	"context"
	"errors"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The hot scripts (admit, release) learn Redis' run_id from the script
// cache rather than from INFO: their text for one Redis process names its
// run_id, and it is loaded only into that process. PROTOCOL.md, "The run
// id without INFO", argues why this is the fence INFO was.

// runScripts are the hot scripts as loaded into the Redis process run.
// run "" means this server cannot have them (older than 7.0, no run_id):
// the scripts read INFO on every call.
type runScripts struct {
	run            string
	admit, release any // hashes, boxed
}

func (f *runScripts) hash(s *redis.Script) any {
	if s == scriptAdmit {
		return f.admit
	}
	return f.release
}

// runHot runs the EVALSHA command args (from evalsha) of the hot script s.
// With the run check cached (the default), it sends the text loaded for
// the running Redis process; on NOSCRIPT that process is gone or flushed
// its scripts, so it reads the run_id again (loadRun) before anything runs,
// once. Without, or where the server cannot have such a text, it sends the
// text that reads INFO, and EVAL of it on NOSCRIPT, as redis.Script.Run
// does. It takes the arguments already boxed, so that the admit and
// release calls box only their own.
//
// The client never retries these calls: one whose reply was lost may have
// run, and a release that runs twice takes another connection's slot off
// Redis' count (a Cluster client retries after EOF, timeouts and
// CLUSTERDOWN whatever MaxRetries says). Redirects (MOVED, ASK) are still
// followed: a redirected call did not run.
func (s *Store) runHot(ctx context.Context, hot *hotKeys, sc *redis.Script, args []any) *redis.Cmd {
	if s.cacheRun {
		if cmd := s.runLoaded(ctx, hot, sc, args); cmd != nil {
			return cmd
		}
		args[1] = sc.Hash()
	}
	cmd := once(ctx, s.rdb, args)
	if noScript(cmd.Err()) {
		if s.cacheRun {
			hot.loaded.Store(nil) // another process: it may take the text
		}
		cmd = once(ctx, s.rdb, append([]any{"eval", text(sc)}, args[2:]...))
	}
	return cmd
}

// runLoaded sends args with the text loaded for the running process,
// loading it first (again after a NOSCRIPT, once). nil: this server gets
// the text that reads INFO.
func (s *Store) runLoaded(ctx context.Context, hot *hotKeys, sc *redis.Script, args []any) *redis.Cmd {
	for range 2 {
		f := hot.loaded.Load()
		if f == nil {
			var err error
			if f, err = s.loadRun(ctx, hot); err != nil {
				// Redis unreachable: the call would fail the same way.
				cmd := redis.NewCmd(ctx, args...)
				cmd.SetErr(err)
				return cmd
			}
		}
		if f.run == "" {
			return nil
		}
		args[1] = f.hash(sc)
		if cmd := once(ctx, s.rdb, args); !noScript(cmd.Err()) {
			return cmd
		}
		hot.loaded.CompareAndSwap(f, nil)
	}
	return nil
}

func noScript(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") }

// loadRun loads the hot scripts' texts for the running Redis process of
// hot's fleet and records them in hot. It reads the run_id and loads the
// texts on one connection: a connection does not outlive its server
// process, so they are loaded into the process that has that run_id and no
// other. A server that cannot say (older than 7.0, no run_id, no single
// server for the key) or refuses INFO or SCRIPT LOAD gets the texts that
// read INFO (run ""); only an unreachable Redis is an error.
func (s *Store) loadRun(ctx context.Context, hot *hotKeys) (*runScripts, error) {
	perCall := &runScripts{}
	node, err := nodeOf(ctx, s.rdb, hot.slotKey)
	if err != nil {
		hot.loaded.Store(perCall)
		return perCall, nil
	}
	conn := node.Conn()
	defer conn.Close()
	var a, r *redis.StringCmd
	info, err := conn.Info(ctx, "server").Result()
	run, ok := cachedRunID(info)
	if err == nil && ok {
		_, err = conn.Pipelined(ctx, func(p redis.Pipeliner) error {
			a = p.ScriptLoad(ctx, forRun(scriptAdmit, run))
			r = p.ScriptLoad(ctx, forRun(scriptRelease, run))
			return nil
		})
	}
	var refused redis.Error
	switch {
	case errors.As(err, &refused) || (err == nil && !ok):
		hot.loaded.Store(perCall)
		return perCall, nil
	case err != nil:
		return nil, err
	}
	f := &runScripts{run: run, admit: a.Val(), release: r.Val()}
	hot.loaded.Store(f)
	return f, nil
}

// nodeOf is the client of the one server that holds key.
func nodeOf(ctx context.Context, rdb redis.UniversalClient, key string) (*redis.Client, error) {
	switch c := rdb.(type) {
	case *redis.Client: // one server, or Sentinel's master
		return c, nil
	case *redis.ClusterClient:
		return c.MasterForKey(ctx, key)
	}
	return nil, errors.New("no single server for a key")
}

// cachedRunID reads INFO server: the run_id, and whether the server keeps
// its script cache only in memory, so that a script it has was loaded
// into this very process. Redis 7.0 stopped saving scripts in RDB and
// propagating SCRIPT LOAD to replicas and the AOF; 6.2 does all three.
func cachedRunID(info string) (string, bool) {
	var run string
	major := 0
	for _, line := range strings.Split(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		switch k {
		case "run_id":
			run = v
		case "redis_version":
			major, _ = strconv.Atoi(strings.SplitN(v, ".", 2)[0])
		}
	}
	if major < 7 || len(run) != 40 || strings.Trim(run, "0123456789abcdef") != "" {
		return "", false
	}
	return run, true
}
