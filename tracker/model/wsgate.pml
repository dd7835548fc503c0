/*
 * wsgate.pml: SPIN model of the admission protocol of tracker/PROTOCOL.md.
 *
 * Two tracker instances, one pod, cap CAP. Checked property (Cap):
 * held[0] + held[1] <= CAP in every reachable state, where held[i] is what
 * instance i's Envoy physically carries: a connection counts from the
 * moment its tracker decides to admit it until after it released it.
 *
 *   spin -a -DCAP=1 wsgate.pml && gcc -DSAFETY -O2 -o pan pan.c && ./pan -m1000000
 *   spin -t -DCAP=1 -DBROKEN wsgate.pml   (replays a counterexample found)
 *
 * Configuration macros (model_test.go runs each, see README.md):
 *   CAP=n           the pod's cap (1 and 2 are checked).
 *   REAP            expiredInstances: reap instead of keep: an expired
 *                   instance is reaped although it may be only cut off
 *                   (the documented trade-off G: fails).
 *   REAP_DEAD       REAP, but only instances that held nothing when their
 *                   local lease ended: trade-off G left out, what remains
 *                   is the admit fence (PROTOCOL.md, "One read for the
 *                   fence"; holds).
 *   ADMIT_PAST_LEASE  a tracker keeps admitting through Redis after its
 *                   local lease ended (with REAP_DEAD: fails, as the admit
 *                   script refuses only a reaped instance, not an expired
 *                   one).
 *   RCLOCK_STEPS    Redis' wall clock (TIME) may step forward (fails:
 *                   README.md, flaw 1).
 *   WAIT_FIX        the fix of flaw 1, as sync.lua and admit.lua do it: admit also needs the epoch
 *                   confirmed by a tracker that watched a full TTL of its
 *                   own monotonic clock pass since it first saw the epoch.
 *   SEQ_RESEED      a restarted tracker numbers its calls on from the seq
 *                   Redis stored (fails: README.md, flaw 2).
 * Every configuration has the delta heartbeat (PROTOCOL.md, "Delta
 * heartbeats"), which a tracker may send when its last heartbeat was
 * acknowledged and no call of unknown outcome came since; with one pod, it
 * skips re-stating the count when no connection ended and the count is
 * still what that heartbeat sent, and sends it otherwise. sync.lua applies
 * it only if the instance's i:<id> is that heartbeat's seq (its base), and
 * otherwise changes nothing and asks for a full one. A full heartbeat may be
 * sent at any time (the code sends more of them than the model needs).
 * Broken variants, each one rule away from the protocol, must fail:
 *   BROKEN          the previous design's share fallback (no entitlements).
 *   NO_LOWER        a heartbeat does not lower ent to held before sending.
 *   NO_RUNID        the scripts fence on the epoch id only, not the run id.
 *   RUN_UNVERIFIED  the hot scripts take the run id from their text
 *                   (PROTOCOL.md, "The run id without INFO"), and a
 *                   tracker puts back a text naming the run it read before
 *                   Redis restarted (EVAL on NOSCRIPT, or SCRIPT LOAD on
 *                   another connection than the one that read the run id).
 *                   Its text then names the process that made a restored
 *                   epoch, and the run check passes wherever the epoch id
 *                   does: for every call, NO_RUNID.
 *   NO_SEQ          releases are not ordered against heartbeats by seq.
 *   SYNC_NO_DEGRADE a heartbeat whose reply was lost does not stop the
 *                   admissions through Redis until the next heartbeat.
 *   LEAVE_EARLY     an instance leaves Redis while its Envoy still
 *                   carries connections.
 *   SPARE_KEPT      a queued release of a spare slot is sent without
 *                   lowering ent first (PROTOCOL.md, "Reuse"): the slot
 *                   can be reused after Redis freed it.
 *   DELTA_NO_BASE   sync.lua applies a delta without checking its base
 *                   (nor the epoch): a delta into a new epoch (or after a
 *                   reap) re-publishes nothing, and the recovery wait
 *                   ends as if it had.
 * Replication and failover (PROTOCOL.md, "Replication and failover"):
 *   REPLICA         Redis is a primary P and a replica R. R receives P's
 *                   effects in order, lagging: its data is P's state at
 *                   some earlier step (the snapshot slot sE is R's data,
 *                   "replicate" copies P's state into it at any moment).
 *                   R may be promoted at any moment (losing what it has
 *                   not received): a primary with another run id, so the
 *                   trackers that reach it see a new epoch. P keeps
 *                   serving: each tracker talks to one of the two (side),
 *                   and after the promotion it may move to R for good (a
 *                   partition {P, A} | {R, B}, or a failover both follow).
 *                   The current protocol: fails (split brain).
 *   WRITE_LEASE     P refuses every write (min-replicas-to-write) before
 *                   R's recovery wait can end (min-replicas-max-lag + 2 s
 *                   < the instance TTL): alone, fails.
 *   WAIT_ADMIT      an admission counts (the tracker reads its grant) only
 *                   once the replica has it (WAIT 1 after the admit call);
 *                   a second failover (R's own replicas) is not modelled.
 *   WRITE_FENCE     both.
 *   P_DOWN          no split brain: P refuses every write from the
 *                   promotion on (it died, or no tracker reaches it); the
 *                   trackers follow R one by one. A plain failover.
 *   P_RESTARTS      before the promotion P may crash and come back empty
 *                   (a new run id); its replica keeps its old data until
 *                   it resyncs, which empties it too (a later replicate).
 *                   With WAIT_ADMIT: fails (the double fault below: the
 *                   data is lost while A is cut off from R for R's whole
 *                   wait); with P_DOWN: holds.
 *   FLIP            after the promotion a tracker may also move back from
 *                   R to P, any number of times (a Service routing each
 *                   connection to either primary labelled master).
 *   EARLY_END       the early end of a promoted replica's recovery wait
 *                   (PROTOCOL.md, "Ending the wait early"): when R makes
 *                   its epoch over the data it received from P, and that
 *                   data holds an epoch whose wait was over (dset), the
 *                   wait may also end as soon as every instance of the set
 *                   R holds at that moment (S, the instances zset) has
 *                   heartbeated in R's epoch, without the time order
 *                   wait_over asks. With WAIT_ADMIT: holds.
 * Broken variants of the early end, each must fail:
 *   EARLY_END without WAIT_ADMIT   grants (and so joins) R may not have.
 *   MIXED_WAIT      with WAIT_ADMIT, but tracker 1 does not wait for the
 *                   replica (a fleet whose trackers disagree).
 *   EARLY_UNSETTLED the early end also when the epoch in R's data was
 *                   still in its own wait (its re-publications are not
 *                   acknowledged): with P_DOWN, P_RESTARTS.
 *   EARLY_MISS      the set S misses instance 0.
 *   EARLY_RESTART   without REPLICA: the early end applied to an epoch made
 *                   over data restored from disk (RDB/AOF), as a check of
 *                   master_replid2 alone would (Redis 7 keeps a restarted
 *                   primary's old replication id as master_replid2).
 *   Without P_RESTARTS, P does not restart or lose data under REPLICA (one
 *   failover, the fault under study; the restarts are checked without
 *   REPLICA), and LEASES, REAP and WAIT_FIX are not combined with it.
 *
 * The model is one process whose steps are the tracker operations, the
 * Redis faults and the passing of time, interleaved in every order. Each
 * step is one d_step: a script is atomic in Redis, and a tracker operation
 * is atomic under the fleet's lock or gate. Where a step has several
 * outcomes (the reply is read, lost after the script ran, the call runs
 * later, never), each outcome is a step of its own.
 *
 * Abstractions. Each lets the model do at least what the real system can
 * (sound for safety), except the bounds of the small instance and the
 * exclusions PROTOCOL.md documents, listed last.
 * - Time: no clock. A lease ends, a recovery wait ends, at any moment,
 *   subject only to the orderings that the protocol's argument derives
 *   from monotonic clocks and Redis' TIME (see "time passes" below). Any
 *   real timing is one of these interleavings.
 * - Epoch and run ids are only compared. Within the life of one Redis
 *   process the epoch changes at most once (created when missing or made
 *   by another process), and a call never outlives the Redis process it
 *   was sent to (its connection dies with it). So "instance i's epoch is
 *   the current one, made by the running process" is one bit, kv[i], and
 *   whether an admit or release passes the fence is known when it is sent.
 * - Snapshots: one saved copy of Redis' state (RDB, AOF or a replica),
 *   which "save" overwrites at any moment; a restart may restore it (so any
 *   earlier state, any number of times), always under a new run id.
 * - Late calls: a call whose reply the tracker gave up may still run later
 *   (an orphan); at most one per instance at a time (a bound). A restarted
 *   tracker's orphans still run.
 * - Seq numbers (release.lua, sync.lua) by their effect: once a later
 *   heartbeat or the leave of the instance ran, its orphan is stale and
 *   does nothing (dropped). Releases do not move Redis' seq: a release
 *   that ran leaves the orphans as they are. A batch (several admissions
 *   or releases in one script, PROTOCOL.md "Batches") is those steps one
 *   after the other with nothing between: fewer interleavings.
 * - A restarted tracker keeps held (Envoy still carries the connections;
 *   inherit and the access log tell the new run) and forgets ent, its
 *   epoch and its lease.
 * - Excluded, as documented in PROTOCOL.md: Redis losing its data while an
 *   instance holding connections is cut off for the whole recovery wait
 *   (the double fault, see wait_over); Envoy carrying connections its
 *   tracker let go (Adopt); the operator's --forget-instance; and, with
 *   REAP, a long partition (the trade-off G).
 */

#ifndef CAP
#define CAP 1
#endif
#ifdef RUN_UNVERIFIED
#define NO_RUNID
#endif
/* Instance leases in Redis. With keep they only make the admit script
 * refuse ('lease'), and leaving a refusal out only adds behaviours: the
 * fast configurations leave them out, -DLEASES (and REAP) put them in. */
#ifdef REAP_DEAD
#define REAP
#endif
#ifdef REAP
#define LEASES
#endif
#ifdef WRITE_FENCE
#define WRITE_LEASE
#define WAIT_ADMIT
#endif
#if defined(P_DOWN) && !defined(WRITE_LEASE)
#define WRITE_LEASE
#endif
#if defined(REPLICA) && (defined(LEASES) || defined(WAIT_FIX))
#error REPLICA is not combined with LEASES, REAP or WAIT_FIX
#endif
#if (defined(WRITE_LEASE) || defined(WAIT_ADMIT) || defined(P_DOWN) || defined(P_RESTARTS) || defined(EARLY_END)) && !defined(REPLICA)
#error WRITE_LEASE, WAIT_ADMIT, P_DOWN, P_RESTARTS and EARLY_END need REPLICA
#endif
#if (defined(MIXED_WAIT) || defined(EARLY_UNSETTLED) || defined(EARLY_MISS)) && !defined(EARLY_END)
#error MIXED_WAIT, EARLY_UNSETTLED and EARLY_MISS are variants of EARLY_END
#endif
#if defined(EARLY_RESTART) && (defined(REPLICA) || defined(LEASES) || defined(WAIT_FIX))
#error EARLY_RESTART is a variant of the model without REPLICA, LEASES or WAIT_FIX
#endif
#if defined(EARLY_END) || defined(EARLY_RESTART)
#define EARLY
#endif
#define N 2

/* Instance lease in Redis (the instances zset), judged by Redis' TIME. */
#define ABSENT  0
#define ALIVE   1
#define EXPIRED 2

/* A call in flight whose reply its tracker gave up (an orphan). */
#define NONE     0
#define OADMIT   1
#define ORELEASE 2
#define OSYNC    3

/* Replies of the admit script. */
#define R_GRANT   0
#define R_CAP     1
#define R_RECOVER 2
#define R_LEASE   3

/* ---- Redis ---- */
byte E[N];        /* inst:<id>: the slots entitled to each instance */
bool ep_ok;       /* the epoch exists and the running process made it */
bool rec;         /* its recovery wait (until) has not ended */
#ifdef LEASES
byte rl[N];       /* instance leases */
#ifdef REAP_DEAD
byte hl[N];       /* ghost: held[i] when i's local lease last ended */
#endif
bool rfree[N];    /* lease restored from old data: may end at any time */
#endif
/* ghosts, for the ordering constraints of time only */
bool synced[N];   /* instance i's heartbeat ran in the current epoch */
bool pre[N];      /* i's local lease was granted before the current epoch
                     was made, and still runs */

/* i:<id> in the epoch hash is the seq of tracker i's base: its last
 * acknowledged heartbeat (PROTOCOL.md, "Delta heartbeats"). Unbounded seqs
 * by their effect: set when that heartbeat ran, cleared by whatever else
 * sets or removes i:<id> (another heartbeat of i that ran, a new epoch, a
 * reap, a leave). */
bool ib[N];

/* ---- the saved snapshot ---- */
bool has_snap;
byte sE[N];
#ifdef NO_RUNID
bool snap_cur;    /* it was saved in the current epoch */
bool sib[N];      /* its ib (read only with snap_cur) */
#endif

#ifdef EARLY
/* ---- the early end of a recovery wait ----
 * mem and dset are part of the data (they replicate, are saved and
 * restored with E; smem and sdset are the copy in sE's place). */
bool mem[N];      /* i is a member of the instances zset */
bool dset;        /* the data's epoch had its wait over (confirmed = 1) */
bool smem[N];
bool sdset;
bool early;       /* the current epoch's wait may end early ... */
bool S[N];        /* ... once these instances heartbeated in it */
#ifdef REPLICA
bool rearly;      /* R's early and S (while not swapped in) */
bool rS[N];
#endif
#endif

#ifdef REPLICA
/* ---- replication ----
 * Before the promotion, sE is the replica's data (a lagging copy of E).
 * After it, R is a primary of its own: sE and the variables below are its
 * state. A step on R swaps R's state into E, ep_ok, rec, synced and pre,
 * runs, and swaps it back (to_proc), so the scripts are written once. */
bool promoted;
byte side[N];     /* the primary tracker i talks to: 0 P, 1 R (promoted) */
byte oside[N];    /* the primary its orphan was sent to */
bool rep_ok;      /* R's ep_ok, rec, synced, pre, ib (while not swapped in) */
bool rib[N];
bool rrec;
bool rsynced[N];
bool rpre[N];
#ifdef WRITE_LEASE
bool pfenced;     /* P refuses writes: it lost its replica for longer
                     than min-replicas-max-lag */
#endif
byte cur;         /* scratch: whose state is in E, ep_ok, ... (0 between steps) */
byte tmp;
#endif

/* ---- orphans ---- */
byte okind[N];
byte oh[N];       /* the held a late heartbeat publishes */
bool odl[N];      /* ... as a delta */
bool osk[N];      /* ... that sends no count (nothing moved) */
bool oold[N];     /* sent by a previous run of the tracker (SEQ_RESEED) */

/* ---- trackers ---- */
byte held[N];     /* its live connections: what its Envoy carries */
byte ent[N];      /* the entitlement it relies on */
bool kv[N];       /* its epoch is Redis' current one */
bool deg[N];      /* degraded: its last heartbeat failed */
bool valid[N];    /* its local lease (monotonic clock) runs */
/* the delta heartbeat: dl, the last heartbeat was acknowledged and no
 * call of unknown outcome (admit, release or heartbeat) came since (the
 * code's fleet.delta); mv, held moved since the last heartbeat took its
 * snapshot (the code's fleet.moved: an admission, a connection's end) */
bool dl[N];
bool mv[N];
#ifdef WAIT_FIX
bool tw[N];       /* its own wait, since it learnt the epoch, runs */
bool ow[N];       /* its own wait for the current epoch is over */
bool conf;        /* Redis: a tracker confirmed the epoch's wait is over */
#endif
#ifdef BROKEN
byte vload[N];    /* its view at its last heartbeat: the pod's load */
byte vmine[N];    /* ... and its own count in it */
#endif

/* scratch (zeroed after every step): an admit script's reply, and kv
 * before a heartbeat */
byte res;
bool kvb;
bool skb;         /* a delta's: it sends no count */

#define CAP_OK (held[0] + held[1] <= CAP)

#ifdef REPLICA
/* Tracker k is cut off from primary pr: it talks to the other one. With
 * P_DOWN nobody is cut off from R: a tracker still on P (dead) reaches R
 * as soon as its client follows the new primary, within a heartbeat
 * interval; one that does not for a whole wait is the double fault
 * excluded above. */
#ifndef P_DOWN
#define CUT(k, pr) (side[k] != (pr))
#else
#define CUT(k, pr) ((pr) == 0 && side[k] != 0)
#endif
#define SIDE(i) side[i]
#define OSIDE(i) oside[i]
#define OSIDE_IS(i, pr) (oside[i] == (pr))
#define SET_OSIDE(i) oside[i] = side[i]
#define CLEAR_PRE(i) pre[i] = false; rpre[i] = false
#define CLEAR_RIB(i) rib[i] = false
#define RIB(i) rib[i]
/* i's heartbeat to primary pr ran and was acknowledged: i:<id> there is
 * its new base; the other primary's i:<id> is not */
#define SET_BASE(i, pr) if :: (pr) == 0 -> ib[i] = true; rib[i] = false :: else -> ib[i] = false; rib[i] = true fi
/* a heartbeat of i that the tracker did not learn the outcome of ran on
 * pr: i:<id> there is its seq, not the base */
#define LOST_BASE(i, pr) if :: (pr) == 0 -> ib[i] = false :: else -> rib[i] = false fi
/* With WAIT_ADMIT, P can have a grant acknowledged by its replica only
 * until the promotion (then R no longer replicates from it). */
#define ACKABLE(i) (side[i] == 1 || !promoted)
#ifdef WRITE_LEASE
#define WRITABLE(pr) ((pr) != 0 || !pfenced)
#else
#define WRITABLE(pr) 1
#endif
/* Swap R's state with the one in E, ep_ok, rec, synced, pre. */
inline swap_procs() {
  tmp = E[0]; E[0] = sE[0]; sE[0] = tmp;
  tmp = E[1]; E[1] = sE[1]; sE[1] = tmp;
  tmp = ep_ok; ep_ok = rep_ok; rep_ok = tmp;
  tmp = rec; rec = rrec; rrec = tmp;
  tmp = synced[0]; synced[0] = rsynced[0]; rsynced[0] = tmp;
  tmp = synced[1]; synced[1] = rsynced[1]; rsynced[1] = tmp;
  tmp = pre[0]; pre[0] = rpre[0]; rpre[0] = tmp;
  tmp = pre[1]; pre[1] = rpre[1]; rpre[1] = tmp;
  tmp = ib[0]; ib[0] = rib[0]; rib[0] = tmp;
  tmp = ib[1]; ib[1] = rib[1]; rib[1] = tmp;
#ifdef EARLY
  tmp = mem[0]; mem[0] = smem[0]; smem[0] = tmp;
  tmp = mem[1]; mem[1] = smem[1]; smem[1] = tmp;
  tmp = dset; dset = sdset; sdset = tmp;
  tmp = early; early = rearly; rearly = tmp;
  tmp = S[0]; S[0] = rS[0]; rS[0] = tmp;
  tmp = S[1]; S[1] = rS[1]; rS[1] = tmp;
#endif
  tmp = 0
}
/* Put primary pr's state in E, ep_ok, ... (0: P, 1: R) */
inline to_proc(pr) {
  if :: (pr) != cur -> swap_procs(); cur = 1 - cur :: else -> skip fi
}
#else
#define CUT(k, pr) 0
#define SIDE(i) 0
#define OSIDE(i) 0
#define OSIDE_IS(i, pr) 1
#define SET_OSIDE(i) skip
#define CLEAR_PRE(i) pre[i] = false
#define CLEAR_RIB(i) skip
#define RIB(i) false
#define SET_BASE(i, pr) ib[i] = true
#define LOST_BASE(i, pr) ib[i] = false
#define WRITABLE(pr) 1
#define to_proc(pr) skip
#endif
/* With WAIT_ADMIT an admission's reply is read only once the replica
 * acknowledged it: the replica then has every effect up to it (in
 * order), so it holds P's state of this moment. */
#ifdef EARLY
#define COPY_EARLY smem[0] = mem[0]; smem[1] = mem[1]; sdset = dset
#define EARLY_DIFFERS (smem[0] != mem[0] || smem[1] != mem[1] || sdset != dset)
#else
#define COPY_EARLY skip
#define EARLY_DIFFERS 0
#endif
/* the replica (or the snapshot) now holds this state of P's data */
#define COPY_DATA sE[0] = E[0]; sE[1] = E[1]; COPY_EARLY
#ifdef WAIT_ADMIT
#ifndef MIXED_WAIT
#define ADMIT_ACKED(i) ACKABLE(i)
inline ack(i) {
  if :: side[i] == 0 -> COPY_DATA :: else -> skip fi
}
#else
/* MIXED_WAIT: tracker 1 does not wait for the replica */
#define ADMIT_ACKED(i) ((i) == 1 || ACKABLE(i))
inline ack(i) {
  if :: (i) == 0 && side[i] == 0 -> COPY_DATA :: else -> skip fi
}
#endif
#else
#define ADMIT_ACKED(i) 1
#define ack(i) skip
#endif

/* The end of a recovery wait is at least an instance TTL (of Redis' clock,
 * or with WAIT_FIX of the tracker's) after the epoch was made, so every
 * local lease granted before that has run out (pre). And (environment
 * assumption: no double fault) every instance holding connections has
 * heartbeated in the epoch by then (the heartbeat interval is shorter than
 * the lease), unless it is cut off for the whole wait. */
#define WAIT_OVER(P_, S_, pr) ((CUT(0, pr) || (!P_[0] && (S_[0] || held[0] == 0))) && (CUT(1, pr) || (!P_[1] && (S_[1] || held[1] == 0))))
#define wait_over WAIT_OVER(pre, synced, 0)


/* After every step: (Cap), then zero what can no longer matter, so that
 * states that differ only in it are one state. */
inline norm() {
  assert(CAP_OK);
  /* the delta's state is read only while a delta may follow: mv while
   * dl (the heartbeat that sets dl clears it), odl and osk with their late
   * heartbeat, ib while dl or a late delta may still read it */
  if :: !dl[0] -> mv[0] = false :: else -> skip fi;
  if :: !dl[1] -> mv[1] = false :: else -> skip fi;
  if :: okind[0] != OSYNC -> odl[0] = false; osk[0] = false :: else -> skip fi;
  if :: okind[1] != OSYNC -> odl[1] = false; osk[1] = false :: else -> skip fi;
  if :: !dl[0] && !odl[0] -> ib[0] = false; CLEAR_RIB(0) :: else -> skip fi;
  if :: !dl[1] && !odl[1] -> ib[1] = false; CLEAR_RIB(1) :: else -> skip fi;
  /* without its base in Redis, a delta is refused whatever it sends (and
   * only the heartbeat that sets ib clears mv) */
#ifndef DELTA_NO_BASE
  if :: !ib[0] && !RIB(0) -> mv[0] = false :: else -> skip fi;
  if :: !ib[1] && !RIB(1) -> mv[1] = false :: else -> skip fi;
#endif
  /* ent is read only while the local lease runs, and the heartbeat that
   * grants a lease overwrites it */
  if :: !valid[0] -> ent[0] = 0 :: else -> skip fi;
  if :: !valid[1] -> ent[1] = 0 :: else -> skip fi;
#ifdef BROKEN
  if :: !valid[0] -> vload[0] = 0; vmine[0] = 0 :: else -> skip fi;
  if :: !valid[1] -> vload[1] = 0; vmine[1] = 0 :: else -> skip fi;
#endif
#ifdef WAIT_FIX
  /* the heartbeat that learns the current epoch starts a new own wait */
  if :: !kv[0] -> tw[0] = false; ow[0] = false :: else -> skip fi;
  if :: !kv[1] -> tw[1] = false; ow[1] = false :: else -> skip fi;
#endif
#ifndef WAIT_FIX
  /* synced and pre are read only when the recovery wait ends; making an
   * epoch (the only start of a wait) sets them afresh. (With WAIT_FIX a
   * tracker's own wait may start later in the same epoch: kept.) */
  if :: !rec -> synced[0] = false; synced[1] = false; pre[0] = false; pre[1] = false
     :: else -> skip fi;
#endif
#ifdef LEASES
  if :: rl[0] != ALIVE -> rfree[0] = false :: else -> skip fi;
  if :: rl[1] != ALIVE -> rfree[1] = false :: else -> skip fi;
#endif
#ifndef SEQ_RESEED
  oold[0] = false; oold[1] = false;
#endif
#ifdef REPLICA
  if :: !rrec -> rsynced[0] = false; rsynced[1] = false; rpre[0] = false; rpre[1] = false
     :: else -> skip fi;
  if :: okind[0] == NONE -> oside[0] = 0 :: else -> skip fi;
  if :: okind[1] == NONE -> oside[1] = 0 :: else -> skip fi;
  assert(cur == 0);
#endif
#ifdef EARLY
  /* early and S are read only while their epoch waits */
  if :: !rec -> early = false; S[0] = false; S[1] = false :: else -> skip fi;
#ifdef REPLICA
  if :: !rrec -> rearly = false; rS[0] = false; rS[1] = false :: else -> skip fi;
  /* one failover: after it P's data is never copied or read for an early
   * end, nor R's once R made its epoch (R never restarts) */
  if :: promoted -> mem[0] = false; mem[1] = false; dset = false :: else -> skip fi;
  if :: promoted && rep_ok -> smem[0] = false; smem[1] = false; sdset = false :: else -> skip fi;
#endif
#endif
  res = 0; kvb = false; skb = false
}

/* A heartbeat or leave of instance i ran in Redis under a later seq than
 * i's orphan: the orphan is stale, it will do nothing. */
inline newer_call_ran(i, pr) {
#if defined(NO_SEQ)
  if :: okind[i] == OSYNC && OSIDE_IS(i, pr) -> okind[i] = NONE; oh[i] = 0 :: else -> skip fi
#elif defined(SEQ_RESEED)
  /* an orphan of the previous run may carry a higher seq */
  if :: (okind[i] == OSYNC || okind[i] == ORELEASE) && !oold[i] -> okind[i] = NONE; oh[i] = 0
     :: else -> skip fi
#else
  /* (with REPLICA, only in the primary it was sent to: seq is per primary) */
  if :: (okind[i] == OSYNC || okind[i] == ORELEASE) && OSIDE_IS(i, pr) -> okind[i] = NONE; oh[i] = 0
     :: else -> skip fi
#endif
}

/* ==== the Redis scripts, each atomic in Redis ==== */

#ifndef WAIT_FIX
#define NOT_RECOVERING (!rec)
#else
#define NOT_RECOVERING (!rec && conf)
#endif
/* admit.lua, for a call that passed the fence (its epoch id is the
 * current one and the current one's run is the running process). */
inline admit_script(i, pr) {
  to_proc(pr);
  if
  :: !WRITABLE(pr) -> res = R_CAP      /* NOREPLICAS: refused, nothing done */
  :: else ->
  if
#ifndef WAIT_FIX
  :: rec -> res = R_RECOVER                            /* 'recovering' */
#else
  :: rec || !conf -> res = R_RECOVER     /* 'recovering', or unconfirmed */
#endif
#ifdef LEASES
  /* 'lease': i was reaped or left (its i:<id> is gone from the epoch),
   * not "its lease ended": the script reads no clock (PROTOCOL.md, "One
   * read for the fence") */
  :: NOT_RECOVERING && rl[i] == ABSENT -> res = R_LEASE
  :: NOT_RECOVERING && rl[i] != ABSENT && E[0] + E[1] < CAP -> E[i]++; res = R_GRANT
#else
  :: NOT_RECOVERING && E[0] + E[1] < CAP -> E[i]++; res = R_GRANT
#endif
  :: else -> res = R_CAP                               /* 'capacity' */
  fi
  fi;
  to_proc(0)
}

/* release.lua, for a call that passed the fence and is not stale: only
 * what the instance holds is released. */
inline release_script(i, pr) {
  to_proc(pr);
  if :: WRITABLE(pr) && E[i] > 0 -> E[i]-- :: else -> skip fi;
  to_proc(0)
}

#ifdef EARLY
/* R's first epoch (with REPLICA, P makes an epoch only over empty data:
 * pr == 1 is the promoted replica), over data whose epoch had its wait
 * over (EARLY_UNSETTLED: whatever the data) */
#if defined(EARLY_UNSETTLED)
#define EARLY_OK(pr) ((pr) == 1)
#elif defined(EARLY_END)
#define EARLY_OK(pr) ((pr) == 1 && dset)
#else
#define EARLY_OK(pr) dset
#endif
#ifdef EARLY_MISS
#define EARLY_S0 false
#else
#define EARLY_S0 mem[0]
#endif
/* every instance of S heartbeated in the epoch */
#define EARLY_DONE(e_, S_, syn) (e_ && (!S_[0] || syn[0]) && (!S_[1] || syn[1]))
#endif

/* sync.lua's outcome, in res: */
#define S_NONE 0      /* refused by the replica guard: nothing done */
#define S_RAN  1      /* it ran */
#define S_FULL 2      /* a delta whose base is not i:<id>: nothing done
                         to the counts, i:<id>, seq or the lease
                         ('need_full'); only a new epoch may have been made */
#ifndef DELTA_NO_BASE
#define BASE_OK(i) ib[i]
#else
#define BASE_OK(i) true
#endif

/* sync.lua, publishing held h; d: a delta, applied only on its base; sk:
 * (a delta) that sends no count, leaving E_i as it is. */
inline sync_script(i, h, d, sk, pr) {
  to_proc(pr);
  if
  :: !WRITABLE(pr) -> res = S_NONE  /* NOREPLICAS: refused, nothing done */
  :: else ->
  if
  :: !ep_ok ->
     /* no epoch, or one another process made (old data): a new epoch
      * and its recovery wait. Nobody knows it yet; the local leases that
      * run now were granted before it was made. */
     ep_ok = true; rec = true;
#ifdef WAIT_FIX
     conf = false;
#endif
     /* (with REPLICA: of the trackers that talk to this primary) */
     if :: !CUT(0, pr) -> kv[0] = false :: else -> skip fi;
     if :: !CUT(1, pr) -> kv[1] = false :: else -> skip fi;
     synced[0] = false; synced[1] = false;
     /* (with REPLICA, of every tracker: a lease granted before the epoch
      * was made has ended when its wait ends, whichever primary granted
      * it; wait_over asks it only of the trackers that reach this one) */
     pre[0] = valid[0]; pre[1] = valid[1];
#ifdef NO_RUNID
     snap_cur = false;
#endif
#ifdef EARLY
     /* The early end (PROTOCOL.md, "Ending the wait early"): only over
      * data whose epoch had its wait over. With REPLICA, P never makes
      * an epoch over such data (it starts empty and restarts only empty),
      * so this is R's first epoch after its promotion; without it, a
      * restart from disk (EARLY_RESTART only: the code does not). S is
      * the instances zset as the data holds it. */
     if
     :: EARLY_OK(pr) -> early = true; S[0] = EARLY_S0; S[1] = mem[1]
     :: else -> early = false; S[0] = false; S[1] = false
     fi;
     dset = false;
#endif
     /* the new epoch hash holds no i:<id> */
     ib[0] = false; ib[1] = false
  :: else -> skip
  fi;
  if
  :: d && !BASE_OK(i) -> res = S_FULL
  :: else ->
  if
  :: !sk -> E[i] = h                  /* E_i becomes the truth */
  :: else -> skip                     /* a delta that sends nothing: E_i
                                         is what its base left */
  fi;
#ifdef EARLY
  mem[i] = true;                      /* ZADD instances */
#endif
#ifdef LEASES
  rl[i] = ALIVE; rfree[i] = false;    /* the lease, by Redis' clock */
#endif
  synced[i] = true;
  res = S_RAN
  fi
  fi;
  to_proc(0)
}

/* ==== tracker operations (instance i) ==== */

/* deg (degraded): the last heartbeat failed. Then the tracker admits
 * nothing through Redis until a heartbeat succeeds; no admission can be
 * in flight across a heartbeat, which takes the whole gate. The real
 * tracker also stops using Redis after a failed admit or release, until
 * its next heartbeat; the model leaves that out (more behaviours), which
 * also covers calls sent before such a failure and answered after it. */
#ifndef ADMIT_PAST_LEASE
/* ... and only while its local lease runs (redisUsableLocked), since the
 * admit script refuses a reaped instance, not an expired one */
#define CAN_ADMIT_REDIS(i) (!deg[i] && kv[i] && valid[i])
#else
#define CAN_ADMIT_REDIS(i) (!deg[i] && kv[i])
#endif

/* Admit through Redis, reply read. With a stale epoch the script refuses
 * ('epoch') and nothing changes, so only a known epoch is modelled. The
 * tracker counts the connection in held and ent when it reads the grant. */
inline admit_read(i) {
  CAN_ADMIT_REDIS(i) && ADMIT_ACKED(i) ->
  admit_script(i, SIDE(i)); ack(i);
  if
  :: res == R_GRANT -> ent[i]++; held[i]++; mv[i] = true
  :: res == R_LEASE && ent[i] > held[i] ->
     ent[i] = held[i]    /* it may have been reaped: only held is its own */
  :: else -> skip
  fi
}
/* ... the script ran, the reply is lost: Redis counts a slot the tracker
 * does not (safe; its next heartbeat corrects it) */
inline admit_lost(i) { CAN_ADMIT_REDIS(i) -> admit_script(i, SIDE(i)); dl[i] = false }
/* ... it runs later (or never: no change, left out) */
inline admit_late(i) { CAN_ADMIT_REDIS(i) && okind[i] == NONE -> okind[i] = OADMIT; SET_OSIDE(i); dl[i] = false }

/* Fallback admit: whenever Redis did not decide (degraded, fenced,
 * recovering, gate busy, an error): modelled as allowed at any time. */
#ifndef BROKEN
/* share: only into ent - held, slots Redis counts for this instance, and
 * only while its local lease runs. */
inline fallback_admit(i) { valid[i] && held[i] < ent[i] -> held[i]++; mv[i] = true }
#else
/* the previous share fallback (headroomShare, rank i, the remainder to
 * rank 0): what it held at its last heartbeat plus its part of the
 * headroom it saw then, and at most its part of the cap; no entitlement;
 * within its lease, while Redis is unreachable (degraded). */
#define PART(h, r) ((h) <= 0 -> 0 : (h) / N + ((r) == 0 && (h) % N == 1 -> 1 : 0))
inline fallback_admit(i) {
  deg[i] && valid[i] && held[i] < vmine[i] + PART(CAP - vload[i], i) && held[i] < PART(CAP, i) ->
  held[i]++; mv[i] = true
}
#endif

/* Release without a script: while degraded (or without the gate in time)
 * only the local truth changes; ent is kept: the slot stays entitled to
 * it in Redis and its fallback may reuse it. */
inline release_local(i) { held[i] > 0 -> held[i]--; mv[i] = true }

/* Release through Redis: held and ent are lowered before the script is
 * sent (a lost reply is taken as applied). Modelled even while degraded
 * (more behaviours). */
inline lower_both(i) {
  held[i]--; mv[i] = true;
  if :: ent[i] > 0 -> ent[i]-- :: else -> skip fi
}
/* ... it ran (the reply, read or lost, changes nothing locally) */
inline release_ran(i) { held[i] > 0 && kv[i] -> lower_both(i); release_script(i, SIDE(i)) }
/* ... it runs later (its outcome unknown: the next heartbeat is full) */
inline release_late(i) { held[i] > 0 && kv[i] && okind[i] == NONE -> lower_both(i); okind[i] = ORELEASE; SET_OSIDE(i); dl[i] = false }
/* ... it never runs, or it was fenced ('epoch': nothing done) */
inline release_failed(i) { held[i] > 0 -> lower_both(i); dl[i] = false }

/* Release of a spare slot (PROTOCOL.md, "Reuse"): the connection ended
 * earlier (release_local: held lowered, ent kept), its slot stayed in
 * ent - held while the release was queued, where an admission may have
 * reused it (fallback_admit). One that was not reused is sent now: ent is
 * lowered as the release leaves the queue, then the script. SPARE_KEPT:
 * ent is not lowered (must fail: the slot is reused after Redis freed it). */
#ifndef SPARE_KEPT
#define LOWER_SPARE(i) ent[i]--
#else
#define LOWER_SPARE(i) skip
#endif
inline release_spare_ran(i) { ent[i] > held[i] && kv[i] -> LOWER_SPARE(i); release_script(i, SIDE(i)) }
inline release_spare_late(i) { ent[i] > held[i] && kv[i] && okind[i] == NONE -> LOWER_SPARE(i); okind[i] = ORELEASE; SET_OSIDE(i); dl[i] = false }
inline release_spare_failed(i) { ent[i] > held[i] -> LOWER_SPARE(i); dl[i] = false }

/* Heartbeat (sync), under the gate: no admission or release of this
 * instance between its script and its local record, so the round trip
 * is one step. First ent is lowered to the held it publishes. */
inline lower_ent(i) {
#ifndef NO_LOWER
  if :: ent[i] > held[i] -> ent[i] = held[i] :: else -> skip fi
#else
  skip
#endif
}
/* a heartbeat that fails makes the tracker degraded: no admission
 * through Redis until a heartbeat succeeds */
#ifndef SYNC_NO_DEGRADE
#define SYNC_FAILED(i) deg[i] = true
#else
#define SYNC_FAILED(i) skip
#endif
/* The delta (PROTOCOL.md, "Delta heartbeats"), allowed when the last
 * heartbeat was acknowledged and nothing of unknown outcome came since
 * (dl). It sends the count (absolute, as a full one) unless nothing moved
 * since that heartbeat's snapshot (SKIPS: held is still what it sent).
 * Each heartbeat step below comes as a full one (allowed at any time) and,
 * when dl, as a delta. */
#define SKIPS(i) (!mv[i])
/* the heartbeat took its snapshot: what moves from now on is in the next */
#define SNAPSHOT(i) lower_ent(i); mv[i] = false
/* its outcome is unknown: the next heartbeat is full */
#define UNKNOWN(i) SYNC_FAILED(i); dl[i] = false

/* ... reply read: the epoch, a lease from the moment it was sent, and
 * ent = held (Redis counts exactly that for it now). A delta whose base
 * Redis no longer holds changed nothing ('need_full'): the tracker sends
 * a full one at once, a step of its own with any outcome (more behaviours
 * than the code, where it holds the gate meanwhile). */
inline sync_read_as(i, d) {
  kvb = kv[i];
  skb = d && SKIPS(i);
  SNAPSHOT(i);
  sync_script(i, held[i], d, skb, SIDE(i));
  if
  :: res == S_FULL -> dl[i] = false
  :: else ->
  newer_call_ran(i, SIDE(i));
  kv[i] = true; valid[i] = true; CLEAR_PRE(i); deg[i] = false;
  ent[i] = held[i];
  dl[i] = true; SET_BASE(i, SIDE(i));
#ifdef WAIT_FIX
  if :: !kvb -> tw[i] = true :: else -> skip fi;
#endif
#ifdef BROKEN
  vload[i] = E[0] + E[1]; vmine[i] = held[i];
#endif
  skip
  fi
}
inline sync_read(i) { WRITABLE(SIDE(i)) -> sync_read_as(i, false) }   /* refused (NOREPLICAS): sync_failed */
inline sync_delta_read(i) { dl[i] && WRITABLE(SIDE(i)) -> sync_read_as(i, true) }
/* ... the script ran, the reply is lost: no lease, no epoch learnt */
inline sync_lost_as(i, d) {
  skb = d && SKIPS(i); SNAPSHOT(i); sync_script(i, held[i], d, skb, SIDE(i));
  if :: res == S_RAN -> newer_call_ran(i, SIDE(i)); LOST_BASE(i, SIDE(i)) :: else -> skip fi;
  UNKNOWN(i)
}
inline sync_lost(i) { WRITABLE(SIDE(i)) -> sync_lost_as(i, false) }
inline sync_delta_lost(i) { dl[i] && WRITABLE(SIDE(i)) -> sync_lost_as(i, true) }
/* ... it runs later, or never */
inline sync_late(i) { okind[i] == NONE -> SNAPSHOT(i); okind[i] = OSYNC; oh[i] = held[i]; odl[i] = false; osk[i] = false; SET_OSIDE(i); UNKNOWN(i) }
inline sync_delta_late(i) { okind[i] == NONE && dl[i] -> osk[i] = SKIPS(i); SNAPSHOT(i); okind[i] = OSYNC; oh[i] = held[i]; odl[i] = true; SET_OSIDE(i); UNKNOWN(i) }
/* (a delta that fails changes what a full one that fails does) */
inline sync_failed(i) { SNAPSHOT(i); UNKNOWN(i) }

/* Tracker killed and restarted: Envoy keeps the connections (held); the
 * new run has no entitlement, epoch or lease. The old run's orphan may
 * still run. */
inline tracker_restart(i) {
  ent[i] = 0; kv[i] = false; valid[i] = false; CLEAR_PRE(i); deg[i] = false; dl[i] = false;
#ifdef REAP_DEAD
  hl[i] = held[i];
#endif
#ifdef WAIT_FIX
  tw[i] = false; ow[i] = false;
#endif
  if :: okind[i] != NONE -> oold[i] = true :: else -> skip fi
}

/* Leave (drain.go, leave.lua): the instance holds nothing (every
 * connection of its Envoy ended, or Envoy is gone: release_local) and
 * removes itself from Redis, E_i = 0. The leave's seq is above every
 * earlier call of the instance and stays in Redis, so its orphans are
 * stale. It keeps no epoch, lease or entitlement: what it does next is
 * what a new run does. LEAVE_EARLY: it leaves while its Envoy still
 * carries connections (must fail). */
inline leave(i) {
#ifndef LEAVE_EARLY
  held[i] == 0 && WRITABLE(SIDE(i)) ->
#else
  WRITABLE(SIDE(i)) ->
#endif
#ifdef EARLY
  to_proc(SIDE(i)); E[i] = 0; mem[i] = false; ib[i] = false; to_proc(0); newer_call_ran(i, SIDE(i));
#else
  to_proc(SIDE(i)); E[i] = 0; ib[i] = false; to_proc(0); newer_call_ran(i, SIDE(i));
#endif
#ifdef LEASES
  rl[i] = ABSENT; rfree[i] = false;
#endif
  ent[i] = 0; kv[i] = false; valid[i] = false; CLEAR_PRE(i); deg[i] = false; dl[i] = false
}

/* ==== Redis faults, late calls, reaping ==== */

inline drop_orphans() {
  okind[0] = NONE; okind[1] = NONE; oh[0] = 0; oh[1] = 0;
  oold[0] = false; oold[1] = false
}
inline new_process() {
  /* another run id: every epoch in the data is now another process' */
  ep_ok = false; rec = false;
#ifdef WAIT_FIX
  conf = false;
#endif
  kv[0] = false; kv[1] = false;
  synced[0] = false; synced[1] = false;
  ib[0] = false; ib[1] = false;   /* (the next heartbeat makes an epoch) */
  drop_orphans()   /* calls in flight die with the process' connections */
}

/* crash, restart empty */
inline redis_restart_empty() {
  E[0] = 0; E[1] = 0;
#ifdef EARLY
  mem[0] = false; mem[1] = false; dset = false;
#endif
#ifdef LEASES
  rl[0] = ABSENT; rl[1] = ABSENT; rfree[0] = false; rfree[1] = false;
#endif
#ifdef NO_RUNID
  snap_cur = false;
#endif
  new_process()
}

/* save: RDB/AOF (or a replica) now holds this state */
#ifndef NO_RUNID
#define SNAP_DIFFERS (!has_snap || sE[0] != E[0] || sE[1] != E[1] || EARLY_DIFFERS)
#else
#define SNAP_DIFFERS (!has_snap || sE[0] != E[0] || sE[1] != E[1] || snap_cur != ep_ok || sib[0] != ib[0] || sib[1] != ib[1] || EARLY_DIFFERS)
#endif
inline redis_save() {
  SNAP_DIFFERS ->
  has_snap = true;
  COPY_DATA;
#ifdef NO_RUNID
  snap_cur = ep_ok; sib[0] = ib[0]; sib[1] = ib[1];
#endif
  skip
}

/* restart from the snapshot: old data, a new run id */
inline redis_restart_old() {
  has_snap ->
  E[0] = sE[0]; E[1] = sE[1];
#ifdef EARLY
  mem[0] = smem[0]; mem[1] = smem[1]; dset = sdset;
#endif
#ifdef LEASES
  /* the leases it held then: alive or not, and they end whenever (their
   * ends are not ordered after the local leases since) */
  rl[0] = ALIVE; rl[1] = ALIVE; rfree[0] = true; rfree[1] = true;
#endif
#ifndef NO_RUNID
  new_process()
#else
  /* Fenced on the epoch id only: if the snapshot was saved in the current
   * epoch, its id reappears and nothing tells the data is old. (An older
   * snapshot is treated as fenced: fewer behaviours, enough to fail.) */
  if
  :: snap_cur -> ib[0] = sib[0]; ib[1] = sib[1]; drop_orphans()
  :: else -> new_process()
  fi
#endif
}

/* an orphan runs now (its reply goes nowhere) */
inline late_call_runs(j) {
  okind[j] != NONE ->
  if
  :: okind[j] == OADMIT -> admit_script(j, OSIDE(j))
  :: okind[j] == ORELEASE -> release_script(j, OSIDE(j))
  :: okind[j] == OSYNC ->
     sync_script(j, oh[j], odl[j], osk[j], OSIDE(j));
     if :: res == S_RAN -> LOST_BASE(j, OSIDE(j)) :: else -> skip fi
  fi;
  okind[j] = NONE; oh[j] = 0; odl[j] = false; osk[j] = false; oold[j] = false
}
/* an orphan never runs */
inline late_call_lost(j) { okind[j] != NONE -> okind[j] = NONE; oh[j] = 0; oold[j] = false }

#ifdef REAP
/* reap (a tracker's heartbeat or the scaler): the lease ended by Redis'
 * clock, and the reaper watched the instance's beats stand still for a
 * TTL of its own monotonic clock, so the instance's local lease has ended
 * too. Nothing tells a cut-off instance from a dead one. */
#ifndef REAP_DEAD
inline reap(j) { rl[j] == EXPIRED && !valid[j] -> E[j] = 0; rl[j] = ABSENT; ib[j] = false }
#else
/* ... of an instance that held nothing when its local lease ended: not
 * a cut-off one that holds connections (G) */
inline reap(j) { rl[j] == EXPIRED && !valid[j] && hl[j] == 0 -> E[j] = 0; rl[j] = ABSENT; ib[j] = false }
#endif
#endif

/* ==== time passes ==== */

/* a tracker's local lease ends (its monotonic clock, InstanceTTL after
 * its last successful heartbeat was sent): at any moment, since a reply
 * may come back too late to help */
#ifndef REAP_DEAD
inline local_lease_ends(i) { valid[i] -> valid[i] = false; CLEAR_PRE(i) }
#else
inline local_lease_ends(i) { valid[i] -> valid[i] = false; CLEAR_PRE(i); hl[i] = held[i] }
#endif

/* an instance lease ends in Redis. Redis stamped it after the tracker sent
 * the heartbeat of its latest local lease, so it ends after that one,
 * unless it was restored from old data (or Redis' clock stepped). */
#ifdef LEASES
#ifndef RCLOCK_STEPS
inline redis_lease_ends(i) { rl[i] == ALIVE && (!valid[i] || rfree[i]) -> rl[i] = EXPIRED }
#else
inline redis_lease_ends(i) { rl[i] == ALIVE -> rl[i] = EXPIRED }
#endif
#endif

/* the epoch's recovery wait ends (until = made + TTL, Redis' clock) */
#ifndef RCLOCK_STEPS
#ifndef EARLY
inline recovery_wait_ends() { rec && wait_over -> rec = false }
#else
/* (or early: every instance of S heartbeated in the epoch) */
inline recovery_wait_ends() { rec && (wait_over || EARLY_DONE(early, S, synced)) -> rec = false; dset = true }
#endif
#else
/* a forward step of Redis' clock may end it at any moment */
inline recovery_wait_ends() { rec -> rec = false }
#endif

#ifdef WAIT_FIX
/* WAIT_FIX: a tracker's own wait, a TTL of its monotonic clock from the
 * reply in which it learnt the epoch, so it ends after made + TTL */
inline own_wait_ends(i) { tw[i] && wait_over -> tw[i] = false; ow[i] = true }

/* WAIT_FIX: a tracker whose own wait is over tells Redis (a call that is
 * idempotent: lost or late, it changes nothing or the same) */
inline confirm_epoch(i) { ow[i] && !conf -> conf = true }
#endif

#ifdef REPLICA
/* ==== replication and failover ==== */

/* the replica receives P's effects up to now (in order: it then holds
 * P's state of this moment); it may lag any number of steps */
inline replicate() {
  !promoted && (sE[0] != E[0] || sE[1] != E[1] || EARLY_DIFFERS) -> COPY_DATA
}
/* R is promoted (Sentinel, an operator, a Service following the role),
 * with what it has: a primary with its own run id, so the epoch in its
 * data is another process' (rep_ok false). P keeps serving. */
#ifndef P_DOWN
inline promote() { !promoted -> promoted = true; rep_ok = false; rrec = false }
#else
inline promote() { !promoted -> promoted = true; rep_ok = false; rrec = false; pfenced = true }
#endif
#ifdef P_RESTARTS
/* P crashes and comes back empty before the promotion (a new run id; its
 * replica keeps its old data until it resyncs: a later replicate) */
inline p_restart_empty() { !promoted -> redis_restart_empty() }
#endif
/* tracker i talks to R from now on (its client followed the new primary;
 * its calls to P failed or are orphans). Its epoch id is P's: fenced. */
inline move_to_r(i) { promoted && side[i] == 0 -> side[i] = 1; kv[i] = false }
#ifdef FLIP
/* ... or back to P (a Service that routes each connection to either
 * primary labelled master): its epoch id is R's there, fenced */
inline move_to_p(i) { side[i] == 1 -> side[i] = 0; kv[i] = false }
#endif
/* R's recovery wait ends: ordered as P's (wait_over), for the trackers
 * that talk to R; one cut off from R (on P) is not waited for. With
 * WRITE_LEASE, also after P refuses writes (the timing assumption:
 * min-replicas-max-lag + 1 s < the instance TTL, below). */
#ifdef WRITE_LEASE
#define R_WAIT_OVER (WAIT_OVER(rpre, rsynced, 1) && pfenced)
#else
#define R_WAIT_OVER WAIT_OVER(rpre, rsynced, 1)
#endif
#ifndef EARLY_END
inline recovery_wait_ends_r() { rrec && R_WAIT_OVER -> rrec = false }
#else
/* ... or early: every instance of the set R held at its epoch's making
 * heartbeated in R's epoch, whatever the time order (and with the write
 * lease, whether or not P stopped) */
inline recovery_wait_ends_r() { rrec && (R_WAIT_OVER || EARLY_DONE(rearly, rS, rsynced)) -> rrec = false }
#endif
#ifdef WRITE_LEASE
/* P has not heard from a replica for min-replicas-max-lag: it refuses
 * writes from now on (R, promoted, never replicates from it again): at
 * any moment after the promotion. (A stalled link before it only refuses
 * P's writes for a while: fewer behaviours, left out.) */
inline p_fence() { promoted && !pfenced -> pfenced = true }
#endif
#endif

/* Every step prints its name and the state after it in a simulation
 * (spin -t -DCAP=.. wsgate.pml replays a counterexample); the verifier
 * prints nothing. */
#ifdef WAIT_FIX
#define TW_SHOW(i) tw[i]
#else
#define TW_SHOW(i) 0
#endif
inline print_state() {
  printf("  held=%d,%d ent=%d,%d kv=%d,%d deg=%d,%d lease=%d,%d wait=%d,%d | E=%d,%d epoch=%d recovering=%d snapE=%d,%d late=%d,%d\n",
    held[0], held[1], ent[0], ent[1], kv[0], kv[1], deg[0], deg[1], valid[0], valid[1], TW_SHOW(0), TW_SHOW(1),
    E[0], E[1], ep_ok, rec, sE[0], sE[1], okind[0], okind[1]);
#ifdef REPLICA
  /* P's state is E, epoch, recovering; the replica's data (R's E after the promotion) is snapE */
  printf("  side=%d,%d promoted=%d R: epoch=%d recovering=%d\n", side[0], side[1], promoted, rep_ok, rrec);
#endif
#ifdef EARLY
  /* the instances zset and whether the data's epoch had its wait over
   * (P's, and the copy's: the replica's or the snapshot's); the early end
   * of the current wait and its set (P's; with REPLICA, R's after R:) */
  printf("  members=%d,%d settled=%d copy: members=%d,%d settled=%d | early=%d S=%d,%d", mem[0], mem[1], dset, smem[0], smem[1], sdset, early, S[0], S[1]);
#ifdef REPLICA
  printf(" R: early=%d S=%d,%d", rearly, rS[0], rS[1]);
#endif
  printf("\n");
#endif
  skip
}
#define STEP(op, i) :: d_step { op(i); norm(); printf(#op); printf(" %d\n", i); print_state() }
#define BOTH(op) STEP(op, 0) STEP(op, 1)
#define ONCE(op) :: d_step { op(); norm(); printf(#op); printf("\n"); print_state() }

active proctype World() {
  do
  /* trackers */
  BOTH(admit_read)
  BOTH(admit_lost)
  BOTH(admit_late)
  BOTH(fallback_admit)
  BOTH(release_local)
  BOTH(release_ran)
  BOTH(release_late)
  BOTH(release_failed)
  BOTH(release_spare_ran)
  BOTH(release_spare_late)
  BOTH(release_spare_failed)
  BOTH(sync_read)
  BOTH(sync_lost)
  BOTH(sync_late)
  BOTH(sync_failed)
  BOTH(sync_delta_read)
  BOTH(sync_delta_lost)
  BOTH(sync_delta_late)
  BOTH(tracker_restart)
  BOTH(leave)
  /* Redis */
#ifndef REPLICA
  ONCE(redis_restart_empty)
  ONCE(redis_save)
  ONCE(redis_restart_old)
#else
#ifdef P_RESTARTS
  ONCE(p_restart_empty)
#endif
  ONCE(replicate)
  ONCE(promote)
  BOTH(move_to_r)
#ifdef FLIP
  BOTH(move_to_p)
#endif
  ONCE(recovery_wait_ends_r)
#if defined(WRITE_LEASE) && !defined(P_DOWN)
  ONCE(p_fence)
#endif
#endif
  BOTH(late_call_runs)
  BOTH(late_call_lost)
#ifdef REAP
  BOTH(reap)
#endif
  /* time */
  BOTH(local_lease_ends)
#ifdef LEASES
  BOTH(redis_lease_ends)
#endif
  ONCE(recovery_wait_ends)
#ifdef WAIT_FIX
  BOTH(own_wait_ends)
  BOTH(confirm_epoch)
#endif
  od
}
