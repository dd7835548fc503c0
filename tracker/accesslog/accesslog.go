// Package accesslog is the tracker's receiver of Envoy's gRPC access log
// (envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs). Envoy's
// envoy.access_loggers.http_grpc sends one entry when a WebSocket tunnel is
// established, one per access_log_flush_interval while it lives and one at
// its end; the receiver turns them into Establish, Renew and Release of the
// connection named by the dynamic metadata wsgate.conn (README: How it works).
//
// Delivery is best effort: an entry that never arrives is repaired by the
// tracker's establish timeout and leases, so anything that cannot be matched
// is counted and dropped, never an error of the stream.
package accesslog

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"time"

	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/wsgate/wsgate/tracker"
)

// MetadataNamespace and its keys locate the connection in an entry's
// dynamic metadata, where envoy/wsgate.lua writes it.
const (
	MetadataNamespace = "wsgate"
	ConnKey           = "conn"
	FleetKey          = "fleet"
	UpstreamKey       = "upstream"
)

// Outcomes of one entry, the outcome label of the entries metric.
const (
	OutcomeOK          = "ok"
	OutcomeUnknownConn = "unknown_conn"
	OutcomeAdopted     = "adopted"
	OutcomeNoConn      = "no_conn"
	OutcomeMalformed   = "malformed"
	OutcomeIgnored     = "ignored"
	// OutcomeRefused: the entry names a connection this instance cannot
	// account for (tracker.ErrNotAdoptable): not counted.
	OutcomeRefused = "refused"
	// OutcomeError: the tracker failed to apply the entry (logged).
	OutcomeError = "error"
)

// entrySeries are the (type, outcome) pairs classify and StreamAccessLogs
// can count: New creates them at 0.
var entrySeries = func() [][2]string {
	var out [][2]string
	for _, typ := range []string{"established", "periodic", "end"} {
		for _, o := range []string{OutcomeOK, OutcomeAdopted, OutcomeRefused, OutcomeUnknownConn, OutcomeNoConn, OutcomeError} {
			out = append(out, [2]string{typ, o})
		}
	}
	return append(out, [2]string{"unknown", OutcomeMalformed}, [2]string{"other", OutcomeIgnored}, [2]string{"tcp", OutcomeIgnored})
}()

// Defaults of Server's bounds.
const (
	// DefaultMaxStreams bounds concurrent streams: one Envoy opens one per
	// worker thread and log name, so a few; more are abandoned or hostile.
	DefaultMaxStreams = 64
	// DefaultIdleTimeout ends a stream that sent nothing for that long. Envoy
	// sends an entry per access_log_flush_interval of every live connection
	// and opens a new stream when it next logs, so closing an idle one loses
	// nothing.
	DefaultIdleTimeout = 5 * time.Minute
)

// Tracker is what the receiver needs of a tracker.Tracker.
type Tracker interface {
	Establish(id string) error
	Renew(id string) error
	Release(ctx context.Context, id string) error
	Adopt(fleet, id, pod string, ended bool) error
}

// Server implements AccessLogServiceServer on a Tracker.
type Server struct {
	accesslogv3.UnimplementedAccessLogServiceServer

	// MaxStreams bounds the streams served at once; past it a new stream
	// is refused with ResourceExhausted. Default DefaultMaxStreams.
	MaxStreams int
	// IdleTimeout ends a stream that sent no message for that long.
	// Default DefaultIdleTimeout.
	IdleTimeout time.Duration

	tracker Tracker
	entries *prometheus.CounterVec // labels type, outcome
	log     *slog.Logger

	once  sync.Once
	slots chan struct{} // one per stream being served
}

// New returns a receiver that applies entries to t and counts them in
// entries (tracker.Metrics.AccessLogEntries: labels type and outcome),
// whose every series it creates at 0, so that a dashboard or rule reading
// them sees a tracker that received no entry yet, not no tracker.
func New(t Tracker, entries *prometheus.CounterVec, log *slog.Logger) *Server {
	for _, s := range entrySeries {
		entries.WithLabelValues(s[0], s[1])
	}
	return &Server{tracker: t, entries: entries, log: log, MaxStreams: DefaultMaxStreams, IdleTimeout: DefaultIdleTimeout}
}

func (s *Server) acquire() bool {
	s.once.Do(func() {
		n := s.MaxStreams
		if n <= 0 {
			n = DefaultMaxStreams
		}
		s.slots = make(chan struct{}, n)
	})
	select {
	case s.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// Register adds the service to g.
func (s *Server) Register(g *grpc.Server) { accesslogv3.RegisterAccessLogServiceServer(g, s) }

// StreamAccessLogs applies every entry of one Envoy stream as it arrives, so
// a stream cut mid-way loses nothing already received; the next stream Envoy
// opens carries on.
func (s *Server) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	if !s.acquire() {
		return status.Errorf(codes.ResourceExhausted, "more than %d access-log streams at once", cap(s.slots))
	}
	defer func() { <-s.slots }()
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	// Recv blocks until a message comes or the stream ends; the handler
	// returning ends the stream, which ends the Recv too.
	type recv struct {
		msg *accesslogv3.StreamAccessLogsMessage
		err error
	}
	msgs := make(chan recv)
	done := make(chan struct{})
	defer close(done)
	go func() {
		for {
			m, err := stream.Recv()
			select {
			case msgs <- recv{m, err}:
			case <-done:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	timer := time.NewTimer(idle)
	defer timer.Stop()
	// A release must reach Redis even if Envoy hangs up meanwhile: a
	// cancelled call would count as Redis failing.
	ctx := context.WithoutCancel(stream.Context())
	var node string
	for {
		var r recv
		select {
		case r = <-msgs:
		case <-timer.C:
			s.log.Debug("access-log stream idle: closed; Envoy opens a new one when it next logs", "node", node, "idle", idle)
			return status.Errorf(codes.DeadlineExceeded, "no access-log message for %s", idle)
		}
		timer.Reset(idle)
		msg, err := r.msg, r.err
		if errors.Is(err, io.EOF) {
			// A client-streaming RPC ends with one response; without it a
			// client that closes cleanly sees a cardinality violation.
			return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			if status.Code(err) != codes.Canceled {
				s.log.Warn("access-log stream broken; Envoy reconnects and the next stream resumes", "node", node, "err", err)
			}
			return nil
		}
		if id := msg.GetIdentifier(); id != nil && node == "" {
			node = id.GetNode().GetId()
			s.log.Debug("access-log stream opened", "node", node, "log_name", id.GetLogName())
		}
		switch e := msg.GetLogEntries().(type) {
		case *accesslogv3.StreamAccessLogsMessage_HttpLogs:
			for _, entry := range e.HttpLogs.GetLogEntry() {
				s.apply(ctx, entry)
			}
		case *accesslogv3.StreamAccessLogsMessage_TcpLogs:
			s.entries.WithLabelValues("tcp", OutcomeIgnored).Add(float64(len(e.TcpLogs.GetLogEntry())))
		case nil:
			// The first message may carry only the identifier.
		}
	}
}

func (s *Server) apply(ctx context.Context, entry *datav3.HTTPAccessLogEntry) {
	typ, outcome := s.classify(ctx, entry)
	s.entries.WithLabelValues(typ, outcome).Inc()
}

func (s *Server) classify(ctx context.Context, entry *datav3.HTTPAccessLogEntry) (typ, outcome string) {
	props := entry.GetCommonProperties()
	if props == nil {
		return "unknown", OutcomeMalformed
	}
	var op func(id string) error
	switch props.GetAccessLogType() {
	case datav3.AccessLogType_DownstreamTunnelSuccessfullyEstablished:
		typ, op = "established", s.tracker.Establish
	case datav3.AccessLogType_DownstreamPeriodic:
		typ, op = "periodic", s.tracker.Renew
	case datav3.AccessLogType_DownstreamEnd:
		// Also when the upgrade failed (no 101): the slot was taken at
		// admission and must come back.
		typ, op = "end", func(id string) error { return s.tracker.Release(ctx, id) }
	case datav3.AccessLogType_NotSet:
		// Envoy 1.30+ always sets the type; without it the entry cannot say
		// whether the connection ended.
		return "unknown", OutcomeMalformed
	default:
		return "other", OutcomeIgnored
	}
	conn := props.GetMetadata().GetFilterMetadata()[MetadataNamespace].GetFields()[ConnKey].GetStringValue()
	if conn == "" {
		return typ, OutcomeNoConn
	}
	if err := op(conn); err != nil {
		if errors.Is(err, tracker.ErrUnknownConn) {
			// Admitted by a previous run of this tracker, or let go by
			// this one while Envoy still carries it: take it over, so
			// that Redis counts it again (tracker.Tracker.Adopt). An
			// end of one that is not inherited needs nothing.
			md := props.GetMetadata().GetFilterMetadata()[MetadataNamespace].GetFields()
			fleet, pod := md[FleetKey].GetStringValue(), md[UpstreamKey].GetStringValue()
			if fleet == "" || pod == "" {
				return typ, OutcomeUnknownConn
			}
			err := s.tracker.Adopt(fleet, conn, pod, typ == "end")
			switch {
			case err == nil:
				return typ, OutcomeAdopted
			case errors.Is(err, tracker.ErrNotAdoptable):
				s.log.Debug("access-log entry refused", "type", typ, "err", err)
				return typ, OutcomeRefused
			}
			return typ, OutcomeUnknownConn
		}
		s.log.Warn("access-log entry not applied", "type", typ, "conn", conn, "err", err)
		return typ, OutcomeError
	}
	return typ, OutcomeOK
}
