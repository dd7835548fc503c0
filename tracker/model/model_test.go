// Package model checks the admission protocol of tracker/PROTOCOL.md with
// the SPIN model checker: wsgate.pml, over every interleaving of a small
// instance (two trackers, one pod). See README.md.
package model

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// maxDepth is pan's -m: the deepest DFS path it may follow. A complete
// search must stay below it (pan says "max search depth too small"
// otherwise, and its result would not cover every state). The delta
// heartbeat's steps took the deepest full configuration (reap-dead/cap2)
// to about 2,050,000.
const maxDepth = 4000000

// A configuration of the model: the cpp defines given to spin -a and
// whether SPIN must find a violation of (Cap).
type config struct {
	name    string
	defines []string
	fails   bool
	why     string
	full    bool // run only with WSGATE_MODEL_FULL=1 (about a million states)
}

var configs = []config{
	// The protocol, --expired-instances=keep: must hold.
	{"keep/cap1", []string{"-DCAP=1"}, false, "the protocol", false},
	{"keep/cap2", []string{"-DCAP=2"}, false, "the protocol", false},
	{"keep/cap1/leases", []string{"-DCAP=1", "-DLEASES"}, false, "the protocol, with instance leases in Redis", false},
	{"reap-dead/cap1", []string{"-DCAP=1", "-DREAP_DEAD"}, false, "reaping only instances that held nothing when their local lease ended (G left out): the admit fence refuses a reaped instance", false},
	{"reap-dead/cap2", []string{"-DCAP=2", "-DREAP_DEAD"}, false, "reaping only instances that held nothing when their local lease ended (G left out): the admit fence refuses a reaped instance", true},
	{"keep/cap2/leases", []string{"-DCAP=2", "-DLEASES"}, false, "the protocol, with instance leases in Redis", true},
	{"clockstep+fix/cap1", []string{"-DCAP=1", "-DRCLOCK_STEPS", "-DWAIT_FIX"}, false, "Redis' clock steps; the wait needs a tracker's confirmation (sync.lua)", false},
	{"clockstep+fix/cap2", []string{"-DCAP=2", "-DRCLOCK_STEPS", "-DWAIT_FIX"}, false, "Redis' clock steps; the wait needs a tracker's confirmation (sync.lua)", true},

	// Must fail: what the protocol documents, and one rule away from it.
	{"broken-share/cap1", []string{"-DCAP=1", "-DBROKEN"}, true, "the previous share fallback", false},
	{"broken-share/cap2", []string{"-DCAP=2", "-DBROKEN"}, true, "the previous share fallback", false},
	{"reap/cap1", []string{"-DCAP=1", "-DREAP"}, true, "reap: a cut-off instance's slots are given away (trade-off G)", false},
	{"admit-past-lease+reap-dead/cap1", []string{"-DCAP=1", "-DREAP_DEAD", "-DADMIT_PAST_LEASE"}, true, "admitting through Redis after the local lease ended, which the admit script no longer refuses: reaped after the grant", false},
	{"no-lower/cap1", []string{"-DCAP=1", "-DNO_LOWER"}, true, "a heartbeat that does not lower ent before sending", false},
	{"no-runid/cap1", []string{"-DCAP=1", "-DNO_RUNID"}, true, "fencing on the epoch id only", false},
	{"run-unverified/cap1", []string{"-DCAP=1", "-DRUN_UNVERIFIED"}, true, "a script text that names a run loaded without reading it on the same connection", false},
	{"no-seq/cap1", []string{"-DCAP=1", "-DNO_SEQ"}, true, "releases not ordered against heartbeats", false},
	{"sync-no-degrade/cap1", []string{"-DCAP=1", "-DSYNC_NO_DEGRADE"}, true, "admitting through Redis after a heartbeat's reply was lost", false},
	{"clockstep/cap1", []string{"-DCAP=1", "-DRCLOCK_STEPS"}, true, "without the confirmation, a forward step of Redis' clock ends the recovery wait", false},
	{"leave-early/cap1", []string{"-DCAP=1", "-DLEAVE_EARLY"}, true, "leaving Redis while Envoy still carries connections", false},
	{"spare-kept/cap1", []string{"-DCAP=1", "-DSPARE_KEPT"}, true, "a spare slot's release sent without lowering ent: reused after Redis freed it", false},
	{"seq-reseed/cap1", []string{"-DCAP=1", "-DSEQ_RESEED"}, true, "a restarted tracker numbering on from Redis' stored seq, not a new generation", false},
	{"delta-no-base/cap1", []string{"-DCAP=1", "-DDELTA_NO_BASE"}, true, "a delta heartbeat applied without the base check: after a new epoch (or a reap) it re-publishes nothing", false},

	// Replication and failover (PROTOCOL.md, "Replication and failover";
	// WAIT_ADMIT is --redis-wait-replicas in the code). A plain failover holds; split
	// brain breaks the current protocol, and a write lease alone does not
	// mend it; admissions acknowledged by the replica do.
	{"failover/cap1", []string{"-DCAP=1", "-DREPLICA", "-DP_DOWN"}, false, "a failover without split brain: the old primary is gone at the promotion", false},
	{"failover/cap2", []string{"-DCAP=2", "-DREPLICA", "-DP_DOWN"}, false, "a failover without split brain: the old primary is gone at the promotion", true},
	{"split-brain/cap1", []string{"-DCAP=1", "-DREPLICA"}, true, "split brain: the old primary keeps granting to the trackers that reach it, the promoted replica to the others (the current protocol)", false},
	{"split-brain/cap2", []string{"-DCAP=2", "-DREPLICA"}, true, "split brain: the old primary keeps granting to the trackers that reach it, the promoted replica to the others (the current protocol)", false},
	{"split-brain+write-lease/cap1", []string{"-DCAP=1", "-DREPLICA", "-DWRITE_LEASE"}, true, "split brain with a write lease only: the old primary stops before the new one grants, but what it granted never reached the replica", false},
	{"split-brain+wait-admit/cap1", []string{"-DCAP=1", "-DREPLICA", "-DWAIT_ADMIT"}, false, "split brain, admissions counted only once the replica has them (WAIT)", false},
	{"split-brain+wait-admit/cap2", []string{"-DCAP=2", "-DREPLICA", "-DWAIT_ADMIT"}, false, "split brain, admissions counted only once the replica has them (WAIT)", true},
	{"split-brain+write-fence/cap1", []string{"-DCAP=1", "-DREPLICA", "-DWRITE_FENCE"}, false, "split brain, write lease and WAIT (the fix issue 26 proposes)", false},
	{"split-brain+write-fence/cap2", []string{"-DCAP=2", "-DREPLICA", "-DWRITE_FENCE"}, false, "split brain, write lease and WAIT (the fix issue 26 proposes)", true},
	{"split-brain+wait-admit+flip/cap1", []string{"-DCAP=1", "-DREPLICA", "-DWAIT_ADMIT", "-DFLIP"}, false, "split brain with WAIT, trackers moving between the two primaries any number of times", true},
	{"failover+restarts/cap1", []string{"-DCAP=1", "-DREPLICA", "-DP_DOWN", "-DP_RESTARTS"}, false, "a failover without split brain, the primary restarting empty before it", false},
	{"split-brain+wait-admit+restarts/cap1", []string{"-DCAP=1", "-DREPLICA", "-DWAIT_ADMIT", "-DP_RESTARTS"}, true, "split brain after the primary restarted empty and its replica resynced: the double fault (data lost while an instance is cut off from the primary that serves next)", false},

	// The early end of a promoted replica's recovery wait (PROTOCOL.md,
	// "Ending the wait early"; issue 26 item 2): it holds with WAIT, in a
	// plain failover and under split brain; each condition it rests on,
	// left out, breaks the cap even in a plain failover (P_DOWN, which
	// holds with the full wait).
	{"failover+wait-admit+early/cap1", []string{"-DCAP=1", "-DREPLICA", "-DP_DOWN", "-DWAIT_ADMIT", "-DEARLY_END"}, false, "a failover, admissions acknowledged, the wait ends once every instance of the promoted replica's set re-published", false},
	{"failover+wait-admit+early/cap2", []string{"-DCAP=2", "-DREPLICA", "-DP_DOWN", "-DWAIT_ADMIT", "-DEARLY_END"}, false, "a failover, admissions acknowledged, the wait ends once every instance of the promoted replica's set re-published", true},
	{"split-brain+wait-admit+early/cap1", []string{"-DCAP=1", "-DREPLICA", "-DWAIT_ADMIT", "-DEARLY_END"}, false, "split brain, admissions acknowledged, the early end (an instance cut off from the new primary keeps the wait to its full length)", false},
	{"split-brain+wait-admit+early/cap2", []string{"-DCAP=2", "-DREPLICA", "-DWAIT_ADMIT", "-DEARLY_END"}, false, "split brain, admissions acknowledged, the early end (an instance cut off from the new primary keeps the wait to its full length)", true},
	{"split-brain+wait-admit+early+flip/cap1", []string{"-DCAP=1", "-DREPLICA", "-DWAIT_ADMIT", "-DEARLY_END", "-DFLIP"}, false, "split brain with WAIT and the early end, trackers moving between the two primaries any number of times", true},
	{"split-brain+write-fence+early/cap1", []string{"-DCAP=1", "-DREPLICA", "-DWRITE_FENCE", "-DEARLY_END"}, false, "split brain, write lease and WAIT, the early end", true},
	{"failover+restarts+wait-admit+early/cap1", []string{"-DCAP=1", "-DREPLICA", "-DP_DOWN", "-DP_RESTARTS", "-DWAIT_ADMIT", "-DEARLY_END"}, false, "a failover after the primary restarted empty: the early end only over an epoch whose wait was over", true},
	{"failover+wait-admit+early-miss/cap1", []string{"-DCAP=1", "-DREPLICA", "-DP_DOWN", "-DWAIT_ADMIT", "-DEARLY_END", "-DEARLY_MISS"}, false, "the set misses an instance: holds in the model, whose acknowledged counts already cover every connection; the set is there for what the model leaves out (README.md)", true},
	{"failover+early/cap1", []string{"-DCAP=1", "-DREPLICA", "-DP_DOWN", "-DEARLY_END"}, true, "the early end without WAIT: the promoted replica lacks an instance's join and grant", false},
	{"failover+wait-admit+early+mixed/cap1", []string{"-DCAP=1", "-DREPLICA", "-DP_DOWN", "-DWAIT_ADMIT", "-DEARLY_END", "-DMIXED_WAIT"}, true, "the early end while one tracker does not wait for the replica", false},
	{"failover+restarts+wait-admit+early-unsettled/cap1", []string{"-DCAP=1", "-DREPLICA", "-DP_DOWN", "-DP_RESTARTS", "-DWAIT_ADMIT", "-DEARLY_END", "-DEARLY_UNSETTLED"}, true, "the early end over data whose epoch was not past its wait (its re-publications are not acknowledged)", false},
	{"early-restart/cap1", []string{"-DCAP=1", "-DEARLY_RESTART"}, true, "the early end on a Redis restarted from disk, which acknowledged nothing", false},
}

func TestModel(t *testing.T) {
	for _, tool := range []string{"spin", "gcc"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found: the model check must run in CI (scripts/deps.sh installs it)", tool)
			}
			t.Skipf("%s not found: install spin and gcc to check the model (scripts/deps.sh)", tool)
		}
	}
	src, err := filepath.Abs("wsgate.pml")
	if err != nil {
		t.Fatal(err)
	}
	full := os.Getenv("WSGATE_MODEL_FULL") == "1"
	for _, c := range configs {
		if c.full && !full {
			continue
		}
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			check(t, src, c)
		})
	}
}

var (
	reErrors = regexp.MustCompile(`errors: (\d+)`)
	reDepth  = regexp.MustCompile(`depth reached (\d+)`)
	reStates = regexp.MustCompile(`(\d+) states, stored`)
	reTrans  = regexp.MustCompile(`(\d+) transitions`)
	reTime   = regexp.MustCompile(`elapsed time ([0-9.e+-]+) seconds`)
)

func check(t *testing.T, src string, c config) {
	dir := t.TempDir()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "wsgate.pml"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	// The full configurations, millions of states each and run in
	// parallel, take minutes on a busy machine.
	limit := 3 * time.Minute
	if c.full {
		limit = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}

	start := time.Now()
	run("spin", append(append([]string{"-a"}, c.defines...), "wsgate.pml")...)
	// A proof searches depth-first (faster, less memory than BFS), with
	// -O2. A violation is searched breadth-first, so that the trail is a
	// shortest counterexample; it is found within a few thousand states,
	// so its pan is not worth the time -O2 takes to compile.
	cc := []string{"-DSAFETY", "-O2", "-w", "-o", "pan", "pan.c"}
	if c.fails {
		cc = []string{"-DSAFETY", "-DBFS", "-O0", "-w", "-o", "pan", "pan.c"}
	}
	run("gcc", cc...)
	out := run("./pan", "-m"+strconv.Itoa(maxDepth), "-w22")

	num := func(re *regexp.Regexp) int {
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("pan output without %q:\n%s", re, out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}
	errs, depth, states, trans := num(reErrors), num(reDepth), num(reStates), num(reTrans)
	panTime := ""
	if m := reTime.FindStringSubmatch(out); m != nil {
		panTime = m[1] + "s"
	}
	t.Logf("%s (%s): %d states, %d transitions, depth reached %d (limit %d), errors %d; pan %s, with compilation %.1fs",
		c.why, strings.Join(c.defines, " "), states, trans, depth, maxDepth, errs, panTime, time.Since(start).Seconds())

	if !c.fails {
		if errs != 0 {
			t.Errorf("SPIN found a violation of (Cap); replay it with: spin -t %s wsgate.pml\n%s", strings.Join(c.defines, " "), out)
		}
		if strings.Contains(out, "max search depth too small") || strings.Contains(out, "Search not completed") || depth >= maxDepth {
			t.Errorf("the search was truncated (depth %d, -m%d): not a proof\n%s", depth, maxDepth, out)
		}
		if !strings.Contains(out, "Full statespace search for:") {
			t.Errorf("not a full state space search:\n%s", out)
		}
		return
	}
	if errs == 0 {
		t.Fatalf("SPIN found no violation of (Cap), but %s must break it\n%s", c.why, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "wsgate.pml.trail")); err != nil {
		t.Fatalf("a violation without a trail: %v\n%s", err, out)
	}
	// The counterexample, step by step (each step prints its name and the
	// state after it).
	trail := run("spin", append(append([]string{"-t"}, c.defines...), "wsgate.pml")...)
	var steps []string
	for _, l := range strings.Split(trail, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "spin:") || strings.Contains(l, "process") || strings.Contains(l, " = ") {
			continue
		}
		steps = append(steps, "  "+l)
	}
	t.Logf("counterexample (%d steps):\n%s", depth, strings.Join(steps, "\n"))
}
