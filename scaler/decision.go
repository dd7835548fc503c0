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

	"github.com/wsgate/wsgate/store"
)

// DecisionTTL is how long a trigger's recorded decision outlives its last
// evaluation. KEDA asks every pollingInterval (30 s by default) and the HPA
// every 15 s, so 5 min spans many missed polls of a live trigger, while the
// decision of a deleted ScaledObject (or of a one-off probe) disappears
// within 5 min and stops holding other triggers' scale-downs.
const DecisionTTL = 5 * time.Minute

// The decisions are recorded under the fleet's keys (store.Keys.Scaler,
// Scalers; report reads them through the store too).
const (
	idSeparator   = "@" // between ScaledObject and parameters hash
	unnamed       = "-" // stands for an empty namespace or name (a probe)
	paramsHashLen = 8   // hex digits: 32 bits, ample among one fleet's triggers
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

// persist replaces trigger id's decision hash for `wsgate metrics scaling`:
// recommended and reported are absent while metrics are held, never left
// over from an earlier evaluation. A failed write does not fail the RPC:
// the metric is right, only the view (and other triggers' drain floor,
// which then lapses to their own) is stale.
func (s *Server) persist(ctx context.Context, fleet, id string, fields map[string]any) {
	rec := store.DecisionRecord{Fleet: fleet, Trigger: id, Now: s.now(), TTL: DecisionTTL, Fields: fields}
	if err := s.store.RecordDecision(ctx, rec); err != nil {
		s.log.Warn("recording the scaler decision failed", "fleet", fleet, "trigger", id, "err", err)
	}
}

// others reads the fresh recommendations of fleet's triggers other than
// id: those recorded within DecisionTTL whose hash still holds one (a held
// trigger has none: its ScaledObject's fallback decides, not wsgate).
func (s *Server) others(ctx context.Context, fleet, id string) (map[string]int, error) {
	vals, err := s.store.OtherDecisions(ctx, store.OthersRequest{Fleet: fleet, Trigger: id, Since: s.now().Add(-DecisionTTL)})
	if err != nil {
		return nil, fmt.Errorf("read the other triggers' recommendations of %s: %w", fleet, err)
	}
	out := make(map[string]int, len(vals))
	for trigger, v := range vals {
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return nil, fmt.Errorf("trigger %s of %s: recommended %q: %w", trigger, fleet, v, err)
		}
		out[trigger] = int(n)
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
