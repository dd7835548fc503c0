package gateway

import (
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	luav3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/wsgate/wsgate/envoy/luahost"
)

// RouteTable is the part of Envoy's RouteConfiguration the stand-in serves:
// virtual hosts chosen by the request's host, then the first route of the
// virtual host whose match holds. RoutesFromConfig builds one from a
// go-control-plane RouteConfiguration.
type RouteTable struct {
	VirtualHosts []VirtualHost
	// IgnorePortInHostMatching drops a port from the host before matching
	// domains (RouteConfiguration.ignore_port_in_host_matching).
	IgnorePortInHostMatching bool
}

// VirtualHost is a virtual host: its domains, as Envoy matches them
// (exact, "*.suffix" and any other "*"-led suffix, "prefix.*" and other
// "*"-ended prefixes, and "*"), and its routes in order.
type VirtualHost struct {
	Name    string
	Domains []string
	Routes  []Route
}

// Route is one route: a match (exactly one of Prefix and Path, plus header
// matchers) and an action (a Cluster or a DirectResponse).
type Route struct {
	Name string
	// Prefix matches a :path (query included) that starts with it.
	Prefix string
	// Path matches a :path (query removed) equal to it.
	Path    string
	Headers []HeaderMatcher
	// Cluster is the cluster of the route: Config.Clusters names the
	// endpoint clusters, Config.OriginalDst the ORIGINAL_DST one.
	Cluster        string
	DirectResponse *DirectResponse
	// FilterMetadata is the route's metadata.filter_metadata, by filter
	// name: the Lua filter reads envoy.filters.http.lua's (fleet, pin,
	// admit_timeout_ms).
	FilterMetadata map[string]map[string]any
	// LuaDisabled is typed_per_filter_config envoy.filters.http.lua:
	// LuaPerRoute{disabled: true}: the Lua filter does not run for
	// requests of this route.
	LuaDisabled bool
}

// HeaderMatcher matches one request header, as Envoy's HeaderMatcher with
// string_match.exact (IgnoreCase) or present_match; all values of the
// header are joined by "," first.
type HeaderMatcher struct {
	Name       string
	Exact      string
	IgnoreCase bool
	// Present matches when the header is there at all (Exact unused).
	Present bool
	Invert  bool
}

// DirectResponse is a route's direct_response.
type DirectResponse struct {
	Status  int
	Body    string
	Headers http.Header
}

// LuaRoute returns the filter metadata of a route for wsgate.lua: the
// given keys under envoy.filters.http.lua.
func LuaRoute(md map[string]any) map[string]map[string]any {
	return map[string]map[string]any{luahost.DefaultFilterName: md}
}

// defaultRoutes is envoy/envoy.yaml's route table: WebSocket upgrades to
// the ORIGINAL_DST cluster, with the route's fleet (and admit timeout);
// anything else 426.
func defaultRoutes(cfg Config) *RouteTable {
	md := map[string]any{"fleet": cfg.Fleet}
	if cfg.AdmitTimeout > 0 {
		md["admit_timeout_ms"] = float64(cfg.AdmitTimeout.Milliseconds())
	}
	return &RouteTable{VirtualHosts: []VirtualHost{{Name: "backend", Domains: []string{"*"}, Routes: []Route{
		{Prefix: "/", Headers: []HeaderMatcher{{Name: "upgrade", Exact: "websocket", IgnoreCase: true}}, Cluster: cfg.OriginalDst, FilterMetadata: LuaRoute(md)},
		{Prefix: "/", DirectResponse: &DirectResponse{Status: http.StatusUpgradeRequired, Body: "this listener serves WebSocket upgrades only\n", Headers: http.Header{"Upgrade": {"websocket"}}}},
	}}}}
}

// check reports a route Envoy would refuse to load: no match, no action,
// a cluster that does not exist (validate_clusters), several "*" hosts.
func (rt *RouteTable) check(clusters func(string) bool) error {
	stars := 0
	for _, vh := range rt.VirtualHosts {
		if len(vh.Domains) == 0 {
			return fmt.Errorf("virtual host %q: no domains", vh.Name)
		}
		for _, d := range vh.Domains {
			if d == "*" {
				stars++
			}
		}
		for i, r := range vh.Routes {
			where := fmt.Sprintf("virtual host %q route %d %q", vh.Name, i, r.Name)
			if (r.Prefix == "") == (r.Path == "") {
				return fmt.Errorf("%s: want exactly one of prefix and path", where)
			}
			if (r.Cluster == "") == (r.DirectResponse == nil) {
				return fmt.Errorf("%s: want exactly one of a cluster and a direct response", where)
			}
			if r.Cluster != "" && !clusters(r.Cluster) {
				return fmt.Errorf("%s: unknown cluster %q", where, r.Cluster)
			}
		}
	}
	if stars > 1 {
		return fmt.Errorf("route table: %d virtual hosts with domain \"*\", Envoy allows one", stars)
	}
	return nil
}

// match finds the route of r, nil when none matches (Envoy's 404).
func (rt *RouteTable) match(r *http.Request) *Route {
	vh := rt.virtualHost(r.Host)
	if vh == nil {
		return nil
	}
	for i := range vh.Routes {
		if vh.Routes[i].matches(r) {
			return &vh.Routes[i]
		}
	}
	return nil
}

// virtualHost is RouteMatcher::findVirtualHost: exact domains first, then
// the longest suffix wildcard, then the longest prefix wildcard, then "*".
// A wildcard never matches an empty remainder.
func (rt *RouteTable) virtualHost(host string) *VirtualHost {
	host = strings.ToLower(host)
	if rt.IgnorePortInHostMatching {
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
	}
	type cand struct {
		vh  *VirtualHost
		len int
	}
	var suffix, prefix []cand
	var star *VirtualHost
	for i := range rt.VirtualHosts {
		vh := &rt.VirtualHosts[i]
		for _, d := range vh.Domains {
			d = strings.ToLower(d)
			switch {
			case d == "*":
				star = vh
			case strings.HasPrefix(d, "*"):
				if s := d[1:]; len(host) > len(s) && strings.HasSuffix(host, s) {
					suffix = append(suffix, cand{vh, len(s)})
				}
			case strings.HasSuffix(d, "*"):
				if p := d[:len(d)-1]; len(host) > len(p) && strings.HasPrefix(host, p) {
					prefix = append(prefix, cand{vh, len(p)})
				}
			case d == host:
				return vh
			}
		}
	}
	for _, cs := range [][]cand{suffix, prefix} {
		if len(cs) > 0 {
			sort.SliceStable(cs, func(i, j int) bool { return cs[i].len > cs[j].len })
			return cs[0].vh
		}
	}
	return star
}

func (r *Route) matches(req *http.Request) bool {
	switch {
	case r.Prefix != "" && !strings.HasPrefix(req.URL.RequestURI(), r.Prefix):
		return false
	case r.Path != "" && req.URL.EscapedPath() != r.Path:
		return false
	}
	for _, h := range r.Headers {
		if !h.matches(req) {
			return false
		}
	}
	return true
}

func (h HeaderMatcher) matches(req *http.Request) bool {
	var vs []string
	if strings.EqualFold(h.Name, "host") || h.Name == ":authority" {
		vs = []string{req.Host}
	} else {
		vs = req.Header.Values(h.Name)
	}
	var ok bool
	switch {
	case h.Present:
		ok = len(vs) > 0
	case len(vs) == 0:
		ok = false
	case h.IgnoreCase:
		ok = strings.EqualFold(strings.Join(vs, ","), h.Exact)
	default:
		ok = strings.Join(vs, ",") == h.Exact
	}
	return ok != h.Invert
}

// RoutesFromConfig builds the stand-in's route table from an Envoy
// RouteConfiguration, so that a test can serve a rendered Envoy config.
// What the stand-in does not model is an error naming it, never ignored:
// matches other than prefix and path (and case_sensitive false), header
// matchers other than string_match.exact and present_match, actions other
// than route.cluster and direct_response, and per-filter configs other than
// a route's LuaPerRoute{disabled: true}.
func RoutesFromConfig(rc *routev3.RouteConfiguration) (*RouteTable, error) {
	rt := &RouteTable{IgnorePortInHostMatching: rc.GetIgnorePortInHostMatching()}
	for _, vh := range rc.GetVirtualHosts() {
		if len(vh.GetTypedPerFilterConfig()) != 0 {
			return nil, fmt.Errorf("route config %q: virtual host %q: typed_per_filter_config is not modelled", rc.GetName(), vh.GetName())
		}
		v := VirtualHost{Name: vh.GetName(), Domains: vh.GetDomains()}
		for i, r := range vh.GetRoutes() {
			route, err := routeFromConfig(r)
			if err != nil {
				return nil, fmt.Errorf("route config %q: virtual host %q: route %d %q: %w", rc.GetName(), vh.GetName(), i, r.GetName(), err)
			}
			v.Routes = append(v.Routes, route)
		}
		rt.VirtualHosts = append(rt.VirtualHosts, v)
	}
	return rt, nil
}

func routeFromConfig(r *routev3.Route) (Route, error) {
	out := Route{Name: r.GetName()}
	m := r.GetMatch()
	if cs := m.GetCaseSensitive(); cs != nil && !cs.GetValue() {
		return out, fmt.Errorf("match.case_sensitive false is not modelled")
	}
	switch p := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		out.Prefix = p.Prefix
		if out.Prefix == "" {
			out.Prefix = "/" // every :path starts with "/"
		}
	case *routev3.RouteMatch_Path:
		out.Path = p.Path
	default:
		return out, fmt.Errorf("match %T is not modelled (prefix and path are)", p)
	}
	if len(m.GetQueryParameters()) != 0 || m.GetGrpc() != nil || m.GetTlsContext() != nil || m.GetRuntimeFraction() != nil || len(m.GetDynamicMetadata()) != 0 {
		return out, fmt.Errorf("match conditions other than path and headers are not modelled")
	}
	for _, h := range m.GetHeaders() {
		hm := HeaderMatcher{Name: strings.ToLower(h.GetName()), Invert: h.GetInvertMatch()}
		switch {
		case h.GetPresentMatch():
			hm.Present = true
		case h.GetStringMatch() != nil:
			e, ok := h.GetStringMatch().GetMatchPattern().(*matcherv3.StringMatcher_Exact)
			if !ok {
				return out, fmt.Errorf("header %q: string_match %T is not modelled (exact is)", h.GetName(), h.GetStringMatch().GetMatchPattern())
			}
			hm.Exact, hm.IgnoreCase = e.Exact, h.GetStringMatch().GetIgnoreCase()
		default:
			return out, fmt.Errorf("header %q: only string_match.exact and present_match are modelled", h.GetName())
		}
		out.Headers = append(out.Headers, hm)
	}
	for name, cfg := range r.GetTypedPerFilterConfig() {
		var lua luav3.LuaPerRoute
		if name != luahost.DefaultFilterName || cfg.UnmarshalTo(&lua) != nil || !lua.GetDisabled() {
			return out, fmt.Errorf("typed_per_filter_config %s (%s) is not modelled (%s LuaPerRoute disabled is)", name, cfg.GetTypeUrl(), luahost.DefaultFilterName)
		}
		out.LuaDisabled = true
	}
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		c, ok := a.Route.GetClusterSpecifier().(*routev3.RouteAction_Cluster)
		if !ok {
			return out, fmt.Errorf("route action %T is not modelled (route.cluster is)", a.Route.GetClusterSpecifier())
		}
		out.Cluster = c.Cluster
	case *routev3.Route_DirectResponse:
		d := &DirectResponse{Status: int(a.DirectResponse.GetStatus()), Body: a.DirectResponse.GetBody().GetInlineString(), Headers: http.Header{}}
		for _, h := range r.GetResponseHeadersToAdd() {
			d.Headers.Add(h.GetHeader().GetKey(), h.GetHeader().GetValue())
		}
		out.DirectResponse = d
	default:
		return out, fmt.Errorf("route action %T is not modelled (route.cluster and direct_response are)", a)
	}
	if fm := r.GetMetadata().GetFilterMetadata(); len(fm) != 0 {
		out.FilterMetadata = map[string]map[string]any{}
		for name, s := range fm {
			out.FilterMetadata[name] = s.AsMap()
		}
	}
	return out, nil
}
