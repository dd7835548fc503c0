package podcost

import (
	"math/bits"
	"sort"
	"time"
)

// candidate is one ready pod of a fleet that may be removed.
type candidate struct {
	addr, name string
	live       int
	created    time.Time // zero when the informer does not know the pod
	draining   bool      // drained by the current scale-down already
}

// rank orders candidates by who should go first: pods already draining
// (so a drain, once chosen, does not wander between pods as counts move),
// then fewest live connections, then the youngest (as the ReplicaSet
// controller itself prefers among equals), then by name, for a stable order.
func rank(c []candidate) {
	sort.SliceStable(c, func(i, j int) bool {
		a, b := c[i], c[j]
		if a.draining != b.draining {
			return a.draining
		}
		if a.live != b.live {
			return a.live < b.live
		}
		if !a.created.Equal(b.created) {
			return a.created.After(b.created)
		}
		return a.name < b.name
	})
}

// band groups connection counts by powers of two (0, 1, 2-3, 4-7, ...), so
// a pod's cost changes, and is patched, only when its count moves a lot.
func band(live int) int32 { return int32(bits.Len(uint(max(live, 0)))) }

// cost is a pod's pod-deletion-cost. Draining pods get negative costs,
// below the 0 Kubernetes assumes for pods without the annotation (a pod
// started during the drain), the others positive ones; within each group
// fewer connections cost less. Bands stop at 64, so every value fits in
// int32 with room to spare.
func cost(live int, draining bool) int32 {
	b := band(live)
	if draining {
		return -10000 + 100*b
	}
	return 100 * (b + 1)
}
