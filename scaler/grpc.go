package scaler

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/kedacore/keda/v2/pkg/scalers/externalscaler"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// GRPC is the scaler's gRPC endpoint: the external scaler and the standard
// health service, with latency metrics on every method.
type GRPC struct {
	srv    *grpc.Server
	health *health.Server
	scaler *Server
}

// maxRequestBytes bounds one request message.
const maxRequestBytes = 64 << 10

// NewGRPC serves s, over TLS when tlsConfig is not nil (see LoadTLS).
func NewGRPC(s *Server, tlsConfig *tls.Config) *GRPC {
	opts := []grpc.ServerOption{
		// KEDA's requests are a trigger's few metadata keys: far below
		// gRPC's default 4 MB, which would let one call echo megabytes.
		grpc.MaxRecvMsgSize(maxRequestBytes),
		grpc.ChainUnaryInterceptor(s.metrics.unary),
		grpc.ChainStreamInterceptor(s.metrics.stream),
	}
	if tlsConfig != nil {
		opts = append(opts, grpc.Creds(loggedHandshakes{credentials.NewTLS(tlsConfig), s}))
	}
	g := &GRPC{srv: grpc.NewServer(opts...), health: health.NewServer(), scaler: s}
	externalscaler.RegisterExternalScalerServer(g.srv, s)
	healthpb.RegisterHealthServer(g.srv, g.health)
	g.health.SetServingStatus(externalscaler.ExternalScaler_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	return g
}

// Serve accepts connections on ln until Stop.
func (g *GRPC) Serve(ln net.Listener) error {
	if err := g.srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("scaler grpc: %w", err)
	}
	return nil
}

// Stop reports NOT_SERVING, ends the streams and lets unary calls finish;
// when ctx ends first, the remaining connections are closed.
func (g *GRPC) Stop(ctx context.Context) {
	g.health.Shutdown()
	g.scaler.Close()
	done := make(chan struct{})
	go func() { g.srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		g.srv.Stop()
		<-done
	}
}

// LoadTLS builds the server side of what KEDA's external trigger sends:
// enableTLS with caCert (the CA of certFile) makes KEDA verify the server;
// tlsClientCert/tlsClientKey are verified against clientCAFile when it is
// set, and then required. All empty: nil, plaintext.
func LoadTLS(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	if certFile == "" && keyFile == "" {
		if clientCAFile != "" {
			return nil, errors.New("tls: a client CA needs a server certificate and key")
		}
		return nil, nil
	}
	if certFile == "" || keyFile == "" {
		return nil, errors.New("tls: the server certificate needs both the cert and the key file")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls server certificate: %w", err)
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if clientCAFile != "" {
		pem, err := os.ReadFile(clientCAFile)
		if err != nil {
			return nil, fmt.Errorf("tls client ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls client ca %s: no PEM certificate found", clientCAFile)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}

// loggedHandshakes logs and counts the TLS handshakes that fail: gRPC
// drops such a connection silently, and an expired certificate or a KEDA
// without the client certificate would otherwise show only as KEDA's
// errors, on the other side.
type loggedHandshakes struct {
	credentials.TransportCredentials
	s *Server
}

func (l loggedHandshakes) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := l.TransportCredentials.ServerHandshake(c)
	if err != nil {
		l.s.metrics.TLSHandshakeFailures.Inc()
		l.s.log.Warn("TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
	}
	return conn, info, err
}

func (l loggedHandshakes) Clone() credentials.TransportCredentials {
	return loggedHandshakes{l.TransportCredentials.Clone(), l.s}
}
