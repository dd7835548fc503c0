package tracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"time"
)

// Policy chooses among the pods that are under the cap.
type Policy string

const (
	// PolicyPack places a connection on the fullest pod under the cap, so
	// empty pods stay empty and can be removed without cutting anyone.
	PolicyPack Policy = "pack"
	// PolicySpread places a connection on the emptiest pod.
	PolicySpread Policy = "spread"
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

// ExpiredMode says what becomes of an instance whose lease ran out without
// a heartbeat: dead, or only cut off from Redis (PROTOCOL.md, "Partitions").
type ExpiredMode string

const (
	// ExpiredReap gives its slots to the others after one lease:
	// availability first. If it was only cut off, its Envoy still carries
	// those connections and a pod can exceed its cap until they close.
	ExpiredReap ExpiredMode = "reap"
	// ExpiredKeep keeps its slots counted until it heartbeats again or an
	// operator forgets it: the cap holds under any partition.
	ExpiredKeep ExpiredMode = "keep"
	// ExpiredKube lets Kubernetes judge: only the scaler (with --kube)
	// reaps, and only instances whose pod the fleet's Envoy Service no
	// longer lists in any condition. Trackers reap nobody. The cap holds
	// under partitions; a dead pod's slots return once Kubernetes removed it.
	ExpiredKube ExpiredMode = "kube"
)

// Reason says why an admission was rejected. The values are the suffixes of
// the rejection keys in Redis (rej:<reason>) and the label of the metrics.
type Reason string

const (
	ReasonCapacity  Reason = "capacity"
	ReasonNoPods    Reason = "no_pods"
	ReasonRateLimit Reason = "rate_limit"
	ReasonRedisDown Reason = "redis_down"
	// ReasonRecovering: Redis answered, but the fleet's epoch is in its
	// recovery wait (PROTOCOL.md) and grants nothing yet, and the fallback
	// had no slot either. Not redis_down: Redis is up, and the wait ends by
	// itself within one --instance-ttl.
	ReasonRecovering Reason = "recovering"
)

// Reasons lists every rejection reason, in the order summaries report them.
var Reasons = []Reason{ReasonCapacity, ReasonNoPods, ReasonRateLimit, ReasonRedisDown, ReasonRecovering}

// Validate names what is wrong with m.
func (m ExpiredMode) Validate() error {
	if m != ExpiredReap && m != ExpiredKeep && m != ExpiredKube {
		return fmt.Errorf("expired-instances %q: want reap, keep or kube", m)
	}
	return nil
}

// Pod is one backend pod of a fleet's registry.
type Pod struct {
	Addr     string `json:"-"`
	Name     string `json:"name,omitempty"`
	Node     string `json:"node,omitempty"`
	Ready    bool   `json:"ready"`
	Draining bool   `json:"draining"`
}

// FleetConfig is one fleet: a set of backend pods sharing a cap.
type FleetConfig struct {
	// Name identifies the fleet in admissions, metrics and Redis keys.
	Name string `json:"name"`
	// MaxConnectionsPerPod is the global cap per pod, all Envoy instances
	// together. Default 2.
	MaxConnectionsPerPod int `json:"maxConnectionsPerPod"`
	// RatePerSecond is the rate of new connections one Envoy instance admits
	// for this fleet. Default 1.
	RatePerSecond float64 `json:"ratePerSecond"`
	// Burst is the token bucket's size. Default max(1, ceil(RatePerSecond)).
	Burst int `json:"burst"`
	// Policy is pack (default) or spread.
	Policy Policy `json:"policy"`
	// Pods is a static pod list ("ip:port"), for use without Kubernetes.
	Pods []string `json:"pods"`
	// RetryAfter is the Retry-After hint for capacity and no_pods
	// rejections. Default 5s.
	RetryAfter Duration `json:"retryAfter"`
	// Service is the backend Kubernetes Service whose EndpointSlices the
	// scaler's discovery follows (empty: static Pods only).
	Service string `json:"service,omitempty"`
	// Port is the Service port (name or number) connections go to.
	Port string `json:"port,omitempty"`
	// EnvoyService, when set, is the Envoy Service whose ready endpoints
	// tell the scaler how many tracker instances to expect.
	EnvoyService string `json:"envoyService,omitempty"`
}

// Duration is a time.Duration written as "5s" in configuration files.
type Duration time.Duration

// UnmarshalJSON accepts a Go duration string ("5s", "1m30s").
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`want a duration such as "5s"`)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf(`want a duration such as "5s" (%w)`, err)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// explicitZeros are the fleet fields whose zero value means "default" in
// FleetConfig, so a fleets file must not write it.
var explicitZeros = []struct{ field, want, def string }{
	{"maxConnectionsPerPod", "must be at least 1", "2"},
	{"ratePerSecond", "must be positive", "1"},
	{"burst", "must be at least 1", "max(1, ceil(ratePerSecond))"},
	{"retryAfter", "must be positive", "5s"},
}

// explicitZero reports whether the file sets field to a zero that
// FleetConfig would take for "default", and what the field wants instead.
func explicitZero(field string, v any) (struct{ field, want, def string }, bool) {
	for _, z := range explicitZeros {
		if z.field == field && isZero(v) {
			return z, true
		}
	}
	return struct{ field, want, def string }{}, false
}

func isZero(v any) bool {
	switch v := v.(type) {
	case int:
		return v == 0
	case float64:
		return v == 0
	case string:
		d, err := time.ParseDuration(v)
		return err == nil && d == 0
	}
	return false
}

var fleetName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$`)

// WithDefaults returns c with every unset field at its documented default.
func (c FleetConfig) WithDefaults() FleetConfig {
	if c.MaxConnectionsPerPod == 0 {
		c.MaxConnectionsPerPod = 2
	}
	if c.RatePerSecond == 0 {
		c.RatePerSecond = 1
	}
	if c.Burst == 0 {
		c.Burst = max(1, int(c.RatePerSecond+0.999999))
	}
	if c.Policy == "" {
		c.Policy = PolicyPack
	}
	if c.RetryAfter == 0 {
		c.RetryAfter = Duration(5 * time.Second)
	}
	return c
}

// Validate names the first field of c that is wrong.
func (c FleetConfig) Validate() error {
	if !fleetName.MatchString(c.Name) {
		return fieldErr("", "name", strconv.Quote(c.Name), "want 1-63 characters of letters, digits, '.', '_' or '-'")
	}
	if c.MaxConnectionsPerPod < 1 {
		return fieldErr(c.Name, "maxConnectionsPerPod", strconv.Itoa(c.MaxConnectionsPerPod), "must be at least 1")
	}
	if c.RatePerSecond <= 0 {
		return fieldErr(c.Name, "ratePerSecond", fmt.Sprint(c.RatePerSecond), "must be positive")
	}
	if c.Burst < 1 {
		return fieldErr(c.Name, "burst", strconv.Itoa(c.Burst), "must be at least 1")
	}
	if c.Policy != PolicyPack && c.Policy != PolicySpread {
		return fieldErr(c.Name, "policy", strconv.Quote(string(c.Policy)), "want pack or spread")
	}
	if c.RetryAfter < 0 {
		return fieldErr(c.Name, "retryAfter", time.Duration(c.RetryAfter).String(), "must not be negative")
	}
	if c.Service != "" && len(c.Pods) > 0 {
		return fieldErr(c.Name, "pods", "", "service is set too: choose one, discovery or a static list")
	}
	if c.Service == "" && c.Port != "" {
		return fieldErr(c.Name, "port", strconv.Quote(c.Port), "only meaningful with service")
	}
	seen := map[string]bool{}
	for _, p := range c.Pods {
		if err := ValidatePodAddr(p); err != nil {
			return fieldErr(c.Name, "pods", "", "%v", err)
		}
		if seen[p] {
			return fieldErr(c.Name, "pods", "", "%q listed twice", p)
		}
		seen[p] = true
	}
	return nil
}

// ValidatePodAddr checks that addr is a literal "ip:port": Envoy's
// ORIGINAL_DST cluster connects to exactly this address, so no host names.
func ValidatePodAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("pod address %q: %w", addr, err)
	}
	if net.ParseIP(host) == nil {
		return fmt.Errorf("pod address %q: %q is not an IP address", addr, host)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("pod address %q: port %q is not in 1-65535", addr, port)
	}
	return nil
}

// Config is one tracker instance.
type Config struct {
	// InstanceID names this instance in Redis; it must be unique among the
	// instances of a fleet (the Envoy pod's name is a good choice).
	InstanceID string
	Fleets     []FleetConfig
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
	ExpiredInstances ExpiredMode
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
		c.ExpiredInstances = ExpiredReap
	}
	for i := range c.Fleets {
		c.Fleets[i] = c.Fleets[i].WithDefaults()
	}
	return c
}

// Validate names the first field of c that is wrong.
func (c Config) Validate() error {
	if !fleetName.MatchString(c.InstanceID) {
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
