package discovery

import (
	"net"
	"strconv"

	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/wsgate/wsgate/fleets"
)

// podsOf turns the EndpointSlices of a backend Service into registry
// entries. port is the fleet's fleets.Fleet.Port: a port name of the
// slices, a number (the pod's port, used as is), or empty for the slice's
// only or first port. An address listed by several slices (as happens
// while the EndpointSlice controller moves endpoints between slices) is
// ready when any of them says so.
func podsOf(slices []*discoveryv1.EndpointSlice, port string) []fleets.Pod {
	byAddr := map[string]fleets.Pod{}
	for _, s := range slices {
		if s.AddressType != discoveryv1.AddressTypeIPv4 && s.AddressType != discoveryv1.AddressTypeIPv6 {
			continue // FQDN endpoints cannot be ORIGINAL_DST targets
		}
		p, ok := slicePort(s, port)
		if !ok {
			continue
		}
		for _, ep := range s.Endpoints {
			if len(ep.Addresses) == 0 {
				continue
			}
			// Consumers use the first address: the others are the same pod's.
			addr := net.JoinHostPort(ep.Addresses[0], strconv.Itoa(int(p)))
			pod := fleets.Pod{Addr: addr, Ready: endpointReady(ep)}
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" {
				pod.Name = ep.TargetRef.Name
			}
			if ep.NodeName != nil {
				pod.Node = *ep.NodeName
			}
			if old, ok := byAddr[addr]; ok {
				pod.Ready = pod.Ready || old.Ready
				if pod.Name == "" {
					pod.Name = old.Name
				}
				if pod.Node == "" {
					pod.Node = old.Node
				}
			}
			byAddr[addr] = pod
		}
	}
	out := make([]fleets.Pod, 0, len(byAddr))
	for _, p := range byAddr {
		out = append(out, p)
	}
	return out
}

// endpointReady: a terminating endpoint takes no new connection even while
// it still serves its old ones; a nil Ready means unknown, which the API
// asks consumers to read as ready.
func endpointReady(ep discoveryv1.Endpoint) bool {
	c := ep.Conditions
	if c.Terminating != nil && *c.Terminating {
		return false
	}
	return c.Ready == nil || *c.Ready
}

func slicePort(s *discoveryv1.EndpointSlice, want string) (int32, bool) {
	if want != "" {
		if n, err := strconv.Atoi(want); err == nil {
			return int32(n), n > 0 && n <= 65535
		}
	}
	for _, p := range s.Ports {
		if p.Port == nil {
			continue
		}
		if want == "" || (p.Name != nil && *p.Name == want) {
			return *p.Port, true
		}
	}
	return 0, false
}

// readyEndpoints counts the distinct ready, non-terminating addresses of
// slices: the Envoy instances that should be running a tracker.
func readyEndpoints(slices []*discoveryv1.EndpointSlice) int {
	seen := map[string]bool{}
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			if len(ep.Addresses) > 0 && endpointReady(ep) {
				seen[ep.Addresses[0]] = true
			}
		}
	}
	return len(seen)
}
