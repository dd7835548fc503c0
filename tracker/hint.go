package tracker

import (
	"math/rand/v2"
	"slices"
	"sort"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
)

// hints guesses the admit script's next pick from the last heartbeat's view,
// for an admission that goes to Redis alone (PROTOCOL.md, "Hinted
// admission"). The script takes a guess with one ZADD where the pick costs a
// range read and a ZINCRBY, and checks it against the cap itself: a wrong
// guess costs a call more, never a slot. Built at the first admission after
// each heartbeat (newView starts it empty), for the policy and cap in force
// then, and again if they change.
type hints struct {
	built    bool
	policy   fleets.Policy
	cap      int
	pods     []string // candidates, in the order they are tried
	left     []int    // how many more admissions each may be guessed for
	total    int      // the sum of left: none left is known at once
	next     int
	min, max int // the counts the policy allows before an admission, as far as the view goes
}

// build takes the candidates from v:
//
//   - spread: the emptiest placeable pods, in an order of this instance's
//     own (so that the instances of a fleet do not all guess the same pod),
//     each twice at most, and only while its count is at most one above the
//     view's lowest: within one of the emptiest, reuse's rule;
//   - pack: the fullest pods under the cap, in the script's order (highest
//     name first among equals), each until it is full, and only if it is
//     not empty while the view saw a pod under the cap that was not: an
//     empty pod stays empty while another one has room.
func (h *hints) build(v *view, fc *fleets.Fleet) {
	*h = hints{built: true, policy: fc.Policy, cap: fc.MaxConnectionsPerPod}
	if !v.ok || len(v.loads) == 0 {
		return
	}
	target, room := 0, 0
	if fc.Policy == fleets.PolicyPack {
		// the fullest pod under the cap: the last load below it (as fits)
		i := sort.SearchInts(v.loads, h.cap)
		if i == 0 {
			return // every pod is full
		}
		target = v.loads[i-1]
		room = h.cap - target
		h.min, h.max = min(target, 1), h.cap-1
	} else {
		target = v.loads[0]
		room = min(2, h.cap-target)
		h.min, h.max = 0, target+1
	}
	if room <= 0 {
		return
	}
	for _, pod := range v.pods {
		if v.load[pod] == target {
			h.pods = append(h.pods, pod)
			h.left = append(h.left, room)
			h.total += room
		}
	}
	if fc.Policy == fleets.PolicyPack {
		slices.Reverse(h.pods) // v.pods is sorted by name
	} else {
		rand.Shuffle(len(h.pods), func(i, j int) { h.pods[i], h.pods[j] = h.pods[j], h.pods[i] })
	}
}

// take returns the guess for the next admission, false when there is none
// (until the next heartbeat).
func (h *hints) take(v *view, fc *fleets.Fleet) (store.Hint, bool) {
	if !h.built || h.policy != fc.Policy || h.cap != fc.MaxConnectionsPerPod {
		h.build(v, fc)
	}
	if h.total == 0 {
		return store.Hint{}, false
	}
	for h.left[h.next] == 0 {
		h.next = (h.next + 1) % len(h.pods)
	}
	i := h.next
	h.left[i]--
	h.total--
	if h.policy != fleets.PolicyPack {
		h.next = (i + 1) % len(h.pods) // spread: one each in turn
	}
	return store.Hint{Pod: h.pods[i], Min: h.min, Max: h.max}, true
}

// result learns from the script's answer to a call that carried hint:
// whether it took it, and the pod it granted instead ("" when it refused).
//
// Under spread a refused guess means that the view is out of date (other
// instances' admissions raised the pod, or the fleet's lowest count, since
// the heartbeat, or the pod stopped being placeable): no more guesses
// until the next heartbeat, so that a stale view costs one refused guess a
// heartbeat, not one per pod. Under pack the pod is full, or not placeable
// any more: it is not guessed again, and the pod the pick chose instead,
// the fullest under the cap by Redis' counts, is the next guess.
func (h *hints) result(hint store.Hint, taken bool, granted string) {
	if taken {
		return
	}
	if h.policy != fleets.PolicyPack {
		h.drop()
		return
	}
	if i := slices.Index(h.pods, hint.Pod); i >= 0 {
		h.total -= h.left[i]
		h.left[i] = 0
	}
	if granted == "" {
		return
	}
	// Its count is unknown: the script says when it is full.
	if j := slices.Index(h.pods, granted); j >= 0 {
		h.total += h.cap - h.left[j]
		h.left[j], h.next = h.cap, j
		return
	}
	h.pods = append([]string{granted}, h.pods...)
	h.left = append([]int{h.cap}, h.left...)
	h.total += h.cap
	h.next = 0
}

// drop ends the guesses until the next heartbeat.
func (h *hints) drop() {
	h.pods, h.left, h.total, h.next = nil, nil, 0, 0
}
