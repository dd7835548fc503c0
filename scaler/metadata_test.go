package scaler_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestOversizedMetadataIsBoundedAndNotEchoed: a huge fleet name, or a flood
// of unknown keys, is refused, and the error does not carry it back.
func TestOversizedMetadataIsBoundedAndNotEchoed(t *testing.T) {
	e := start(t, opts{})
	e.tracker("envoy-a")
	longName := strings.Repeat("f", 3<<10)
	many := map[string]string{"fleet": "web"}
	for i := range 100_000 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	cases := []struct {
		name string
		md   map[string]string
		code codes.Code
	}{
		{"3 KB fleet name", map[string]string{"fleet": longName}, codes.InvalidArgument},
		{"100,000 unknown keys", many, codes.ResourceExhausted}, // past the message bound
		{"100 unknown keys", func() map[string]string {
			m := map[string]string{"fleet": "web"}
			for i := range 100 {
				m[fmt.Sprintf("k%d", i)] = "v"
			}
			return m
		}(), codes.InvalidArgument},
		{"1 MB fleet name", map[string]string{"fleet": strings.Repeat("g", 1<<20)}, codes.ResourceExhausted},
	}
	for _, c := range cases {
		ref := &externalscaler.ScaledObjectRef{Name: "backend", Namespace: "default", ScalerMetadata: c.md}
		_, err := e.client.IsActive(context.Background(), ref)
		if status.Code(err) != c.code {
			t.Errorf("%s: %v, want %s", c.name, status.Code(err), c.code)
		}
		if msg := status.Convert(err).Message(); len(msg) > 512 {
			t.Errorf("%s: error of %d bytes echoes the input: %.100s...", c.name, len(msg), msg)
		}
	}
}
