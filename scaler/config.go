package scaler

import (
	"strconv"
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
	// InstanceTTL is the trackers' instance TTL (the fleets file's
	// instanceTTL): the reaper reaps an instance only after watching it
	// stand still this long on its own clock (tracker/PROTOCOL.md).
	// Default 10s, the trackers' default.
	InstanceTTL time.Duration
	// ExpiredInstances is the trackers' (the fleets file's
	// expiredInstances): keep turns the reaper off, kube reaps only
	// instances Kubernetes no longer lists (it needs WithInstanceJudge).
	// Default keep (fleets.DefaultExpiredInstances).
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
		c.ExpiredInstances = fleets.DefaultExpiredInstances
	}
	for i := range c.Fleets {
		c.Fleets[i] = c.Fleets[i].WithDefaults()
	}
	return c
}

// FieldError is a field of Config that is wrong. Field is Config's Go
// name, so that a caller can name what the user wrote (a flag, a fleets-file
// field) with errors.As instead of reading the text.
type FieldError struct {
	// Field is the field that is wrong ("ReadinessRatio").
	Field string
	// Value is its value as the message shows it; "" for none.
	Value string
	// Problem says what is wrong ("want (0, 1]").
	Problem string
}

// configNames are Config's fields as its errors name them.
var configNames = map[string]string{
	"Fleets": "fleets", "Settle": "settle", "ReadinessRatio": "readiness ratio", "ExpectedInstances": "expected instances",
	"PollInterval": "poll interval", "InstanceTTL": "instanceTTL", "ExpiredInstances": "expiredInstances",
}

func (e *FieldError) Error() string {
	return e.Describe(func(field string) string { return configNames[field] })
}

// Describe is the error's text with the field named by name:
// "<Field> <Value>: <Problem>".
func (e *FieldError) Describe(name func(field string) string) string {
	s := name(e.Field)
	if e.Value != "" {
		s += " " + e.Value
	}
	return s + ": " + e.Problem
}

// Validate names the first field of c that is wrong: a *FieldError, or the
// *fleets.FieldError of a fleet.
func (c Config) Validate() error {
	if len(c.Fleets) == 0 {
		return &FieldError{Field: "Fleets", Problem: "at least one fleet is required"}
	}
	for _, f := range c.Fleets {
		if err := f.Validate(); err != nil {
			return err
		}
	}
	if c.Settle < 0 {
		return &FieldError{Field: "Settle", Value: c.Settle.String(), Problem: "must not be negative"}
	}
	if c.ReadinessRatio <= 0 || c.ReadinessRatio > 1 {
		return &FieldError{Field: "ReadinessRatio", Value: strconv.FormatFloat(c.ReadinessRatio, 'g', -1, 64), Problem: "want (0, 1]"}
	}
	if c.ExpectedInstances < 0 {
		return &FieldError{Field: "ExpectedInstances", Value: strconv.Itoa(c.ExpectedInstances), Problem: "must not be negative"}
	}
	if c.PollInterval <= 0 {
		return &FieldError{Field: "PollInterval", Value: c.PollInterval.String(), Problem: "must be positive"}
	}
	if c.InstanceTTL <= 0 {
		return &FieldError{Field: "InstanceTTL", Value: c.InstanceTTL.String(), Problem: "must be positive"}
	}
	if c.ExpiredInstances.Validate() != nil {
		return &FieldError{Field: "ExpiredInstances", Value: strconv.Quote(string(c.ExpiredInstances)), Problem: "want reap, keep or kube"}
	}
	return nil
}
