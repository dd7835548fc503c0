package store

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
	// itself within one instanceTTL.
	ReasonRecovering Reason = "recovering"
)

// Reasons lists every rejection reason, in the order summaries report them.
var Reasons = []Reason{ReasonCapacity, ReasonNoPods, ReasonRateLimit, ReasonRedisDown, ReasonRecovering}
