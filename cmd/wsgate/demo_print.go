package main

import (
	"fmt"
	"io"
	"os"

	"github.com/wsgate/wsgate/scaler"
)

// demoPrinter writes the demo's lines for a person. On a terminal it also
// keeps one progress line, rewritten in place, while the demo waits.
type demoPrinter struct {
	out        io.Writer
	tty        bool
	progressed bool
}

func newDemoPrinter(out io.Writer) *demoPrinter {
	p := &demoPrinter{out: out}
	if f, ok := out.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			p.tty = true
		}
	}
	return p
}

func (p *demoPrinter) progress(format string, a ...any) {
	if !p.tty {
		return
	}
	fmt.Fprintf(p.out, "\r\033[K  ... "+format, a...)
	p.progressed = true
}

func (p *demoPrinter) line(format string, a ...any) {
	if p.progressed {
		fmt.Fprint(p.out, "\r\033[K")
		p.progressed = false
	}
	fmt.Fprintf(p.out, format+"\n", a...)
}

func (p *demoPrinter) step(n int, format string, a ...any) {
	p.line("")
	p.line("Step %d: "+format, append([]any{n}, a...)...)
}

func (p *demoPrinter) intro(d demoSystem, slots int) {
	redisWhat := "embedded (in-process miniredis; state is lost on exit)"
	if !d.Redis.Embedded {
		redisWhat = "external (--redis)"
	}
	p.line("wsgate demo: one shared connection cap for a fleet behind two Envoys, on this machine")
	p.line("")
	p.line("  redis       %-26s %s", d.Redis.Addr, redisWhat)
	for _, n := range d.Nodes {
		p.line("  gateway %s   %-26s Envoy stand-in running envoy/wsgate.lua", n.name, n.URL())
		p.line("  tracker %s   %-26s admission API; access log on %s", n.name, n.admitURL, n.accessLogAddr)
	}
	p.line("  scaler      %-26s KEDA external scaler (gRPC)", d.Scaler.addr)
	for _, b := range d.Backends {
		p.line("  %-10s  %-26s WebSocket echo server", b.name, b.addr)
	}
	p.line("")
	p.line("  fleet %q: %d pods x cap %d = %d connections at most, all gateways together;",
		d.Fleet.Name, len(d.Backends), d.Fleet.MaxConnectionsPerPod, slots)
	p.line("  each gateway admits %g new connections/s (burst %d)", d.Fleet.RatePerSecond, d.Fleet.Burst)
}

func (p *demoPrinter) dial(n int, gw string, r demoDial) {
	label := fmt.Sprintf("#%d", n)
	if n == 0 {
		label = "again"
	}
	switch {
	case r.conn != nil:
		p.line("  %-6s gateway %s  %d admitted   -> %-8s echo %q", label, gw, r.status, r.pod, r.echo)
	case r.status != 0 && r.reason != "":
		p.line("  %-6s gateway %s  %d rejected   reason %-11s Retry-After: %s", label, gw, r.status, r.reason, r.retryAfter)
	case r.status != 0:
		p.line("  %-6s gateway %s  %d failed     %v", label, gw, r.status, r.err)
	default:
		p.line("  %-6s gateway %s  failed       %v", label, gw, r.err)
	}
}

func (p *demoPrinter) scaler(ms []scalerMetric, pods int) {
	for _, m := range ms {
		var why string
		switch m.name {
		case scaler.MetricDesiredReplicas:
			why = fmt.Sprintf("pods the policy wants (the fleet has %d)", pods)
		case scaler.MetricConnections:
			why = fmt.Sprintf("live connections (HPA target %g per pod)", m.target)
		case scaler.MetricSaturation:
			why = fmt.Sprintf("live / (placeable pods x cap) (target %g)", m.target)
		}
		p.line("  %-16s %6.2f   %s", m.name, m.value, why)
	}
	for _, m := range ms {
		if m.name == scaler.MetricDesiredReplicas {
			p.line("  => recommendation: %d pods", int64(m.value))
		}
	}
}

func (p *demoPrinter) serving(d demoSystem, held, slots int) {
	p.line("")
	p.line("Serving until Ctrl-C. The demo holds %d connections; %d of %d slots are free.", held, slots-held, slots)
	for _, n := range d.Nodes {
		p.line("  connect      %s   (any WebSocket client; the pod echoes)", n.URL())
	}
	cmd, _ := d.metricsCommand()
	p.line("  inspect      %s", cmd)
	p.line("  KEDA scaler  %s", d.Scaler.addr)
}
