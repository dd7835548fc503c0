package report

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteJSON writes rep as one indented JSON document (schema: model.go).
func WriteJSON(w io.Writer, rep Report) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return fmt.Errorf("write json: %w", err)
	}
	return nil
}

// WriteTable writes rep as aligned text tables, fleet after fleet.
func WriteTable(w io.Writer, rep Report) error {
	tw := &errWriter{w: w}
	for i, f := range rep.Fleets {
		if i > 0 {
			tw.printf("\n")
		}
		tw.printf("=== fleet %s ===\n", f.Name)
		if len(f.Groups) > 0 {
			writeGroups(tw, f.Groups)
		}
		if f.Connections != nil {
			writeConnections(tw, f.Connections)
		}
		if f.Rejections != nil {
			writeRejections(tw, f.Rejections)
		}
		if f.Scaling != nil {
			writeScaling(tw, f.Scaling)
		}
		if f.Detailed != nil {
			writeDetailed(tw, f.Detailed)
		}
		if f.Readiness != nil {
			writeReadiness(tw, f.Readiness)
		}
	}
	if tw.err != nil {
		return fmt.Errorf("write table: %w", tw.err)
	}
	return nil
}

// errWriter keeps the first write error so the renderers stay linear.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) printf(format string, a ...any) {
	if e.err == nil {
		_, e.err = fmt.Fprintf(e.w, format, a...)
	}
}

// table writes rows of tab-separated cells, aligned, two spaces apart.
func (e *errWriter) table(rows [][]string) {
	tw := tabwriter.NewWriter(e, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if err := tw.Flush(); err != nil && e.err == nil {
		e.err = err
	}
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func capText(c *int) string {
	if c == nil {
		return "unknown (give --config)"
	}
	return strconv.Itoa(*c) + " per pod"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func writeConnections(w *errWriter, c *Connections) {
	w.printf("\nCONNECTIONS  live %d, established %d; pods %d (%d ready, %d draining); cap %s\n",
		c.Live, c.Established, c.Summary.Pods, c.Summary.Ready, c.Summary.Draining, capText(c.Cap))
	if len(c.Pods) == 0 {
		w.printf("(no pods registered)\n")
		return
	}
	rows := [][]string{{"POD", "NAME", "NODE", "STATE", "LIVE", "ESTABLISHED", "USE"}}
	for _, p := range c.Pods {
		use := "-"
		if c.Cap != nil {
			use = fmt.Sprintf("%d/%d", p.Live, *c.Cap)
			if p.Live >= *c.Cap {
				use += " full"
			}
		}
		rows = append(rows, []string{p.Addr, orDash(p.Name), orDash(p.Node), podState(p), strconv.Itoa(p.Live), strconv.Itoa(p.Established), use})
	}
	w.table(rows)
}

func podState(p PodCounts) string {
	switch {
	case !p.Registered:
		return "unregistered"
	case p.Draining:
		return "draining"
	case p.Ready:
		return "ready"
	default:
		return "not-ready"
	}
}

func writeRejections(w *errWriter, r *Rejections) {
	w.printf("\nREJECTIONS  fleet: every reason; instances: reasons seen in the last hour\n")
	rows := [][]string{{"SCOPE", "REASON", "5M", "15M", "1H"}}
	for _, rw := range r.Fleet {
		rows = append(rows, windowRow("fleet", rw))
	}
	for _, in := range r.Instances {
		shown := false
		for _, rw := range in.Reasons {
			if rw.H1 > 0 {
				rows = append(rows, windowRow("instance "+in.Instance, rw))
				shown = true
			}
		}
		if !shown {
			rows = append(rows, []string{"instance " + in.Instance, "-", "0", "0", "0"})
		}
	}
	w.table(rows)
}

func windowRow(scope string, rw ReasonWindows) []string {
	return []string{scope, rw.Reason, strconv.FormatInt(rw.M5, 10), strconv.FormatInt(rw.M15, 10), strconv.FormatInt(rw.H1, 10)}
}

func writeScaling(w *errWriter, s *Scaling) {
	w.printf("\nSCALING  pods %d (%d ready, %d draining), live %d; cap %s\n",
		s.Registry.Pods, s.Registry.Ready, s.Registry.Draining, s.Live, capText(s.Cap))
	writeScalers(w, s.Scalers)
	if s.CandidatesSource == SourceScaler {
		w.printf("scale-down order: the scaler's scaledown set, first goes first\n")
	} else {
		w.printf("scale-down order: computed here, fewest connections first (no scaledown set in Redis)\n")
	}
	if len(s.Candidates) == 0 {
		w.printf("(no candidates)\n")
		return
	}
	rows := [][]string{{"RANK", "POD", "NAME", "PRIORITY", "LIVE", "DRAINING"}}
	for _, c := range s.Candidates {
		rows = append(rows, []string{strconv.Itoa(c.Rank), c.Addr, orDash(c.Name),
			strconv.FormatFloat(c.Priority, 'f', -1, 64), strconv.Itoa(c.Live), yesNo(c.Draining)})
	}
	w.table(rows)
}

// writeScalers shows one row per trigger and which one the drain follows.
func writeScalers(w *errWriter, scalers []ScalerState) {
	if len(scalers) == 0 {
		w.printf("scaler: no recommendation in Redis (no scaler hash for this fleet): is `wsgate scaler` running?\n")
		return
	}
	w.printf("scaler: %d trigger(s), one decision each\n", len(scalers))
	rows := [][]string{{"TRIGGER", "STATE", "RECOMMENDED", "REPORTED", "DRAIN FLOOR", "READY PODS", "UPDATED", "PARAMS", "REASON"}}
	var floor *ScalerState
	for i, sc := range scalers {
		updated := "-"
		if sc.UpdatedAt != nil {
			updated = roundDur(sc.AgeSeconds).String() + " ago"
		}
		state, rec, rep, fl := "held (not ready)", "-", "-", "-"
		if sc.Recommended != nil && sc.Reported != nil && sc.Ready {
			state, rec, rep = "reporting", strconv.Itoa(*sc.Recommended), strconv.Itoa(*sc.Reported)
		}
		if sc.DrainFloor != nil {
			fl = strconv.Itoa(*sc.DrainFloor)
			if floor == nil || sc.UpdatedAt != nil && floor.UpdatedAt != nil && sc.UpdatedAt.After(*floor.UpdatedAt) {
				floor = &scalers[i]
			}
		}
		rows = append(rows, []string{sc.Trigger, state, rec, rep, fl, strconv.Itoa(sc.ReadyPods), updated, orDash(sc.Params), orDash(sc.Reason)})
	}
	w.table(rows)
	if floor != nil {
		w.printf("drain: the scale-down gate acts on the highest fresh recommendation, %d, of trigger %s (as of its latest evaluation)\n", *floor.DrainFloor, floor.DrivenBy)
	} else {
		w.printf("drain: no scale-down gate recorded a floor (no --kube pod-deletion-cost hook, or every trigger held)\n")
	}
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func writeDetailed(w *errWriter, d *Detailed) {
	w.printf("\nDETAILED  live/established per pod and tracker instance\n")
	if len(d.Pods) == 0 {
		w.printf("(no pods)\n")
		return
	}
	head := []string{"POD", "NAME"}
	for _, in := range d.Instances {
		id := in.ID
		if !in.Alive {
			id += " (expired)"
		}
		head = append(head, id)
	}
	rows := [][]string{append(head, "TOTAL")}
	for _, p := range d.Pods {
		row := []string{p.Addr, orDash(p.Name)}
		for _, c := range p.Cells {
			cell := "-"
			if c.Live != 0 || c.Established != 0 {
				cell = fmt.Sprintf("%d/%d", c.Live, c.Established)
			}
			row = append(row, cell)
		}
		rows = append(rows, append(row, strconv.Itoa(p.Live)))
	}
	w.table(rows)
}

func writeReadiness(w *errWriter, r *Readiness) {
	flag := "ready"
	if !r.Ready {
		flag = "NOT READY: " + r.Why
	}
	switch {
	case r.Recovering && r.RecoverySecondsLeft > 0:
		flag += fmt.Sprintf("; recovery wait: %s left", roundDur(r.RecoverySecondsLeft))
	case r.Recovering && r.RecoveryUntil == nil:
		flag += "; a group is in its recovery wait"
	case r.Recovering:
		flag += "; recovery wait: no tracker has confirmed its end yet"
	}
	w.printf("\nREADINESS  %s\n", flag)
	start := "-"
	if r.EpochStart != nil {
		start = fmt.Sprintf("%s (%s ago; settle %s)", r.EpochStart.Format(time.RFC3339), roundDur(r.EpochAgeSeconds), roundDur(r.SettleSeconds))
	}
	recovery := "-"
	switch {
	case r.Recovering && r.RecoveryUntil == nil:
		// A sharded fleet shown through a group that is not recovering
		// while another is.
		recovery = "another group is in its recovery wait (see GROUPS): admissions refused there"
	case r.Recovering:
		end := fmt.Sprintf("until %s by Redis' clock (%s left)", r.RecoveryUntil.Format(time.RFC3339), roundDur(r.RecoverySecondsLeft))
		if r.RecoverySecondsLeft == 0 {
			end = "Redis' clock passed " + r.RecoveryUntil.Format(time.RFC3339)
		}
		confirmed := "confirmed"
		if !r.RecoveryConfirmed {
			confirmed = "not yet confirmed"
		}
		recovery = fmt.Sprintf("%s, %s on a tracker's clock: admissions refused (recovering)", end, confirmed)
	case r.RecoveryUntil != nil:
		recovery = "over (ended " + r.RecoveryUntil.Format(time.RFC3339) + ")"
	}
	rows := [][]string{
		{"epoch", orDash(r.Epoch)},
		{"epoch start", start},
		{"recovery", recovery},
		{"synced", fmt.Sprintf("%d of %d alive instances (%.0f%%; %.0f%% required)", r.Synced, r.Alive, 100*r.SyncedShare, 100*r.RequiredShare)},
	}
	if len(r.Unsynced) > 0 {
		rows = append(rows, []string{"not synced", strings.Join(r.Unsynced, ", ")})
	}
	w.table(rows)
}

// writeGroups shows a sharded fleet's groups: the views below sum them.
func writeGroups(w *errWriter, groups []Group) {
	w.printf("\nGROUPS  %d shards; the views below sum the reachable groups\n", len(groups))
	rows := [][]string{{"GROUP", "STATE", "LIVE", "PODS", "READY", "EPOCH", "WHY"}}
	for _, g := range groups {
		state := "ok"
		switch {
		case !g.Reachable:
			state = "UNREACHABLE"
		case g.Recovering:
			state = "recovering"
		case !g.Ready:
			state = "not ready"
		}
		if !g.Reachable {
			rows = append(rows, []string{g.Name, state, "-", "-", "-", "-", orDash(g.Error)})
			continue
		}
		rows = append(rows, []string{g.Name, state, strconv.FormatInt(g.Live, 10), strconv.Itoa(g.Registry.Pods),
			strconv.Itoa(g.Registry.Ready), orDash(g.Epoch), orDash(g.Why)})
	}
	w.table(rows)
}
