package e2e

import (
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

func connMeta(t *testing.T, conn string) *corev3.Metadata {
	t.Helper()
	s, err := structpb.NewStruct(map[string]any{"conn": conn})
	if err != nil {
		t.Fatal(err)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{"wsgate": s}}
}
