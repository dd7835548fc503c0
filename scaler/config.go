package scaler

import (
	"errors"
	"fmt"
	"time"

	"github.com/wsgate/wsgate/fleets"
)

// Config is the scaler's configuration.
type Config struct {
	// Fleets are the fleets the scaler serves (the trackers' fleets file).
	Fleets []fleets.Fleet
	// Settle is how old an epoch must be before its counts are used.
	// Default 60s.
	Settle time.Duration
	// ReadinessRatio is the share of expected tracker instances that must
	// have synced in the epoch. Default 0.95.
	ReadinessRatio float64
	// ExpectedInstances, when set, is the number of tracker instances to
	// expect; 0 learns it (instances alive before the epoch changed).
	ExpectedInstances int
	// PollInterval is StreamIsActive's safety-net poll beside pub/sub.
	// Default 1s.
	PollInterval time.Duration
	// InstanceTTL is the trackers' --instance-ttl: the reaper reaps an
	// instance only after watching it stand still this long on its own
	// clock (tracker/PROTOCOL.md). Default 10s, the trackers' default.
	InstanceTTL time.Duration
	// ExpiredInstances is the trackers' --expired-instances: keep turns the
	// reaper off, kube reaps only instances Kubernetes no longer lists (it
	// needs WithInstanceJudge). Default reap.
	ExpiredInstances fleets.ExpiredMode
}

// WithDefaults returns c with every unset field at its documented default.
func (c Config) WithDefaults() Config {
	if c.Settle == 0 {
		c.Settle = 60 * time.Second
	}
	if c.ReadinessRatio == 0 {
		c.ReadinessRatio = 0.95
	}
	if c.PollInterval == 0 {
		c.PollInterval = time.Second
	}
	if c.InstanceTTL == 0 {
		c.InstanceTTL = 10 * time.Second
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
	if len(c.Fleets) == 0 {
		return errors.New("fleets: at least one fleet is required")
	}
	for _, f := range c.Fleets {
		if err := f.Validate(); err != nil {
			return err
		}
	}
	if c.Settle < 0 {
		return fmt.Errorf("settle %s: must not be negative", c.Settle)
	}
	if c.ReadinessRatio <= 0 || c.ReadinessRatio > 1 {
		return fmt.Errorf("readiness ratio %g: want (0, 1]", c.ReadinessRatio)
	}
	if c.ExpectedInstances < 0 {
		return fmt.Errorf("expected instances %d: must not be negative", c.ExpectedInstances)
	}
	if c.PollInterval <= 0 {
		return fmt.Errorf("poll interval %s: must be positive", c.PollInterval)
	}
	if c.InstanceTTL <= 0 {
		return fmt.Errorf("instance ttl %s: must be positive", c.InstanceTTL)
	}
	return c.ExpiredInstances.Validate()
}
