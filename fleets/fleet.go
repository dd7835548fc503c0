// Package fleets is the fleets file: what a fleet is (its pods, cap, rate
// and policy), the fleet-wide settings every process of the fleets must
// share (Settings), how the file is parsed with errors that name the line
// and field, and how a running process re-reads it. The tracker and the scaler
// both read it; neither imports the other for it.
package fleets

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

// ExpiredMode says what becomes of an instance whose lease ran out without
// a heartbeat: dead, or only cut off from Redis (PROTOCOL.md, "Partitions").
type ExpiredMode string

const (
	// ExpiredReap gives its slots to the others after one lease:
	// availability first. If it was only cut off, its Envoy still carries
	// those connections and a pod can exceed its cap until they close
	// (PROTOCOL.md, "Partitions (G)"). Never the default.
	ExpiredReap ExpiredMode = "reap"
	// ExpiredKeep keeps its slots counted until it heartbeats again or an
	// operator forgets it: the cap holds under any partition. The fleets
	// file's default (DefaultExpiredInstances).
	ExpiredKeep ExpiredMode = "keep"
	// ExpiredKube lets Kubernetes judge: only the scaler (with --kube)
	// reaps, and only instances whose pod the fleet's Envoy Service no
	// longer lists in any condition. Trackers reap nobody. The cap holds
	// under partitions; a dead pod's slots return once Kubernetes removed it.
	ExpiredKube ExpiredMode = "kube"
)

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

// Fleet is one fleet: a set of backend pods sharing a cap.
type Fleet struct {
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
	// Shards splits the fleet's pods into that many groups, each in its own
	// Redis hash slot, so that one fleet's churn can spread over a Redis
	// Cluster's primaries (shards.go; PROTOCOL.md, "Shards"). Default 1.
	Shards int `json:"shards,omitempty"`
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
// Fleet, so a fleets file must not write it.
var explicitZeros = []struct{ field, want, def string }{
	{"maxConnectionsPerPod", "must be at least 1", "2"},
	{"ratePerSecond", "must be positive", "1"},
	{"burst", "must be at least 1", "max(1, ceil(ratePerSecond))"},
	{"retryAfter", "must be positive", "5s"},
}

// explicitZero reports whether the file sets field to a zero that
// Fleet would take for "default", and what the field wants instead.
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
func (c Fleet) WithDefaults() Fleet {
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
	if c.Shards == 0 {
		c.Shards = 1
	}
	return c
}

// Validate names the first field of c that is wrong.
func (c Fleet) Validate() error {
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
	if c.Shards < 1 || c.Shards > MaxShards {
		return fieldErr(c.Name, "shards", strconv.Itoa(c.Shards), "want 1-%d: one per Redis Cluster primary the fleet's churn should spread over", MaxShards)
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

// ValidName reports whether s may name a fleet (or a tracker instance):
// 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit.
// Both appear in Redis keys and Prometheus labels.
func ValidName(s string) bool { return fleetName.MatchString(s) }
