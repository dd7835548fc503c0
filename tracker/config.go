package tracker

import (
	"errors"
	"fmt"
	"github.com/wsgate/wsgate/fleets"
	"time"
)

// FallbackMode says how a tracker admits while Redis cannot be reached.
type FallbackMode string

const (
	// FallbackShare admits only into slots Redis already counts for this
	// instance (its entitlement), so the fleet never exceeds the cap.
	FallbackShare FallbackMode = "share"
	// FallbackClosed rejects every admission while Redis is down.
	FallbackClosed FallbackMode = "closed"
	// FallbackOpen admits against the last known counts as if the other
	// instances admitted nothing: availability first, the cap may be exceeded.
	FallbackOpen FallbackMode = "open"
)

// Config is one tracker instance.
type Config struct {
	// InstanceID names this instance in Redis; it must be unique among the
	// instances of a fleet (the Envoy pod's name is a good choice).
	InstanceID string
	Fleets     []fleets.Fleet
	// Heartbeat is the interval of sync. Default 2s.
	Heartbeat time.Duration
	// InstanceTTL is how long an instance stays alive in Redis without a
	// heartbeat before others reap its connections. Default 5 x Heartbeat.
	InstanceTTL time.Duration
	// EstablishTimeout releases an admitted connection that Envoy never
	// reported established. Default 30s.
	EstablishTimeout time.Duration
	// LeaseTTL releases an established connection whose lease Envoy did not
	// renew (access_log_flush_interval) in time. Default 90s.
	LeaseTTL time.Duration
	// RedisTimeout bounds one admission (waiting for a heartbeat included)
	// and one heartbeat; past it the fallback decides. Keep it well below
	// the Lua filter's httpCall timeout (250ms). Default 100ms.
	RedisTimeout time.Duration
	Fallback     FallbackMode
	// ExpiredInstances is reap (default) or keep; every tracker and the
	// scaler of a fleet must agree.
	ExpiredInstances fleets.ExpiredMode
}

// WithDefaults returns c with every unset field at its documented default.
func (c Config) WithDefaults() Config {
	if c.Heartbeat == 0 {
		c.Heartbeat = 2 * time.Second
	}
	if c.InstanceTTL == 0 {
		c.InstanceTTL = 5 * c.Heartbeat
	}
	if c.EstablishTimeout == 0 {
		c.EstablishTimeout = 30 * time.Second
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 90 * time.Second
	}
	if c.RedisTimeout == 0 {
		c.RedisTimeout = 100 * time.Millisecond
	}
	if c.Fallback == "" {
		c.Fallback = FallbackShare
	}
	if c.ExpiredInstances == "" {
		c.ExpiredInstances = fleets.ExpiredReap
	}
	for i := range c.Fleets {
		c.Fleets[i] = c.Fleets[i].WithDefaults()
	}
	return c
}

// Validate names the first field of c that is wrong.
func (c Config) Validate() error {
	if !fleets.ValidName(c.InstanceID) {
		return fmt.Errorf("instance id %q: want 1-63 characters of letters, digits, '.', '_' or '-'", c.InstanceID)
	}
	if len(c.Fleets) == 0 {
		return errors.New("fleets: at least one fleet is required")
	}
	seen := map[string]bool{}
	for _, f := range c.Fleets {
		if err := f.Validate(); err != nil {
			return err
		}
		if seen[f.Name] {
			return fmt.Errorf("fleet %s: defined twice", f.Name)
		}
		seen[f.Name] = true
	}
	for name, d := range map[string]time.Duration{"heartbeat": c.Heartbeat, "establishTimeout": c.EstablishTimeout, "leaseTTL": c.LeaseTTL, "redisTimeout": c.RedisTimeout} {
		if d <= 0 {
			return fmt.Errorf("%s %s: must be positive", name, d)
		}
	}
	if c.InstanceTTL <= c.Heartbeat {
		return fmt.Errorf("instanceTTL %s: must be longer than heartbeat %s", c.InstanceTTL, c.Heartbeat)
	}
	switch c.Fallback {
	case FallbackShare, FallbackClosed, FallbackOpen:
	default:
		return fmt.Errorf("fallback %q: want share, closed or open", c.Fallback)
	}
	if err := c.ExpiredInstances.Validate(); err != nil {
		return err
	}
	return nil
}
