package httplimit_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/httplimit"
)

// readsAll reads a request's whole body before it answers, as the
// tracker's admission does.
func readsAll() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusOK)
	})
}

func serve(t *testing.T, l httplimit.Limits, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := l.Server(h)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// closedBy reads c until the server closes it, and says how long it took;
// a generous bound only catches a server that never closes.
func closedBy(t *testing.T, c net.Conn) time.Duration {
	t.Helper()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		t.Fatalf("the server kept the connection open: %v", err)
	}
	return time.Since(start)
}

// TestSlowAndIdleClientsAreCut: a client trickling its body, or holding an
// idle keep-alive connection, is disconnected after the limit; headers past
// MaxHeaderBytes are refused. The limits are short: the test is about them.
func TestSlowAndIdleClientsAreCut(t *testing.T) {
	l := httplimit.Limits{ReadHeader: 200 * time.Millisecond, Read: 300 * time.Millisecond, Idle: 300 * time.Millisecond, MaxHeaderBytes: 1 << 10}
	addr := serve(t, l, readsAll())

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if _, err := io.WriteString(slow, "POST /v1/admit HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"); err != nil {
		t.Fatal(err)
	}
	if d := closedBy(t, slow); d < l.Read-100*time.Millisecond {
		t.Errorf("slow client cut after %s, before the read limit %s", d, l.Read)
	}

	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := io.WriteString(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(idle)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusOK {
		t.Fatalf("healthz: %v %v", res, err)
	}
	_, _ = io.Copy(io.Discard, res.Body)
	start := time.Now()
	_ = idle.SetReadDeadline(start.Add(30 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle keep-alive connection: %v, want closed by the server", err)
	}

	big := httptest.NewRequest(http.MethodGet, "http://"+addr+"/healthz", nil)
	big.RequestURI = ""
	big.Header.Set("X-Big", strings.Repeat("b", 8<<10))
	res, err = http.DefaultClient.Do(big)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("8 KB header: status %d, want 431", res.StatusCode)
	}
}

// TestDefaultLimitsBoundEverything: the listeners' defaults leave nothing
// unbounded (a zero would mean no limit).
func TestDefaultLimitsBoundEverything(t *testing.T) {
	s := httplimit.Default.Server(http.NotFoundHandler())
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.IdleTimeout <= 0 || s.MaxHeaderBytes <= 0 {
		t.Errorf("unbounded: %+v", s)
	}
}
