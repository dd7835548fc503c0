package fleets

import (
	"hash/fnv"
	"strconv"
	"strings"
)

// A fleet with shards N keeps its pods in N groups. Each group is a fleet
// of its own to the store and the admission protocol: its own hash tag
// (so its own Redis Cluster slot), epoch, entitlements and fallback. A pod
// belongs to one group, so its count lives in one place and its cap stays
// exact; only the choice of a group and the sums over groups cross them
// (PROTOCOL.md, "Shards").

// MaxShards bounds shards: more groups than a Redis Cluster has primaries
// buy nothing, and every tracker heartbeats each group.
const MaxShards = 64

// groupSep separates a fleet's name from its group number. Fleet names
// cannot contain it (ValidName), so no group is ever named like a fleet.
const groupSep = "#"

// GroupName is the name of group k of fleet: the fleet's own name for
// group 0, so that an unsharded fleet (and a fleet's first group after it
// gains shards) keeps its keys; "<fleet>#<k>" for the others.
func GroupName(fleet string, k int) string {
	if k == 0 {
		return fleet
	}
	return fleet + groupSep + strconv.Itoa(k)
}

// SplitGroup is the inverse of GroupName: the fleet and group number a
// group's name stands for (group 0 for a plain fleet name). ok is false
// when name has a group suffix that is not a number above 0.
func SplitGroup(name string) (fleet string, k int, ok bool) {
	fleet, num, found := strings.Cut(name, groupSep)
	if !found {
		return name, 0, true
	}
	k, err := strconv.Atoi(num)
	if err != nil || k < 1 || strconv.Itoa(k) != num {
		return name, 0, false
	}
	return fleet, k, true
}

// GroupNames are the names of c's groups, group 0 first.
func (c Fleet) GroupNames() []string {
	n := max(c.Shards, 1)
	out := make([]string, n)
	for k := range out {
		out[k] = GroupName(c.Name, k)
	}
	return out
}

// GroupOf is the group of a pod ("ip:port") in a fleet of n shards:
// FNV-1a of its address, mod n, a function of the address and n only, so
// every registry writer that uses the fleet's recorded layout as n puts
// the pod in the same group. Nothing remembers a pod's group: under
// another n most pods map to another group, which is why n cannot change
// while the fleet counts connections (PROTOCOL.md, "Shards": the layout
// guard, and the offline change with forget-layout). Adoption prefers the
// group that already counts a pod (tracker.adoptGroup) and uses GroupOf
// only when none does.
func GroupOf(pod string, n int) int {
	if n <= 1 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(pod))
	return int(h.Sum32() % uint32(n))
}
