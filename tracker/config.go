package tracker

import (
	"fmt"
	"strconv"
	"time"

	"github.com/wsgate/wsgate/fleets"
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

// DefaultHeartbeat is the interval of sync (the heartbeat) when none is
// set: --heartbeat's default.
const DefaultHeartbeat = 2 * time.Second

// Config is one tracker instance.
type Config struct {
	// InstanceID names this instance in Redis; it must be unique among the
	// instances of a fleet (the Envoy pod's name is a good choice).
	InstanceID string
	Fleets     []fleets.Fleet
	// Heartbeat is the interval of sync. Default DefaultHeartbeat.
	Heartbeat time.Duration
	// InstanceTTL is how long an instance stays alive in Redis without a
	// heartbeat before others reap its connections; every tracker and the
	// scaler of a fleet must agree (the fleets file's instanceTTL). Default
	// 5 x Heartbeat.
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
	// ExpiredInstances is reap, keep (default: fleets.DefaultExpiredInstances)
	// or kube; every tracker and
	// the scaler of a fleet must agree (the fleets file's expiredInstances).
	ExpiredInstances fleets.ExpiredMode
	// ReleaseLinger is how long a queued release waits for an admit call
	// to carry it, or for an admission of this instance to take its slot
	// back (reuse), before it goes alone (PROTOCOL.md, "Batches"). Longer
	// lets more lifecycles cost Redis one script call or none; the freed
	// slot stays counted in Redis that much longer, where another
	// instance cannot take it. Shorter than Heartbeat, whose counts
	// publish every release anyway. Default DefaultReleaseLinger.
	ReleaseLinger time.Duration
	// WaitReplicas > 0: an admission through Redis counts only once that
	// many replicas acknowledged it (Redis WAIT after the admit call, on
	// its connection), within WaitTimeout; one that is not acknowledged is
	// refused to the fallback, as a lost reply (PROTOCOL.md, "Replication
	// and failover"). Heartbeats tell Redis, so that a promoted replica may
	// end its recovery wait early ("Ending the wait early after a
	// failover"). 0 (default): no WAIT, for a Redis without replicas.
	WaitReplicas int
	// WaitTimeout bounds the WAIT; it must be below RedisTimeout, which
	// bounds the whole call. Default 50ms.
	WaitTimeout time.Duration
	// ReplicationCheck is what the tracker does when the Redis of a fleet
	// cannot keep the cap under split brain (its replicas outnumber
	// WaitReplicas, or expired instances are reaped beside replicas):
	// warn (default) logs it; refuse also fails CheckReplication at start,
	// and at a later epoch logs it as an error (replication.go).
	ReplicationCheck string
}

// ReplicationCheck values.
const (
	ReplicationWarn   = "warn"
	ReplicationRefuse = "refuse"
)

// WithDefaults returns c with every unset field at its documented default.
func (c Config) WithDefaults() Config {
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
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
		c.ExpiredInstances = fleets.DefaultExpiredInstances
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = 50 * time.Millisecond
	}
	if c.ReleaseLinger == 0 {
		c.ReleaseLinger = DefaultReleaseLinger
	}
	if c.ReplicationCheck == "" {
		c.ReplicationCheck = ReplicationWarn
	}
	for i := range c.Fleets {
		c.Fleets[i] = c.Fleets[i].WithDefaults()
	}
	return c
}

// FieldError is a field of Config that is wrong. Its Field and Than are
// Config's Go names, so that a caller can name what the user wrote (a
// flag, a fleets-file field) with errors.As instead of reading the text.
type FieldError struct {
	// Field is the field that is wrong ("InstanceTTL").
	Field string
	// Value is its value as the message shows it ("4s", `"a b"`); "" for
	// none.
	Value string
	// Problem says what is wrong ("must be positive", "must be longer
	// than").
	Problem string
	// Than, when set, is the field Problem compares Field with
	// ("Heartbeat"), and ThanValue its value.
	Than, ThanValue string
}

// configNames are Config's fields as its errors name them.
var configNames = map[string]string{
	"InstanceID": "instance id", "Fleets": "fleets", "Heartbeat": "heartbeat", "InstanceTTL": "instanceTTL",
	"EstablishTimeout": "establishTimeout", "LeaseTTL": "leaseTTL", "RedisTimeout": "redisTimeout",
	"Fallback": "fallback", "ExpiredInstances": "expiredInstances",
	"WaitReplicas": "waitReplicas", "WaitTimeout": "waitTimeout", "ReplicationCheck": "replicationCheck",
	"ReleaseLinger": "releaseLinger",
}

func (e *FieldError) Error() string {
	return e.Describe(func(field string) string { return configNames[field] })
}

// Describe is the error's text with every field named by name:
// "<Field> <Value>: <Problem> [<Than> <ThanValue>]".
func (e *FieldError) Describe(name func(field string) string) string {
	s := name(e.Field)
	if e.Value != "" {
		s += " " + e.Value
	}
	s += ": " + e.Problem
	if e.Than != "" {
		s += " " + name(e.Than) + " " + e.ThanValue
	}
	return s
}

// Validate names the first field of c that is wrong: a *FieldError, or an
// error of the fleets (a *fleets.FieldError, or a fleet defined twice).
func (c Config) Validate() error {
	if !fleets.ValidName(c.InstanceID) {
		return &FieldError{Field: "InstanceID", Value: strconv.Quote(c.InstanceID), Problem: "want 1-63 characters of letters, digits, '.', '_' or '-'"}
	}
	if len(c.Fleets) == 0 {
		return &FieldError{Field: "Fleets", Problem: "at least one fleet is required"}
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
	for _, d := range []struct {
		field string
		d     time.Duration
	}{{"Heartbeat", c.Heartbeat}, {"EstablishTimeout", c.EstablishTimeout}, {"LeaseTTL", c.LeaseTTL}, {"RedisTimeout", c.RedisTimeout}} {
		if d.d <= 0 {
			return &FieldError{Field: d.field, Value: d.d.String(), Problem: "must be positive"}
		}
	}
	if c.InstanceTTL <= c.Heartbeat {
		return &FieldError{Field: "InstanceTTL", Value: c.InstanceTTL.String(), Problem: "must be longer than", Than: "Heartbeat", ThanValue: c.Heartbeat.String()}
	}
	switch c.Fallback {
	case FallbackShare, FallbackClosed, FallbackOpen:
	default:
		return &FieldError{Field: "Fallback", Value: strconv.Quote(string(c.Fallback)), Problem: "want share, closed or open"}
	}
	if c.ReleaseLinger < 0 {
		return &FieldError{Field: "ReleaseLinger", Value: c.ReleaseLinger.String(), Problem: "must be positive"}
	}
	if c.ReleaseLinger >= c.Heartbeat {
		// Every release would wait for the heartbeat, which publishes it:
		// freed slots would stay counted in Redis for a whole interval.
		return &FieldError{Field: "ReleaseLinger", Value: c.ReleaseLinger.String(), Problem: "must be shorter than", Than: "Heartbeat", ThanValue: c.Heartbeat.String()}
	}
	if c.ExpiredInstances.Validate() != nil {
		return &FieldError{Field: "ExpiredInstances", Value: strconv.Quote(string(c.ExpiredInstances)), Problem: "want reap, keep or kube"}
	}
	return c.validateWait()
}

// validateWait checks the fields of the admissions' WAIT and of the
// replication check.
func (c Config) validateWait() error {
	if c.WaitReplicas < 0 {
		return &FieldError{Field: "WaitReplicas", Value: strconv.Itoa(c.WaitReplicas), Problem: "want 0 (off) or the number of replicas every admission must reach"}
	}
	if c.WaitReplicas > 0 {
		// Redis' WAIT counts whole milliseconds, and WAIT n 0 blocks for
		// ever; the call's own deadline is RedisTimeout.
		if c.WaitTimeout < time.Millisecond {
			return &FieldError{Field: "WaitTimeout", Value: c.WaitTimeout.String(), Problem: "must be at least 1ms (Redis WAIT counts milliseconds, and 0 would wait for ever)"}
		}
		if c.WaitTimeout >= c.RedisTimeout {
			return &FieldError{Field: "WaitTimeout", Value: c.WaitTimeout.String(), Problem: "must be shorter than", Than: "RedisTimeout", ThanValue: c.RedisTimeout.String()}
		}
	}
	switch c.ReplicationCheck {
	case ReplicationWarn, ReplicationRefuse:
	default:
		return &FieldError{Field: "ReplicationCheck", Value: strconv.Quote(c.ReplicationCheck), Problem: "want warn or refuse"}
	}
	return nil
}
