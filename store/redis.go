package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisConfig says how to reach Redis: one address, Sentinel (MasterName) or
// Cluster (Cluster, or several Addrs).
type RedisConfig struct {
	Addrs      []string
	MasterName string
	Cluster    bool
	Username   string
	Password   string
	// SentinelPassword authenticates to the Sentinels, when they need it.
	SentinelPassword string
	DB               int
	TLS              bool
	TLSCAFile        string
	TLSCertFile      string
	TLSKeyFile       string
	TLSServerName    string
	// Prefix starts every key: {<Prefix>:<fleet>}:... Default "wsgate".
	Prefix       string
	DialTimeout  time.Duration
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	PoolSize     int
}

// NewRedisClient builds the go-redis client of c.
func NewRedisClient(c RedisConfig) (redis.UniversalClient, error) {
	if len(c.Addrs) == 0 {
		return nil, errors.New("redis: at least one address is required")
	}
	if c.MasterName != "" && c.Cluster {
		return nil, errors.New("redis: a Sentinel master name and cluster mode exclude each other")
	}
	if (c.Cluster || len(c.Addrs) > 1) && c.MasterName == "" && c.DB != 0 {
		return nil, fmt.Errorf("redis: db %d: Redis Cluster has only db 0", c.DB)
	}
	opts := &redis.UniversalOptions{
		Addrs:            c.Addrs,
		MasterName:       c.MasterName,
		IsClusterMode:    c.Cluster,
		Username:         c.Username,
		Password:         c.Password,
		SentinelPassword: c.SentinelPassword,
		DB:               c.DB,
		DialTimeout:      c.DialTimeout,
		ReadTimeout:      c.ReadTimeout,
		WriteTimeout:     c.WriteTimeout,
		PoolSize:         c.PoolSize,
		// Admission must fail fast into the fallback rather than queue
		// behind a dead connection: the caller's context bounds each call.
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		// One dial attempt: the pool's own retries (with 100ms pauses)
		// would outlast every admission's deadline.
		DialerRetries: 1,
		// No hand-off of a live connection to another endpoint (Redis
		// Cloud's maintenance notifications): a connection must end with
		// the server process it reached (PROTOCOL.md, "The run id without
		// INFO").
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if c.TLS {
		tc, err := clientTLS(c)
		if err != nil {
			return nil, err
		}
		opts.TLSConfig = tc
	}
	return redis.NewUniversalClient(opts), nil
}

func clientTLS(c RedisConfig) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: c.TLSServerName}
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("redis tls ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("redis tls ca %s: no PEM certificate found", c.TLSCAFile)
		}
		tc.RootCAs = pool
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return nil, errors.New("redis tls: a client certificate needs both the cert and the key file")
	}
	if c.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(c.TLSCertFile, c.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("redis tls client certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// DescribeRedisError says, for an operator, what a failed Redis call means:
// Redis' own error code when it answered, and what to do about it.
func DescribeRedisError(err error) string {
	if errors.Is(err, ErrNotReplicated) {
		return "Redis ran the admission but its replicas did not acknowledge it in time (WAIT): a replica is down, cut off or lagging; the admission is refused, and counted in Redis until the next heartbeat (--redis-wait-replicas, --redis-wait-timeout)"
	}
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
			return "Redis did not answer in time"
		}
		return "Redis unreachable"
	}
	msg := rerr.Error()
	code, _, _ := strings.Cut(msg, " ")
	switch code {
	case "NOPERM":
		return "Redis refused the command to this ACL user (NOPERM): grant the ACL README's Configuration section lists (Redis ACL)"
	case "NOAUTH", "WRONGPASS":
		return "Redis refused the credentials (" + code + "): check --redis-username and --redis-password"
	case "NOSCRIPT":
		return "Redis has no such script (NOSCRIPT) and would not take it: is EVAL allowed?"
	case "OOM":
		return "Redis is out of memory (OOM): raise maxmemory, or use a noeviction policy with room for wsgate's keys"
	case "READONLY":
		return "Redis is a read-only replica (READONLY): point --redis-addr at the master (or use Sentinel)"
	case "MASTERDOWN", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN":
		return "Redis is not serving yet (" + code + ")"
	}
	if lower := strings.ToLower(msg); strings.Contains(lower, "unknown command") && strings.Contains(lower, "sentinel") {
		// --redis-master-name asks --redis-addr for the master with
		// SENTINEL get-master-addr-by-name, which only a Sentinel knows.
		return "--redis-addr is not a Sentinel but a plain Redis (" + msg + "): drop --redis-master-name to use it directly, or list the Sentinels' addresses (port 26379 by default) in --redis-addr"
	}
	if strings.Contains(msg, "scripting") || strings.Contains(strings.ToLower(msg), "unknown command") {
		return "Redis does not run scripts (" + msg + "): wsgate needs EVAL/EVALSHA"
	}
	return "Redis answered an error (" + code + ")"
}
