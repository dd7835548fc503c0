package report

import "time"

// SchemaVersion names the JSON layout below. It changes only when a field
// is removed or changes meaning; new fields may be added within a version.
const SchemaVersion = "wsgate.metrics/v1"

// Report is the top-level JSON object of `wsgate metrics -o json`.
type Report struct {
	// Schema is SchemaVersion.
	Schema string `json:"schema"`
	// GeneratedAt is when the state was read.
	GeneratedAt time.Time `json:"generatedAt"`
	// Views lists the views present in every fleet, in display order.
	Views []View `json:"views"`
	// Fleets are sorted by name.
	Fleets []Fleet `json:"fleets"`
}

// Fleet holds the requested views of one fleet; a view not requested is
// omitted.
type Fleet struct {
	Name        string       `json:"name"`
	Connections *Connections `json:"connections,omitempty"`
	Rejections  *Rejections  `json:"rejections,omitempty"`
	Scaling     *Scaling     `json:"scaling,omitempty"`
	Detailed    *Detailed    `json:"detailed,omitempty"`
	Readiness   *Readiness   `json:"readiness,omitempty"`
	// Groups are a sharded fleet's groups (fleets file `shards` > 1), each
	// its own hash slot with its own epoch: the views above sum them, this
	// shows the health of each. Absent for a fleet of one group.
	Groups []Group `json:"groups,omitempty"`
}

// Group is one group of a sharded fleet: group 0 is named like the fleet,
// group k "<fleet>#k".
type Group struct {
	Name string `json:"name"`
	// Reachable is false when the group's state could not be read (its
	// Redis Cluster shard down or unreachable): Error says why, and the
	// fleet's figures leave the group out.
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
	Live      int64  `json:"live"`
	// Registry counts the group's own pods.
	Registry RegistryCount `json:"registry"`
	Epoch    string        `json:"epoch"`
	// Ready is the scaler's readiness judged on this group alone (its own
	// epoch and syncs); Why says what holds it back. The fleet is ready
	// only when every group is.
	Ready bool   `json:"ready"`
	Why   string `json:"why"`
	// Recovering: the group is in its recovery wait and grants nothing;
	// its trackers place connections in the other groups meanwhile.
	Recovering bool `json:"recovering"`
}

// Connections is the connections view: live connections per pod.
type Connections struct {
	// Cap is maxConnectionsPerPod, null when unknown (Redis does not hold
	// it; `wsgate metrics --config` reads it from the fleets file).
	Cap *int `json:"cap"`
	// Live is the fleet's live connections (admitted, not yet released).
	Live int64 `json:"live"`
	// Established is the sum of the instances' established connections.
	Established int           `json:"established"`
	Pods        []PodCounts   `json:"pods"`
	Summary     RegistryCount `json:"registry"`
}

// RegistryCount counts the pod registry.
type RegistryCount struct {
	Pods     int `json:"pods"`
	Ready    int `json:"ready"`
	Draining int `json:"draining"`
}

// PodCounts is one pod's line of the connections view. Pods that hold
// connections but are no longer in the registry are listed with
// Registered false.
type PodCounts struct {
	Addr        string `json:"addr"`
	Name        string `json:"name"`
	Node        string `json:"node"`
	Registered  bool   `json:"registered"`
	Ready       bool   `json:"ready"`
	Draining    bool   `json:"draining"`
	Live        int    `json:"live"`
	Established int    `json:"established"`
}

// Windows counts rejections over the last 5 min, 15 min and 1 h.
type Windows struct {
	M5  int64 `json:"5m"`
	M15 int64 `json:"15m"`
	H1  int64 `json:"1h"`
}

// ReasonWindows is the rejection windows of one reason.
type ReasonWindows struct {
	Reason string `json:"reason"`
	Windows
}

// Rejections is the rejections view. Rejections are recorded per fleet
// and per tracker instance, not per pod: a rejected connection has no pod.
type Rejections struct {
	// Fleet lists every reason, in the fixed order capacity, no_pods,
	// rate_limit, redis_down, recovering.
	Fleet     []ReasonWindows      `json:"fleet"`
	Instances []InstanceRejections `json:"instances"`
}

// InstanceRejections is one tracker instance's rejections, every reason.
type InstanceRejections struct {
	Instance string          `json:"instance"`
	Reasons  []ReasonWindows `json:"reasons"`
}

// Scaling is the scaling view: scale-down order and the scaler's state.
type Scaling struct {
	Registry RegistryCount `json:"registry"`
	Live     int64         `json:"live"`
	Cap      *int          `json:"cap"`
	// CandidatesSource is "scaler" when the candidates are the scaler's
	// scaledown set, "computed" when that set is absent and they were
	// ranked here, fewest connections first.
	CandidatesSource string      `json:"candidatesSource"`
	Candidates       []Candidate `json:"candidates"`
	// Scalers are the scaler's last decisions, one per desiredReplicas
	// trigger (ScaledObject and parameters) evaluated within the scaler's
	// decision TTL, by trigger ID; empty when no scaler has written one.
	Scalers []ScalerState `json:"scalers"`
}

// Candidates sources.
const (
	SourceScaler   = "scaler"
	SourceComputed = "computed"
)

// Candidate is one pod in scale-down order: rank 1 goes first.
type Candidate struct {
	Rank     int     `json:"rank"`
	Addr     string  `json:"addr"`
	Name     string  `json:"name"`
	Priority float64 `json:"priority"`
	Live     int     `json:"live"`
	Draining bool    `json:"draining"`
}

// ScalerState is one trigger's hash {wsgate:F}:scaler:<trigger>.
type ScalerState struct {
	// Trigger is <namespace>/<ScaledObject>@<hash of its parameters>.
	Trigger      string `json:"trigger"`
	ScaledObject string `json:"scaledObject"`
	Params       string `json:"params"`
	// DrainFloor is what the scale-down gate acted on: the highest fresh
	// recommendation among the fleet's triggers, wanted by DrivenBy; null
	// without a gate or while held.
	DrainFloor *int   `json:"drainFloor"`
	DrivenBy   string `json:"drivenBy"`
	// Recommended is the replica count the policy wants; null while the
	// scaler holds its metric (not ready).
	Recommended *int `json:"recommended"`
	// Reported is what the scaler tells KEDA (it may lag Recommended while
	// a coordinated scale-down settles); null while held.
	Reported *int `json:"reported"`
	// Ready is the scaler's readiness gate: false while it holds its metric.
	Ready bool `json:"ready"`
	// ReadyPods is the fleet's ready pods when the scaler last looked.
	ReadyPods int        `json:"readyPods"`
	UpdatedAt *time.Time `json:"updatedAt"`
	// AgeSeconds is how old UpdatedAt was when the report was made.
	AgeSeconds float64 `json:"ageSeconds"`
	Reason     string  `json:"reason"`
}

// Detailed is the per-pod x per-instance matrix.
type Detailed struct {
	Instances []InstanceInfo `json:"instances"`
	Pods      []PodRow       `json:"pods"`
}

// InstanceInfo is one tracker instance of the fleet.
type InstanceInfo struct {
	ID string `json:"id"`
	// LeaseExpiresAt is the end of the instance's lease, by Redis' clock.
	LeaseExpiresAt time.Time `json:"leaseExpiresAt"`
	// Alive is false once the lease has run out by Redis' clock (the
	// instance is reaped once another tracker or the scaler has also seen
	// it stand still for a lease, or kept with expiredInstances: keep).
	Alive bool `json:"alive"`
}

// PodRow is one pod's row of the matrix; Cells follow Instances' order.
type PodRow struct {
	Addr  string `json:"addr"`
	Name  string `json:"name"`
	Live  int    `json:"live"`
	Cells []Cell `json:"cells"`
}

// Cell is what one instance holds on one pod.
type Cell struct {
	Instance    string `json:"instance"`
	Live        int    `json:"live"`
	Established int    `json:"established"`
}

// Readiness is the readiness view: may the scaler trust the counts?
type Readiness struct {
	// Ready is EpochAgeSeconds >= SettleSeconds and SyncedShare >=
	// RequiredShare.
	Ready bool `json:"ready"`
	// Why says what holds readiness back ("" when ready).
	Why             string     `json:"why"`
	Epoch           string     `json:"epoch"`
	EpochStart      *time.Time `json:"epochStart"`
	EpochAgeSeconds float64    `json:"epochAgeSeconds"`
	SettleSeconds   float64    `json:"settleSeconds"`
	// Alive counts instances with an unexpired lease (by Redis' clock);
	// Synced those of them that re-published their state in this epoch.
	Alive         int     `json:"alive"`
	Synced        int     `json:"synced"`
	SyncedShare   float64 `json:"syncedShare"`
	RequiredShare float64 `json:"requiredShare"`
	// Unsynced lists alive instances that have not synced in this epoch.
	Unsynced []string `json:"unsynced"`
	// Recovering is true while the epoch is in its recovery wait: a new
	// epoch (Redis started empty, lost or reloaded its data) grants no
	// admission, the trackers refuse them (reason recovering), until
	// every instance has had a lease to re-publish its connections: one
	// instance TTL of Redis' clock (RecoveryUntil) that a tracker has also
	// seen pass on its own clock (RecoveryConfirmed). It does not enter
	// Ready.
	Recovering bool `json:"recovering"`
	// RecoveryUntil is when the epoch's recovery wait ends (or ended), by
	// Redis' clock; null when there is no epoch.
	RecoveryUntil *time.Time `json:"recoveryUntil"`
	// RecoverySecondsLeft is how long until RecoveryUntil, by Redis' clock
	// (0 once it passed).
	RecoverySecondsLeft float64 `json:"recoverySecondsLeft"`
	// RecoveryConfirmed: a tracker saw a full instance TTL of its own clock
	// pass in this epoch, so a forward step of Redis' clock alone did not
	// end the wait.
	RecoveryConfirmed bool `json:"recoveryConfirmed"`
}
