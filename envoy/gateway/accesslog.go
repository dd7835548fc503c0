package gateway

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// logName is what Envoy's http_grpc logger sends as common_config.log_name
// in envoy/envoy.yaml.
const logName = "wsgate"

// maxBatch bounds the entries of one StreamAccessLogsMessage, as Envoy's
// buffer_size_bytes bounds its batches.
const maxBatch = 256

// logStream is the gateway's side of envoy.service.accesslog.v3: one
// long-lived stream to the tracker, reopened when it breaks. Like Envoy it
// is best effort: entries that cannot be sent are counted and dropped, and
// the tracker's leases repair what they would have said.
type logStream struct {
	client  accesslogv3.AccessLogServiceClient
	node    string
	entries chan *datav3.HTTPAccessLogEntry
	log     *slog.Logger
	dropped atomic.Int64
	sent    atomic.Int64
}

func newLogStream(cc *grpc.ClientConn, node string, buffer int, log *slog.Logger) *logStream {
	return &logStream{
		client:  accesslogv3.NewAccessLogServiceClient(cc),
		node:    node,
		entries: make(chan *datav3.HTTPAccessLogEntry, buffer),
		log:     log,
	}
}

// enqueue never blocks the data path: a full buffer drops the entry, as
// Envoy does when its gRPC logger falls behind.
func (s *logStream) enqueue(e *datav3.HTTPAccessLogEntry) {
	select {
	case s.entries <- e:
	default:
		s.dropped.Add(1)
	}
}

// run sends entries until ctx ends; when drain is closed it sends what is
// queued and returns.
func (s *logStream) run(ctx context.Context, drain <-chan struct{}) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		done, err := s.stream(ctx, drain)
		if done {
			return
		}
		if err != nil {
			s.log.Debug("access-log stream broken; reopening", "err", err, "backoff", backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-drain:
			if len(s.entries) == 0 {
				return
			}
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// stream runs one gRPC stream; done is true when drain was asked for and
// the queue is empty.
func (s *logStream) stream(parent context.Context, drain <-chan struct{}) (done bool, err error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	st, err := s.client.StreamAccessLogs(ctx)
	if err != nil {
		return false, err
	}
	// The tracker never answers; Recv returns when the stream ends, which is
	// how a cut is noticed while nothing is being sent.
	broken := make(chan error, 1)
	go func() { broken <- st.RecvMsg(new(accesslogv3.StreamAccessLogsResponse)) }()
	first := true
	for {
		var batch []*datav3.HTTPAccessLogEntry
		select {
		case err := <-broken:
			return false, err
		case <-ctx.Done():
			return false, ctx.Err()
		case e := <-s.entries:
			batch = append(batch, e)
		case <-drain:
			if len(s.entries) == 0 {
				_ = st.CloseSend()
				return true, nil
			}
			continue
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case e := <-s.entries:
				batch = append(batch, e)
			default:
				break fill
			}
		}
		msg := &accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch},
		}}
		if first {
			// Envoy identifies itself on the first message of a stream only.
			msg.Identifier = &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: s.node}, LogName: logName}
		}
		if err := st.Send(msg); err != nil {
			s.dropped.Add(int64(len(batch)))
			return false, err
		}
		s.sent.Add(int64(len(batch)))
		first = false
	}
}

// entry builds an Envoy-shaped HTTP access-log entry of one tunnel.
func (t *tunnel) entry(typ datav3.AccessLogType, status int) *datav3.HTTPAccessLogEntry {
	e := &datav3.HTTPAccessLogEntry{
		CommonProperties: &datav3.AccessLogCommon{
			AccessLogType:           typ,
			DownstreamRemoteAddress: socketAddress(t.remote),
			UpstreamRemoteAddress:   socketAddress(t.upstream),
			UpstreamCluster:         t.cluster,
			StartTime:               timestamppb.New(t.start),
			Duration:                durationpb.New(time.Since(t.start)),
			Metadata:                &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{metadataNS: t.meta}},
		},
		ProtocolVersion: datav3.HTTPAccessLogEntry_HTTP11,
		Request: &datav3.HTTPRequestProperties{
			RequestMethod: corev3.RequestMethod_GET,
			Authority:     t.authority,
			Path:          t.path,
		},
	}
	if status != 0 {
		e.Response = &datav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(uint32(status))}
	}
	return e
}

func socketAddress(hostport string) *corev3.Address {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil
	}
	p, _ := strconv.Atoi(port)
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
	}}}
}
