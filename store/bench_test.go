package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/store"
	"github.com/wsgate/wsgate/store/storetest"
	"github.com/wsgate/wsgate/test/redistest"
)

// BenchmarkAdmitRelease measures the hot calls alone, on a real
// redis-server: their allocations per call are the store's share of the
// tracker's (BenchmarkAdmit in tracker).
func BenchmarkAdmitRelease(b *testing.B) {
	srv := redistest.Start(b)
	s := store.NewStore(srv.Client(), "wsgate")
	ctx := context.Background()
	if err := s.SetPods(ctx, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80")); err != nil {
		b.Fatal(err)
	}
	res, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := s.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: 1 << 40, Confirm: res.Epoch}); err != nil {
		b.Fatal(err)
	}
	rs := []store.ReleaseCount{{Pod: "10.0.0.1:80", N: 1}}
	req := store.AdmitRequest{Fleet: "chat", MaxPerPod: 1 << 20, Policy: fleets.PolicyPack, Instance: "e1", Epoch: res.Epoch, Now: storetest.T0, N: 1}
	b.Run("admit", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			a, err := s.Admit(ctx, req)
			if err != nil || len(a.Pods) != 1 {
				b.Fatal(a, err)
			}
		}
	})
	b.Run("admit+release", func(b *testing.B) {
		req := req
		req.Seq, req.Releases = 1, rs
		b.ReportAllocs()
		for b.Loop() {
			a, err := s.Admit(ctx, req)
			if err != nil || len(a.Pods) != 1 {
				b.Fatal(a, err)
			}
		}
	})
	b.Run("release", func(b *testing.B) {
		rel := store.ReleaseRequest{Fleet: "chat", Instance: "e1", Epoch: res.Epoch, Seq: 1, Releases: rs}
		b.ReportAllocs()
		for b.Loop() {
			if _, err := s.Release(ctx, rel); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkAdmitWait measures what WAIT costs an admit call: the same
// admission on a real primary with one real replica, without WAIT and
// with WAIT 1 (the script and WAIT in one pipeline), one admission per
// call and 16 per call (a batch: one WAIT for all). The primary
// replicates in both, so the difference is WAIT's round trip to the
// replica.
func BenchmarkAdmitWait(b *testing.B) {
	primary := redistest.Start(b)
	redistest.StartReplica(b, primary)
	plain := store.NewStore(primary.Client(), "wsgate")
	ctx := context.Background()
	if err := plain.SetPods(ctx, "chat", storetest.Pods("10.0.0.1:80", "10.0.0.2:80")); err != nil {
		b.Fatal(err)
	}
	res, err := plain.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := plain.Sync(ctx, store.SyncRequest{Fleet: "chat", Instance: "e1", Lease: 1 << 40, Confirm: res.Epoch}); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		s    *store.Store
		n    int
	}{
		{"nowait", plain, 1},
		{"wait1", plain.WithWait(1, time.Second), 1},
		{"nowait/batch16", plain, 16},
		{"wait1/batch16", plain.WithWait(1, time.Second), 16},
	} {
		req := store.AdmitRequest{Fleet: "chat", MaxPerPod: 1 << 30, Policy: fleets.PolicyPack, Instance: "e1", Epoch: res.Epoch, Now: storetest.T0, N: c.n}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				a, err := c.s.Admit(ctx, req)
				if err != nil || len(a.Pods) != c.n {
					b.Fatal(a, err)
				}
			}
		})
	}
}
