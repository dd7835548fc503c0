package discovery

import (
	"sort"
	"testing"

	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/wsgate/wsgate/fleets"
)

func ptr[T any](v T) *T { return &v }

func TestPodsOfPortAndAddressRules(t *testing.T) {
	ep := func(ip string, ready bool) discoveryv1.Endpoint {
		return discoveryv1.Endpoint{Addresses: []string{ip, "10.9.9.9"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(ready)}}
	}
	ports := []discoveryv1.EndpointPort{{Name: ptr("admin"), Port: ptr(int32(9000))}, {Name: ptr("ws"), Port: ptr(int32(8080))}}
	v4 := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4, Ports: ports,
		Endpoints: []discoveryv1.Endpoint{ep("10.0.0.1", true), ep("10.0.0.2", false), {Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}}}}
	dup := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4, Ports: ports,
		Endpoints: []discoveryv1.Endpoint{ep("10.0.0.2", true)}}
	v6 := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv6, Ports: ports,
		Endpoints: []discoveryv1.Endpoint{ep("fd00::1", true)}}
	fqdn := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeFQDN, Ports: ports,
		Endpoints: []discoveryv1.Endpoint{ep("backend.example", true)}}
	unknown := &discoveryv1.EndpointSlice{AddressType: discoveryv1.AddressTypeIPv4, Ports: ports,
		Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.5"}}}}

	tests := []struct {
		name   string
		slices []*discoveryv1.EndpointSlice
		port   string
		want   []fleets.Pod
	}{
		{"named port, first address only", []*discoveryv1.EndpointSlice{v4}, "ws",
			[]fleets.Pod{{Addr: "10.0.0.1:8080", Ready: true}, {Addr: "10.0.0.2:8080"}}},
		{"empty port takes the first", []*discoveryv1.EndpointSlice{v4}, "",
			[]fleets.Pod{{Addr: "10.0.0.1:9000", Ready: true}, {Addr: "10.0.0.2:9000"}}},
		{"number used as the pod's port", []*discoveryv1.EndpointSlice{v4}, "7000",
			[]fleets.Pod{{Addr: "10.0.0.1:7000", Ready: true}, {Addr: "10.0.0.2:7000"}}},
		{"unknown port name: nothing", []*discoveryv1.EndpointSlice{v4}, "grpc", nil},
		{"duplicate across slices: ready if any is", []*discoveryv1.EndpointSlice{v4, dup}, "ws",
			[]fleets.Pod{{Addr: "10.0.0.1:8080", Ready: true}, {Addr: "10.0.0.2:8080", Ready: true}}},
		{"IPv6 bracketed, FQDN skipped", []*discoveryv1.EndpointSlice{v6, fqdn}, "ws",
			[]fleets.Pod{{Addr: "[fd00::1]:8080", Ready: true}}},
		{"unknown readiness counts as ready", []*discoveryv1.EndpointSlice{unknown}, "ws",
			[]fleets.Pod{{Addr: "10.0.0.5:8080", Ready: true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := podsOf(tc.slices, tc.port)
			sort.Slice(got, func(i, j int) bool { return got[i].Addr < got[j].Addr })
			if len(got) != len(tc.want) {
				t.Fatalf("podsOf = %+v, want %+v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("pod %d = %+v, want %+v", i, got[i], tc.want[i])
				}
				if err := fleets.ValidatePodAddr(got[i].Addr); err != nil {
					t.Error(err)
				}
			}
		})
	}
}
