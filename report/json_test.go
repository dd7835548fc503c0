package report_test

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/wsgate/wsgate/report"
)

// The schema as a script sees it, written out independently of model.go:
// a renamed, removed or added field fails TestJSONSchema.
type jsonReport struct {
	Schema      string      `json:"schema"`
	GeneratedAt time.Time   `json:"generatedAt"`
	Views       []string    `json:"views"`
	Fleets      []jsonFleet `json:"fleets"`
}

type jsonFleet struct {
	Name        string           `json:"name"`
	Connections *jsonConnections `json:"connections"`
	Rejections  *jsonRejections  `json:"rejections"`
	Scaling     *jsonScaling     `json:"scaling"`
	Detailed    *jsonDetailed    `json:"detailed"`
	Readiness   *jsonReadiness   `json:"readiness"`
}

type jsonRegistry struct {
	Pods     int `json:"pods"`
	Ready    int `json:"ready"`
	Draining int `json:"draining"`
}

type jsonConnections struct {
	Cap         *int         `json:"cap"`
	Live        int64        `json:"live"`
	Established int          `json:"established"`
	Pods        []jsonPod    `json:"pods"`
	Registry    jsonRegistry `json:"registry"`
}

type jsonPod struct {
	Addr        string `json:"addr"`
	Name        string `json:"name"`
	Node        string `json:"node"`
	Registered  bool   `json:"registered"`
	Ready       bool   `json:"ready"`
	Draining    bool   `json:"draining"`
	Live        int    `json:"live"`
	Established int    `json:"established"`
}

type jsonWindows struct {
	Reason string `json:"reason"`
	M5     int64  `json:"5m"`
	M15    int64  `json:"15m"`
	H1     int64  `json:"1h"`
}

type jsonRejections struct {
	Fleet     []jsonWindows `json:"fleet"`
	Instances []struct {
		Instance string        `json:"instance"`
		Reasons  []jsonWindows `json:"reasons"`
	} `json:"instances"`
}

type jsonScaling struct {
	Registry         jsonRegistry `json:"registry"`
	Live             int64        `json:"live"`
	Cap              *int         `json:"cap"`
	CandidatesSource string       `json:"candidatesSource"`
	Candidates       []struct {
		Rank     int     `json:"rank"`
		Addr     string  `json:"addr"`
		Name     string  `json:"name"`
		Priority float64 `json:"priority"`
		Live     int     `json:"live"`
		Draining bool    `json:"draining"`
	} `json:"candidates"`
	Scalers []struct {
		Trigger      string     `json:"trigger"`
		ScaledObject string     `json:"scaledObject"`
		Params       string     `json:"params"`
		DrainFloor   *int       `json:"drainFloor"`
		DrivenBy     string     `json:"drivenBy"`
		Recommended  *int       `json:"recommended"`
		Reported     *int       `json:"reported"`
		Ready        bool       `json:"ready"`
		ReadyPods    int        `json:"readyPods"`
		UpdatedAt    *time.Time `json:"updatedAt"`
		AgeSeconds   float64    `json:"ageSeconds"`
		Reason       string     `json:"reason"`
	} `json:"scalers"`
}

type jsonDetailed struct {
	Instances []struct {
		ID             string    `json:"id"`
		LeaseExpiresAt time.Time `json:"leaseExpiresAt"`
		Alive          bool      `json:"alive"`
	} `json:"instances"`
	Pods []struct {
		Addr  string `json:"addr"`
		Name  string `json:"name"`
		Live  int    `json:"live"`
		Cells []struct {
			Instance    string `json:"instance"`
			Live        int    `json:"live"`
			Established int    `json:"established"`
		} `json:"cells"`
	} `json:"pods"`
}

type jsonReadiness struct {
	Ready           bool       `json:"ready"`
	Why             string     `json:"why"`
	Epoch           string     `json:"epoch"`
	EpochStart      *time.Time `json:"epochStart"`
	EpochAgeSeconds float64    `json:"epochAgeSeconds"`
	SettleSeconds   float64    `json:"settleSeconds"`
	Alive           int        `json:"alive"`
	Synced          int        `json:"synced"`
	SyncedShare     float64    `json:"syncedShare"`
	RequiredShare   float64    `json:"requiredShare"`
	Unsynced        []string   `json:"unsynced"`
	// Added within v1 with the recovery wait (tracker/PROTOCOL.md).
	Recovering          bool       `json:"recovering"`
	RecoveryUntil       *time.Time `json:"recoveryUntil"`
	RecoverySecondsLeft float64    `json:"recoverySecondsLeft"`
	RecoveryConfirmed   bool       `json:"recoveryConfirmed"`
}

func decodeStrict(t *testing.T, data []byte) jsonReport {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var r jsonReport
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("decode strictly: %v\n%s", err, data)
	}
	// Every field of the schema must be present too: re-encoding what was
	// decoded gives back the same document only if nothing was missing.
	again, err := json.Marshal(r)
	must(t, err)
	var a, b any
	must(t, json.Unmarshal(data, &a))
	must(t, json.Unmarshal(again, &b))
	if !reflect.DeepEqual(a, b) {
		t.Fatalf("the JSON lacks fields of the schema:\n got %s\nwant %s", data, again)
	}
	return r
}

func TestJSONSchema(t *testing.T) {
	sc, mr := miniScenario(t)
	p := sc.store.Keys("chat")
	decision(mr, p, "ns/chat@0123abcd", "scaledObject", "ns/chat", "params", "targetUtilization=0.8", "recommended", "3", "reported", "4",
		"drainFloor", "4", "drivenBy", "ns/probe@4567cdef", "ready", "1", "readyPods", "4", "updatedMs", "1795608025000", "reason", "capacity target")
	var buf bytes.Buffer
	must(t, report.WriteJSON(&buf, sc.report(t)))
	r := decodeStrict(t, buf.Bytes())

	if r.Schema != "wsgate.metrics/v1" || !r.GeneratedAt.Equal(sc.now) {
		t.Errorf("schema %q generatedAt %s, want wsgate.metrics/v1 at %s", r.Schema, r.GeneratedAt, sc.now)
	}
	if want := []string{"connections", "rejections", "scaling", "detailed", "readiness"}; !reflect.DeepEqual(r.Views, want) {
		t.Errorf("views %v, want %v", r.Views, want)
	}
	if len(r.Fleets) != 2 || r.Fleets[0].Name != "chat" || r.Fleets[1].Name != "video" {
		t.Fatalf("fleets %+v, want chat and video", r.Fleets)
	}
	chat := r.Fleets[0]

	c := chat.Connections
	if c.Cap == nil || *c.Cap != 2 || c.Live != 6 || c.Established != 3 || c.Registry != (jsonRegistry{Pods: 4, Ready: 4, Draining: 1}) {
		t.Errorf("connections header %+v", c)
	}
	if r.Fleets[1].Connections.Cap != nil {
		t.Errorf("video: cap %d, want null (not in Caps)", *r.Fleets[1].Connections.Cap)
	}
	wantPod := jsonPod{Addr: "10.0.0.3:8080", Name: "chat-2", Node: "node-a", Registered: true, Ready: true, Live: 2, Established: 2}
	if len(c.Pods) != 4 || c.Pods[2] != wantPod || !c.Pods[3].Draining {
		t.Errorf("pods %+v, want 4 with %+v third and the fourth draining", c.Pods, wantPod)
	}

	rj := chat.Rejections
	wantFleet := []jsonWindows{{"capacity", 1, 1, 1}, {"no_pods", 0, 0, 0}, {"rate_limit", 0, 1, 1}, {"redis_down", 0, 0, 0}, {"recovering", 0, 0, 0}}
	if !reflect.DeepEqual(rj.Fleet, wantFleet) {
		t.Errorf("fleet rejections %+v, want %+v", rj.Fleet, wantFleet)
	}
	if len(rj.Instances) != 4 || rj.Instances[1].Instance != "envoy-2" || rj.Instances[1].Reasons[0] != (jsonWindows{"capacity", 1, 1, 1}) {
		t.Errorf("instance rejections %+v, want envoy-2's capacity rejection", rj.Instances)
	}

	s := chat.Scaling
	if s.CandidatesSource != "computed" || len(s.Candidates) != 4 || s.Candidates[0].Addr != "10.0.0.4:8080" || s.Candidates[0].Rank != 1 {
		t.Errorf("candidates %s %+v, want computed, the empty draining pod first", s.CandidatesSource, s.Candidates)
	}
	if len(s.Scalers) != 1 {
		t.Fatalf("scalers %+v, want one trigger", s.Scalers)
	}
	if d := s.Scalers[0]; d.Trigger != "ns/chat@0123abcd" || d.ScaledObject != "ns/chat" || d.Params != "targetUtilization=0.8" ||
		d.DrainFloor == nil || *d.DrainFloor != 4 || d.DrivenBy != "ns/probe@4567cdef" ||
		d.Recommended == nil || *d.Recommended != 3 || d.Reported == nil || *d.Reported != 4 || !d.Ready || d.ReadyPods != 4 ||
		d.UpdatedAt == nil || d.AgeSeconds != 5 || d.Reason != "capacity target" {
		t.Errorf("scaler %+v", d)
	}
	if v := r.Fleets[1].Scaling.Scalers; v == nil || len(v) != 0 {
		t.Errorf("video: scalers %+v, want []: no scaler hash", v)
	}

	d := chat.Detailed
	if len(d.Instances) != 4 || d.Instances[3].ID != "envoy-4" || d.Instances[3].Alive || !d.Instances[0].Alive {
		t.Errorf("instances %+v, want envoy-1..4 with envoy-4 expired", d.Instances)
	}
	if cell := d.Pods[2].Cells[0]; cell.Instance != "envoy-1" || cell.Live != 2 || cell.Established != 2 {
		t.Errorf("cell chat-2 x envoy-1 %+v, want 2 live 2 established", cell)
	}

	rd := chat.Readiness
	if rd.Ready || rd.Alive != 3 || rd.Synced != 2 || !reflect.DeepEqual(rd.Unsynced, []string{"envoy-3"}) ||
		rd.EpochAgeSeconds != 150 || rd.SettleSeconds != 60 || rd.RequiredShare != 0.95 || rd.Why == "" {
		t.Errorf("readiness %+v, want not ready: envoy-3 of 3 alive not synced", rd)
	}
	// chat's epoch was created at t0-2m by Redis' clock (which followed the
	// scenario's): its wait lasts the instance TTL, 5 min.
	// No tracker has watched a TTL of its clock pass in it yet either.
	if wantUntil := t0.Add(3 * time.Minute); !rd.Recovering || rd.RecoveryUntil == nil || !rd.RecoveryUntil.Equal(wantUntil) || rd.RecoverySecondsLeft != 150 || rd.RecoveryConfirmed {
		t.Errorf("readiness %+v, want recovering until %s, 150s left, unconfirmed", rd, wantUntil)
	}
	vr := r.Fleets[1].Readiness
	if !vr.Ready || vr.Why != "" {
		t.Errorf("video readiness %+v, want ready", vr)
	}
	if wantUntil := t0.Add(-5 * time.Minute); vr.Recovering || vr.RecoveryUntil == nil || !vr.RecoveryUntil.Equal(wantUntil) || vr.RecoverySecondsLeft != 0 || !vr.RecoveryConfirmed {
		t.Errorf("video readiness %+v, want its recovery wait over since %s", vr, wantUntil)
	}
}

// A view not asked for is absent from JSON, not an empty object.
func TestJSONOnlyRequestedViews(t *testing.T) {
	sc, _ := miniScenario(t)
	var buf bytes.Buffer
	must(t, report.WriteJSON(&buf, sc.report(t, report.ViewReadiness)))
	var doc struct {
		Fleets []map[string]json.RawMessage `json:"fleets"`
	}
	must(t, json.Unmarshal(buf.Bytes(), &doc))
	for _, f := range doc.Fleets {
		if len(f) != 2 || f["name"] == nil || f["readiness"] == nil {
			t.Errorf("fleet keys %v, want name and readiness only", keys(f))
		}
	}
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
