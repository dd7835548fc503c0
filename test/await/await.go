// Package await is the tests' one way to wait for something that has no
// event to wait on: poll a condition until it holds, and fail the test,
// saying what it waited for, how long, and what it saw last, when it does
// not hold in time. Nothing here returns quietly on a timeout.
//
// The functions call t.Fatalf, so they must run on the test's goroutine
// (testing.T's rule for FailNow).
package await

import (
	"context"
	"fmt"
	"time"
)

// TB is the part of testing.TB these helpers use.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
}

// poll is how often a condition is checked: often enough that a test waits
// little longer than it must, rarely enough not to load the machine.
const poll = 10 * time.Millisecond

// Until polls cond until it reports true, or fails t once within has
// passed: "<what>: not within <within> (last: <state>)", state being the
// last that cond described.
func Until(t TB, what string, within time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (last: %s)", what, within, state)
			return // a TB whose Fatalf returns (a test of this package)
		}
		time.Sleep(poll)
	}
}

// True is Until for a condition with no state worth reporting.
func True(t TB, what string, within time.Duration, cond func() bool) {
	t.Helper()
	Until(t, what, within, func() (bool, string) {
		ok := cond()
		return ok, fmt.Sprint(ok)
	})
}

// Granter is what waits until it may grant admissions (a tracker, whose
// new Redis epoch grants nothing for one instance TTL).
type Granter interface {
	AwaitGranting(ctx context.Context) error
}

// Granting waits until g (named what in the failure) grants, or fails t
// with what stopped it once within has passed.
func Granting(t TB, what string, g Granter, within time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	if err := g.AwaitGranting(ctx); err != nil {
		t.Fatalf("%s: not granting within %s: %v", what, within, err)
	}
}
