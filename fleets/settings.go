package fleets

import (
	"fmt"
	"strconv"
	"time"
)

// Settings are the fleets file's fleet-wide fields, beside `fleets:`: the
// protocol needs every tracker and the scaler of a fleet to hold the same
// values (tracker/PROTOCOL.md), and each process holds one of each for all
// its fleets, so they are the file's, not a fleet's. A field left out of
// the file is zero here; WithDefaults fills it.
type Settings struct {
	// InstanceTTL is how long a tracker instance's counts outlive its last
	// heartbeat: its lease in Redis, and how long the scaler's reaper
	// watches it stand still before it reaps it. Default 10s.
	InstanceTTL Duration `json:"instanceTTL"`
	// ExpiredInstances says what becomes of an instance whose lease ran
	// out: keep (default), reap or kube. The default is keep because it
	// is the safe mode that needs nothing but Redis: an instance cut off
	// from Redis, not dead, keeps its slots, so the cap holds; what it
	// costs (a dead instance's slots stay taken until it returns or an
	// operator runs wsgate forget-instance) is visible and repaired by
	// hand, where reap's cost (a pod over its cap for as long as the
	// cut-off instance's connections live) is neither. kube is safe too
	// and repairs itself, but needs the Kubernetes API (the chart's
	// default).
	ExpiredInstances ExpiredMode `json:"expiredInstances"`
}

// DefaultInstanceTTL is Settings.InstanceTTL when the file leaves it out.
const DefaultInstanceTTL = 10 * time.Second

// DefaultExpiredInstances is Settings.ExpiredInstances when the file
// leaves it out: the safe mode that needs only Redis (Settings).
const DefaultExpiredInstances = ExpiredKeep

// settingFields are the file's top-level fields: fleets and the settings,
// in the order the did-you-mean hint weighs them.
var settingFields = []string{"fleets", "instanceTTL", "expiredInstances"}

// WithDefaults returns s with every unset field at its documented default.
func (s Settings) WithDefaults() Settings {
	if s.InstanceTTL == 0 {
		s.InstanceTTL = Duration(DefaultInstanceTTL)
	}
	if s.ExpiredInstances == "" {
		s.ExpiredInstances = DefaultExpiredInstances
	}
	return s
}

// checkSetting names what is wrong with field of s, which the file sets;
// a zero is wrong (the file leaves a field out for its default, it never
// writes the zero).
func checkSetting(s Settings, field string) error {
	switch field {
	case "instanceTTL":
		if s.InstanceTTL <= 0 {
			msg := "must be positive"
			if s.InstanceTTL == 0 {
				msg += fmt.Sprintf(" (leave it out for the default %s)", DefaultInstanceTTL)
			}
			return fmt.Errorf("instanceTTL %s: %s", time.Duration(s.InstanceTTL), msg)
		}
	case "expiredInstances":
		if s.ExpiredInstances.Validate() != nil {
			msg := "want reap, keep or kube"
			if s.ExpiredInstances == "" {
				msg += " (leave it out for the default " + string(DefaultExpiredInstances) + ")"
			}
			return fmt.Errorf("expiredInstances %s: %s", strconv.Quote(string(s.ExpiredInstances)), msg)
		}
	}
	return nil
}
