package gateway

import (
	"sync"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/wsgate/wsgate/envoy/luahost"
	"github.com/wsgate/wsgate/fleets"
)

// What Envoy does with an override host, as read in envoyproxy/envoy (the
// Lua API since 1.33, PR 37327; the stored copies of the files named here):
//
//   - source/extensions/filters/http/lua/lua_filter.cc,
//     StreamHandleWrapper::luaSetUpstreamOverrideHost: the host must be a
//     string whose Http::Utility::parseAuthority(host).is_ip_address_ holds
//     (an IP, with or without a port), else the script fails with "host is
//     not a valid IP address"; strict, if passed, must be a boolean and
//     defaults to false. It only stores {host, strict} in the decoder
//     callbacks (setUpstreamOverrideHost): nothing is checked against the
//     cluster there.
//   - source/common/upstream/cluster_manager_impl.cc,
//     ClusterEntry::chooseHost: HostUtility::selectOverrideHost first, and
//     its host if it returns one; otherwise the cluster's load balancer
//     chooses as if there were no override, unless the override was strict:
//     host_utility.cc's allowLBChooseHost ("opposite value to strict")
//     forbids the load balancer then, and no host is chosen. (The stored
//     cluster_manager_impl.cc predates the strict flag; the call of
//     allowLBChooseHost is inferred from host_utility.cc and from the
//     flag's documentation in PR 39754: "if strict is set to true, Envoy
//     responds with a 503".)
//   - source/common/upstream/host_utility.cc, selectOverrideHost: the
//     override host is looked up by its address string ("10.0.0.1:8080")
//     in the cluster's cross-priority host map (every endpoint of every
//     priority). Not found (not an endpoint of the cluster, or an address
//     without the port) -> no host. Found -> the host only if its
//     healthStatus() is in the cluster's override host status set, else no
//     host. createOverrideHostStatus: that set is
//     common_lb_config.override_host_status, by default UNKNOWN, HEALTHY
//     and DEGRADED. So an EDS endpoint with health_status UNHEALTHY,
//     DRAINING or TIMEOUT (or one failing active health checks, which
//     Envoy reports as UNHEALTHY) is not selected.
//   - With no host, the router answers its local reply 503 "no healthy
//     upstream" (response flag UH); no upstream connection is made.
//
// So strict pinning to a pod outside the cluster, unhealthy, draining or
// timed out ends in a 503 and never in a connection; non-strict pinning
// ends on whatever pod the load balancer picks, which the tracker did not
// count. wsgate.lua only ever uses the strict form.

// Cluster is a normal (EDS-like) cluster: endpoints with a health status
// each, changed at runtime as EDS would (SetEndpoint, RemoveEndpoint). Its
// host selection is Envoy's: a valid override host first (see above), the
// strict flag, then a round-robin load balancer over the HEALTHY and
// UNKNOWN endpoints, else the DEGRADED ones, else (Envoy's panic mode) all
// of them. Safe for concurrent use.
type Cluster struct {
	mu        sync.Mutex
	endpoints []endpoint // in EDS order
	override  map[corev3.HealthStatus]bool
	next      int
}

type endpoint struct {
	addr   string
	status corev3.HealthStatus
}

// NewCluster returns an empty cluster whose override hosts may have the
// given statuses (common_lb_config.override_host_status); none given is
// Envoy's default: UNKNOWN, HEALTHY, DEGRADED.
func NewCluster(overrideHostStatus ...corev3.HealthStatus) *Cluster {
	if len(overrideHostStatus) == 0 {
		overrideHostStatus = []corev3.HealthStatus{corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY, corev3.HealthStatus_DEGRADED}
	}
	c := &Cluster{override: map[corev3.HealthStatus]bool{}}
	for _, s := range overrideHostStatus {
		c.override[s] = true
	}
	return c
}

// SetEndpoint adds the endpoint addr ("ip:port") or changes its health
// status, as an EDS update does.
func (c *Cluster) SetEndpoint(addr string, status corev3.HealthStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.endpoints {
		if c.endpoints[i].addr == addr {
			c.endpoints[i].status = status
			return
		}
	}
	c.endpoints = append(c.endpoints, endpoint{addr, status})
}

// RemoveEndpoint takes addr out of the cluster, as an EDS update without it
// does (with no active health checking, Envoy removes it at once).
func (c *Cluster) RemoveEndpoint(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.endpoints {
		if c.endpoints[i].addr == addr {
			c.endpoints = append(c.endpoints[:i], c.endpoints[i+1:]...)
			return
		}
	}
}

// chooseHost is ClusterEntry::chooseHost for this cluster: "" is no host.
func (c *Cluster) chooseHost(o *luahost.OverrideHost) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if o != nil {
		for _, e := range c.endpoints {
			if e.addr == o.Host && c.override[e.status] {
				return e.addr
			}
		}
		if o.Strict {
			return ""
		}
	}
	return c.balance()
}

// balance is the load balancer: round robin over the healthy endpoints,
// else the degraded ones, else all (panic). Envoy weighs priorities, the
// panic threshold and localities; the stand-in needs only that the pick is
// not the tracker's.
func (c *Cluster) balance() string {
	var healthy, degraded, all []string
	for _, e := range c.endpoints {
		switch e.status {
		case corev3.HealthStatus_HEALTHY, corev3.HealthStatus_UNKNOWN:
			healthy = append(healthy, e.addr)
		case corev3.HealthStatus_DEGRADED:
			degraded = append(degraded, e.addr)
		}
		all = append(all, e.addr)
	}
	for _, set := range [][]string{healthy, degraded, all} {
		if len(set) > 0 {
			c.next++
			return set[c.next%len(set)]
		}
	}
	return ""
}

// originalDst is the ORIGINAL_DST cluster of envoy/envoy.yaml:
// original_dst_lb_config.metadata_key wsgate.upstream, no HTTP header. Its
// host map is the addresses it has connected to (Envoy creates a host per
// new destination and cleans unused ones after cleanup_interval; the
// stand-in keeps them), which is what an override host is looked up in.
type originalDst struct {
	mu    sync.Mutex
	hosts map[string]bool
}

// chooseHost connects to exactly the address in wsgate.upstream; an
// override host is honoured as in any cluster (see above), so a strict
// one that the cluster has not seen yet gets no host.
func (c *originalDst) chooseHost(o *luahost.OverrideHost, md map[string]any) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if o != nil {
		if c.hosts[o.Host] {
			return o.Host
		}
		if o.Strict {
			return ""
		}
	}
	up, _ := md["upstream"].(string)
	if fleets.ValidatePodAddr(up) != nil {
		return ""
	}
	if c.hosts == nil {
		c.hosts = map[string]bool{}
	}
	c.hosts[up] = true
	return up
}
