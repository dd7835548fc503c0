package report_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/report"
	"github.com/wsgate/wsgate/scaler"
)

// TestScalerHashAsTheScalerWritesIt: the scaling view reads the hash the
// real scaler writes, both while it holds its metric and once it reports.
func TestScalerHashAsTheScalerWritesIt(t *testing.T) {
	sc, _ := miniScenario(t)
	fleet := fleets.Fleet{Name: "chat"}.WithDefaults()
	ctx := context.Background()
	req := &externalscaler.GetMetricsRequest{ScaledObjectRef: &externalscaler.ScaledObjectRef{
		Name: "chat", Namespace: "default", ScalerMetadata: map[string]string{"fleet": "chat"}}}
	view := func() string {
		r := report.NewReader(sc.store)
		st, err := r.Read(ctx, "chat", time.Now())
		must(t, err)
		return table(t, report.Build([]report.FleetState{st}, report.Options{Views: []report.View{report.ViewScaling}, Now: time.Now()}))
	}

	// A settle time far longer than the scenario's epoch: metrics held.
	held, err := scaler.New(scaler.Config{Fleets: []fleets.Fleet{fleet}, Settle: 1000 * time.Hour}, sc.store)
	must(t, err)
	if _, err := held.GetMetrics(ctx, req); err == nil {
		t.Fatal("GetMetrics answered while the epoch is younger than the settle time")
	}
	if got := view(); !strings.Contains(got, "held (not ready)") {
		t.Errorf("scaling view while the scaler holds:\n%s", got)
	}

	ready, err := scaler.New(scaler.Config{Fleets: []fleets.Fleet{fleet}, Settle: time.Millisecond, ExpectedInstances: 1}, sc.store)
	must(t, err)
	if _, err := ready.GetMetrics(ctx, req); err != nil {
		t.Fatal(err)
	}
	if got := view(); !strings.Contains(got, "reporting") || !strings.Contains(got, "drain: ") {
		t.Errorf("scaling view once the scaler reports:\n%s", got)
	}
}
