// Package envoy holds wsgate's Envoy data plane: the HTTP Lua filter
// (wsgate.lua), the bootstrap a user deploys (envoy.yaml), both embedded
// here, and LoadBootstrap, which checks a bootstrap the way Envoy would
// parse it. The Lua host that executes wsgate.lua in tests is envoy/luahost;
// the Envoy stand-in around it is envoy/gateway.
//
// Pinning by override host (wsgate.lua's pin = "override_host", Envoy 1.33+),
// as Envoy's source has it (envoy/gateway/cluster.go names the files): the
// Lua call only stores {host, strict}, after checking that host is an IP
// authority; at host selection the cluster looks the "ip:port" up among all
// its endpoints and takes it only if its health status is in
// common_lb_config.override_host_status (default UNKNOWN, HEALTHY,
// DEGRADED). Otherwise strict gives no host (the router's 503 "no healthy
// upstream", no connection) and non-strict falls back to the load balancer,
// onto a pod the tracker did not count; wsgate.lua is strict only.
package envoy

import (
	"bytes"
	_ "embed"
	"fmt"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// Every typed_config of envoy.yaml and of the chart's rendered bootstrap
	// (TLS listeners) must resolve: protojson looks the
	// "@type" up in the global registry these packages fill.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/lua/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// LuaPath is where envoy.yaml (and the Helm chart) expect wsgate.lua
// mounted in the Envoy container.
const LuaPath = "/etc/envoy/wsgate.lua"

// FilterLua is the HTTP Lua filter, the one source of the code Envoy runs.
//
//go:embed wsgate.lua
var FilterLua []byte

// InstallLine is the text of wsgate.lua that an installer may replace by
// its own install table (the INSTALL contract in the file's header).
const InstallLine = "local INSTALL = {}"

// WithInstall returns the filter lua with its install line replaced by
// `local INSTALL = <table>`, as the Helm chart's replace does. table is a
// Lua table literal on one line; the filter checks its keys and values on
// every upgrade.
func WithInstall(lua []byte, table string) ([]byte, error) {
	if n := bytes.Count(lua, []byte(InstallLine)); n != 1 {
		return nil, fmt.Errorf("wsgate.lua: %q occurs %d times, want once (the INSTALL contract)", InstallLine, n)
	}
	if strings.ContainsAny(table, "\r\n") {
		return nil, fmt.Errorf("install table %q: must be one line", table)
	}
	return bytes.Replace(lua, []byte(InstallLine), []byte("local INSTALL = "+table), 1), nil
}

// BootstrapYAML is the Envoy bootstrap of one replica with its tracker.
//
//go:embed envoy.yaml
var BootstrapYAML []byte

// LoadBootstrap decodes an Envoy bootstrap written in YAML as strictly as
// Envoy does: unknown fields and unresolvable typed_config types are errors,
// and the result must pass the generated validation rules (ValidateAll).
func LoadBootstrap(yamlBytes []byte) (*bootstrapv3.Bootstrap, error) {
	js, err := yaml.YAMLToJSON(yamlBytes)
	if err != nil {
		return nil, fmt.Errorf("envoy bootstrap: parse YAML: %w", err)
	}
	var b bootstrapv3.Bootstrap
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, &b); err != nil {
		return nil, fmt.Errorf("envoy bootstrap: decode: %w", err)
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("envoy bootstrap: validate: %w", err)
	}
	// The generated rules stop at google.protobuf.Any: the extensions'
	// own rules (a filter's required fields) are checked one by one.
	if err := validateTyped(b.ProtoReflect(), "bootstrap"); err != nil {
		return nil, fmt.Errorf("envoy bootstrap: validate: %w", err)
	}
	return &b, nil
}

// validateTyped runs ValidateAll on the message of every Any under m,
// recursively, naming the path of a failing one.
func validateTyped(m protoreflect.Message, path string) error {
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + string(fd.Name())
		switch {
		case fd.Message() == nil:
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapValue().Message() != nil {
					err = validateMessage(mv.Message(), p+"["+k.String()+"]")
				}
				return err == nil
			})
		case fd.IsList():
			for i := 0; i < v.List().Len() && err == nil; i++ {
				err = validateMessage(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))
			}
		default:
			err = validateMessage(v.Message(), p)
		}
		return err == nil
	})
	return err
}

func validateMessage(m protoreflect.Message, path string) error {
	a, ok := m.Interface().(*anypb.Any)
	if !ok {
		return validateTyped(m, path)
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if v, ok := inner.(interface{ ValidateAll() error }); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s (%s): %w", path, a.GetTypeUrl(), err)
		}
	}
	return validateTyped(inner.ProtoReflect(), path)
}
