package tracker_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/wsgate/wsgate/fleets"
	"github.com/wsgate/wsgate/tracker"
)

func handlerOnly(t *testing.T) http.Handler {
	t.Helper()
	tr, err := tracker.New(tracker.Config{InstanceID: "e1", Fleets: []fleets.Fleet{{Name: "chat"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tr.Handler(nil)
}

// TestErrorsEchoLittleOfTheInput: a 3 KB fleet name or field name is not
// sent back whole.
func TestErrorsEchoLittleOfTheInput(t *testing.T) {
	h := handlerOnly(t)
	long := strings.Repeat("x", 3<<10)
	for _, body := range []string{
		fmt.Sprintf(`{"fleet": %q}`, long),
		fmt.Sprintf(`{"fleet": "chat", %q: 1}`, long),
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/admit", strings.NewReader(body)))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("status %d, want 400", rec.Code)
		}
		if n := rec.Body.Len(); n > 256 {
			t.Errorf("error body of %d bytes echoes the input: %.80s...", n, rec.Body.String())
		}
		if !strings.Contains(rec.Body.String(), "bytes)") {
			t.Errorf("error %q does not say how long the input was", rec.Body.String())
		}
	}
}

// serve runs h with limits l on a loopback listener.
func serve(t *testing.T, l tracker.HTTPLimits, h http.Handler) string {
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
	l := tracker.HTTPLimits{ReadHeader: 200 * time.Millisecond, Read: 300 * time.Millisecond, Idle: 300 * time.Millisecond, MaxHeaderBytes: 1 << 10}
	addr := serve(t, l, handlerOnly(t))

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
	s := tracker.DefaultHTTPLimits.Server(http.NotFoundHandler())
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.IdleTimeout <= 0 || s.MaxHeaderBytes <= 0 {
		t.Errorf("unbounded: %+v", s)
	}
}
