package scaler

// This file records each desiredReplicas trigger's decision in Redis, one
// hash per trigger, and computes the drain floor the scale-down gate acts
// on (POLICY.md, "Scale-down gate and the scaler hashes").

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"github.com/redis/go-redis/v9"
)

// DecisionTTL is how long a trigger's recorded decision outlives its last
// evaluation. KEDA asks every pollingInterval (30 s by default) and the HPA
// every 15 s, so 5 min spans many missed polls of a live trigger, while the
// decision of a deleted ScaledObject (or of a one-off probe) disappears
// within 5 min and stops holding other triggers' scale-downs.
const DecisionTTL = 5 * time.Minute

// Key names under the fleet's prefix (so under its hash tag: one slot in
// Redis Cluster). report/read.go reads the same names.
const (
	decisionKey   = "scaler:" // + trigger ID: that trigger's decision hash
	decisionIndex = "scalers" // zset: trigger ID -> updatedMs of its decision
	legacyKey     = "scaler"  // the one hash of earlier versions, last writer wins
	idSeparator   = "@"       // between ScaledObject and parameters hash
	unnamed       = "-"       // stands for an empty namespace or name (a probe)
	paramsHashLen = 8         // hex digits: 32 bits, ample among one fleet's triggers
	paramsFormat  = "%s %g %g %d %s"
)

// TriggerID names a desiredReplicas trigger among the fleet's:
// <namespace>/<ScaledObject>@<8 hex digits of its policy parameters>.
// The ScaledObject alone is not enough: one ScaledObject may list several
// wsgate triggers for one fleet (say two targetUtilizations, the HPA takes
// the highest), and a probe may reuse a ScaledObject's name with other
// metadata; each computes its own decision, so each gets its own record.
// The hash covers the parsed parameters, not the raw metadata, so a key
// KEDA adds (scalerAddress, ...) or a default spelt out does not split one
// trigger in two. Editing a trigger's parameters makes a new ID: the old
// record lapses after DecisionTTL, holding scale-downs no lower than it
// wanted until then, which errs on the safe side.
func TriggerID(ref *externalscaler.ScaledObjectRef, t Trigger) string {
	ns, name := ref.GetNamespace(), ref.GetName()
	if ns == "" {
		ns = unnamed
	}
	if name == "" {
		name = unnamed
	}
	sum := sha256.Sum256([]byte(paramsText(t)))
	return ns + "/" + name + idSeparator + hex.EncodeToString(sum[:])[:paramsHashLen]
}

// paramsText is the canonical text of what the decision depends on besides
// the fleet (which the key's prefix already names).
func paramsText(t Trigger) string {
	p := t.Params
	return fmt.Sprintf(paramsFormat, t.Metric, p.TargetUtilization, p.Headroom, p.HeadroomAfter, p.Guard)
}

// paramsLabel is the parameters as `wsgate metrics scaling` shows them.
func paramsLabel(p Params) string {
	return fmt.Sprintf("targetUtilization=%g headroom=%g headroomAfter=%d guard=%s", p.TargetUtilization, p.Headroom, p.HeadroomAfter, p.Guard)
}

// recordScript replaces one trigger's decision hash, gives it DecisionTTL,
// indexes it, and drops from the index the triggers not evaluated within
// DecisionTTL (their hashes have expired). It also deletes the legacy
// whole-fleet hash, which nothing refreshes any more. Only commands of the
// documented ACL (README.md) are used.
var recordScript = redis.NewScript(`
-- KEYS: 1 the trigger's hash, 2 the index, 3 the legacy hash
-- ARGV: 1 trigger ID, 2 now ms, 3 ttl s, 4 stale cutoff ms, 5.. field, value
redis.call('DEL', KEYS[1], KEYS[3])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
if #stale > 0 then redis.call('ZREM', KEYS[2], unpack(stale)) end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
`)

// othersScript lists the other triggers' fresh recommendations: those in
// the index since the cutoff whose hash still exists and holds a
// recommendation (a held trigger has none: its ScaledObject's fallback
// decides, not wsgate). The hashes share the index's hash tag.
var othersScript = redis.NewScript(`
-- KEYS: 1 the index; ARGV: 1 key prefix of the hashes, 2 cutoff ms, 3 own ID
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf')) do
  if id ~= ARGV[3] then
    local r = redis.call('HGET', ARGV[1] .. id, 'recommended')
    if r then out[#out + 1] = id; out[#out + 1] = r end
  end
end
return out
`)

// persist replaces trigger id's decision hash for `wsgate metrics scaling`:
// recommended and reported are absent while metrics are held, never left
// over from an earlier evaluation. A failed write does not fail the RPC:
// the metric is right, only the view (and other triggers' drain floor,
// which then lapses to their own) is stale.
func (s *Server) persist(ctx context.Context, fleet, id string, fields map[string]any) {
	p := s.store.KeyPrefix(fleet)
	now := s.now()
	args := []any{id, now.UnixMilli(), int64(DecisionTTL / time.Second), now.Add(-DecisionTTL).UnixMilli()}
	for k, v := range fields {
		args = append(args, k, v)
	}
	err := recordScript.Run(ctx, s.store.Client(), []string{p + decisionKey + id, p + decisionIndex, p + legacyKey}, args...).Err()
	if err != nil {
		s.log.Warn("recording the scaler decision failed", "fleet", fleet, "trigger", id, "err", err)
	}
}

// others reads the fresh recommendations of fleet's triggers other than id.
func (s *Server) others(ctx context.Context, fleet, id string) (map[string]int, error) {
	p := s.store.KeyPrefix(fleet)
	cutoff := s.now().Add(-DecisionTTL).UnixMilli()
	vals, err := othersScript.Run(ctx, s.store.Client(), []string{p + decisionIndex}, p+decisionKey, cutoff, id).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("read the other triggers' recommendations of %s: %w", fleet, err)
	}
	out := make(map[string]int, len(vals)/2)
	for i := 0; i+1 < len(vals); i += 2 {
		n, err := strconv.ParseFloat(vals[i+1], 64)
		if err != nil {
			return nil, fmt.Errorf("trigger %s of %s: recommended %q: %w", vals[i], fleet, vals[i+1], err)
		}
		out[vals[i]] = int(n)
	}
	return out, nil
}

// drainFloor is the highest of own (trigger id's recommendation) and the
// others', and the trigger that wants it; a tie goes to the smallest ID so
// that every trigger names the same one.
func drainFloor(id string, own int, others map[string]int) (int, string) {
	floor, by := own, id
	for o, r := range others {
		if r > floor || (r == floor && strings.Compare(o, by) < 0) {
			floor, by = r, o
		}
	}
	return floor, by
}

// gated runs the scale-down gate for trigger id and returns what it
// reports and why. The gate always sees the drain floor, the highest fresh
// recommendation among the fleet's triggers: every trigger hands it the
// same number, so they cannot make it flap between two drains, and no pod
// is drained that some trigger still wants. The trigger reports
// max(own, min(gate, ready)): another trigger's higher wish holds a
// scale-down (no lower than it, and not below ready while it is above
// ready) but never causes a scale-up; only the trigger's own
// recommendation does that.
func (s *Server) gated(ctx context.Context, fleet, id string, ready, own int, reason string, fields map[string]any) (int, string) {
	others, err := s.others(ctx, fleet, id)
	if err != nil {
		// What the others want is unknown: no pod goes.
		s.log.Warn("scale-down held: other triggers unread", "fleet", fleet, "trigger", id, "err", err)
		hold := max(own, ready)
		if hold > own {
			reason += "; scale-down held at " + strconv.Itoa(hold) + ": other triggers' recommendations unread"
		}
		return hold, reason
	}
	floor, by := drainFloor(id, own, others)
	fields["drainFloor"], fields["drivenBy"] = floor, by
	g := s.gate.Gate(ctx, fleet, ready, floor)
	reported := max(own, min(g, ready))
	switch {
	case reported == own:
	case g > floor:
		reason += "; scale-down gate holds " + strconv.Itoa(reported) + " until pods are prepared"
	default:
		reason += fmt.Sprintf("; scale-down held at %d: trigger %s recommends %d", reported, by, floor)
	}
	return reported, reason
}
