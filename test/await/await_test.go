package await_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/test/await"
)

// recorder is a TB whose Fatalf records instead of ending the test.
type recorder struct{ failed []string }

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.failed = append(r.failed, fmt.Sprintf(format, args...))
}

func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	var r recorder
	n := 0
	await.Until(&r, "third call", time.Minute, func() (bool, string) { n++; return n == 3, fmt.Sprint(n) })
	if n != 3 || len(r.failed) != 0 {
		t.Fatalf("calls %d, failures %q: want 3 calls and no failure", n, r.failed)
	}
}

func TestUntilFailsSayingWhatItWaitedFor(t *testing.T) {
	var r recorder
	start := time.Now()
	await.Until(&r, "the impossible", 50*time.Millisecond, func() (bool, string) { return false, "still no" })
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Errorf("gave up after %s, before its 50ms", took)
	}
	if len(r.failed) != 1 {
		t.Fatalf("failures %q, want exactly one", r.failed)
	}
	for _, want := range []string{"the impossible", "50ms", "still no"} {
		if !strings.Contains(r.failed[0], want) {
			t.Errorf("failure %q does not say %q", r.failed[0], want)
		}
	}
}

func TestTrueFailsOnTimeout(t *testing.T) {
	var r recorder
	await.True(&r, "never", 20*time.Millisecond, func() bool { return false })
	if len(r.failed) != 1 || !strings.Contains(r.failed[0], "never") {
		t.Fatalf("failures %q, want one naming what it waited for", r.failed)
	}
}

type granter func(ctx context.Context) error

func (g granter) AwaitGranting(ctx context.Context) error { return g(ctx) }

func TestGrantingFailsWhenTheDeadlinePasses(t *testing.T) {
	var r recorder
	await.Granting(&r, "tracker A", granter(func(ctx context.Context) error { <-ctx.Done(); return ctx.Err() }), 20*time.Millisecond)
	if len(r.failed) != 1 || !strings.Contains(r.failed[0], "deadline exceeded") || !strings.Contains(r.failed[0], "tracker A") {
		t.Fatalf("failures %q, want one naming the tracker, with the context's error", r.failed)
	}
	r.failed = nil
	await.Granting(&r, "tracker A", granter(func(context.Context) error { return nil }), time.Second)
	if len(r.failed) != 0 {
		t.Fatalf("failures %q granting at once", r.failed)
	}
}
