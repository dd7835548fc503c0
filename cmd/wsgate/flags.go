package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/wsgate/wsgate/store"
)

// parseFlags parses args, then fills every flag not given on the command
// line from WSGATE_<NAME> in the environment (secrets stay out of argv).
func parseFlags(fs *flag.FlagSet, args []string) error {
	rest, err := parseFlagsRest(fs, args, 0)
	if err == nil && len(rest) > 0 {
		err = fmt.Errorf("unexpected argument %q", rest[0])
	}
	return err
}

// parseFlagsRest is parseFlags for commands that take up to positional
// arguments, anywhere among the flags; it returns them.
func parseFlagsRest(fs *flag.FlagSet, args []string, positional int) ([]string, error) {
	explainValues(fs)
	// The flag package prints the whole usage on any error: only -h gets
	// it; a wrong flag gets its error and a hint (main prints it).
	out, usage := fs.Output(), fs.Usage
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	defer func() { fs.SetOutput(out); fs.Usage = usage }()
	var rest []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(out)
				usage()
				return nil, err
			}
			return nil, fmt.Errorf("%w (%s -h lists the flags)", err, fs.Name())
		}
		if fs.NArg() == 0 {
			break
		}
		if len(rest) == positional {
			return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
		}
		rest = append(rest, fs.Arg(0))
		args = fs.Args()[1:]
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		env := "WSGATE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(env); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", env, v, e)
			}
		}
	})
	return rest, err
}

// explainValues makes the flags whose values the flag package parses say
// what they want: it answers a bad value with "parse error" only.
func explainValues(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		g, ok := f.Value.(flag.Getter)
		if !ok {
			return
		}
		switch g.Get().(type) {
		case time.Duration:
			f.Value = explained{g, "want a duration such as 5s, 500ms or 1m30s"}
		case int, int64, uint, uint64:
			f.Value = explained{g, "want a whole number"}
		case float64:
			f.Value = explained{g, "want a number"}
		}
	})
}

// explained is a flag value whose parse errors say what it wants.
type explained struct {
	flag.Getter
	want string
}

// String is the value's, and "" for the zero explained the flag package
// makes to tell whether a default is worth printing in -h.
func (e explained) String() string {
	if e.Getter == nil {
		return ""
	}
	return e.Getter.String()
}

func (e explained) Set(s string) error {
	if err := e.Getter.Set(s); err != nil {
		return errors.New(e.want)
	}
	return nil
}

// redisFlags registers the Redis connection flags shared by every command.
func redisFlags(fs *flag.FlagSet) *redisOptions {
	o := &redisOptions{}
	fs.StringVar(&o.addrs, "redis-addr", "127.0.0.1:6379", "Redis address; several, comma-separated, for Cluster seeds or Sentinels")
	fs.StringVar(&o.cfg.MasterName, "redis-master-name", "", "Sentinel master name (redis-addr then lists the Sentinels)")
	fs.BoolVar(&o.cfg.Cluster, "redis-cluster", false, "Redis Cluster, even with a single seed address")
	fs.StringVar(&o.cfg.Username, "redis-username", "", "Redis ACL user")
	fs.StringVar(&o.cfg.Password, "redis-password", "", "Redis password (prefer WSGATE_REDIS_PASSWORD)")
	fs.StringVar(&o.cfg.SentinelPassword, "redis-sentinel-password", "", "password of the Sentinels, if they need one")
	fs.IntVar(&o.cfg.DB, "redis-db", 0, "Redis database (single node and Sentinel only)")
	fs.BoolVar(&o.cfg.TLS, "redis-tls", false, "connect to Redis over TLS")
	fs.StringVar(&o.cfg.TLSCAFile, "redis-tls-ca", "", "CA bundle that signs the Redis server certificate (default: system roots)")
	fs.StringVar(&o.cfg.TLSCertFile, "redis-tls-cert", "", "client certificate, for Redis servers that require one")
	fs.StringVar(&o.cfg.TLSKeyFile, "redis-tls-key", "", "client certificate key")
	fs.StringVar(&o.cfg.TLSServerName, "redis-tls-server-name", "", "server name to verify (default: from the address)")
	fs.StringVar(&o.cfg.Prefix, "redis-prefix", "wsgate", "key prefix: keys are {<prefix>:<fleet>}:...")
	fs.DurationVar(&o.cfg.DialTimeout, "redis-dial-timeout", 2*time.Second, "Redis connect timeout")
	return o
}

type redisOptions struct {
	addrs string
	cfg   store.RedisConfig
}

func (o *redisOptions) config() store.RedisConfig {
	c := o.cfg
	for _, a := range strings.Split(o.addrs, ",") {
		if a = strings.TrimSpace(a); a != "" {
			c.Addrs = append(c.Addrs, a)
		}
	}
	return c
}

// requireLoopback refuses to serve the tracker's APIs beyond this host:
// whoever reaches them can place or release connections on any pod.
func requireLoopback(flagName, addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--%s %q: %w", flagName, addr, err)
	}
	ip := net.ParseIP(host)
	if host == "localhost" || (ip != nil && ip.IsLoopback()) {
		return nil
	}
	return fmt.Errorf("--%s %q: must be a loopback address (127.0.0.1 or ::1): only the local Envoy may reach it", flagName, addr)
}

func newLogger(level string) (*slog.Logger, error) { return newLoggerTo(os.Stderr, level) }

// newLoggerTo is the JSON logger of every command on w. Durations are
// written as "10s", not nanoseconds; the Redis client's own messages go
// through it too (at warn: it reports only trouble), not as plain text.
func newLoggerTo(w io.Writer, level string) (*slog.Logger, error) {
	l, err := parseLogLevel(level)
	if err != nil {
		return nil, err
	}
	log := slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: l, ReplaceAttr: durationStrings}))
	redisLog.Store(log.With("component", "redis"))
	redisLogOnce.Do(func() { redis.SetLogger(redisLogs) })
	return log, nil
}

func parseLogLevel(level string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return l, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return l, nil
}

// go-redis' logger is a global its goroutines read: set once, pointing at
// the latest logger.
var (
	redisLog     atomic.Pointer[slog.Logger]
	redisLogOnce sync.Once
	redisLogs    = &redisLogger{every: redisWarnEvery, now: time.Now, last: map[string]redisLogged{}}
)

// redisWarnEvery spaces go-redis' repeated messages as the tracker spaces
// its own warnings of a lasting Redis failure (README: every 30 s): during
// an outage go-redis reports each failed dial, every heartbeat.
const redisWarnEvery = 30 * time.Second

func durationStrings(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// redisLogger is go-redis' logger on slog, one line per kind of message
// (its format) every `every`; the lines it held back are counted in the
// next one ("repeated").
type redisLogger struct {
	every time.Duration
	now   func() time.Time

	mu   sync.Mutex
	last map[string]redisLogged
}

type redisLogged struct {
	at       time.Time
	repeated int
}

func (l *redisLogger) Printf(ctx context.Context, format string, v ...any) {
	now := l.now()
	l.mu.Lock()
	prev, seen := l.last[format]
	if seen && now.Sub(prev.at) < l.every {
		prev.repeated++
		l.last[format] = prev
		l.mu.Unlock()
		return
	}
	l.last[format] = redisLogged{at: now}
	l.mu.Unlock()
	if prev.repeated > 0 {
		redisLog.Load().WarnContext(ctx, fmt.Sprintf(format, v...), "repeated", prev.repeated, "since", now.Sub(prev.at).Round(time.Second))
		return
	}
	redisLog.Load().WarnContext(ctx, fmt.Sprintf(format, v...))
}

// configOK ends a --check-config run: the log level is parsed, and the
// Redis client built from the flags (its address rules checked, TLS files
// read) but never dialled. No logger is made: that would set go-redis'
// global one.
func configOK(logLevel string, redisCfg store.RedisConfig) error {
	if _, err := parseLogLevel(logLevel); err != nil {
		return err
	}
	rdb, err := store.NewRedisClient(redisCfg)
	if err != nil {
		return err
	}
	_ = rdb.Close()
	_, err = fmt.Println("config ok")
	return err
}
