// Package wsdial is the tests' WebSocket client: it dials through a
// gateway (the Envoy stand-in, or a real Envoy) as a client does and keeps
// what the client was told, the connection when admitted, else the status
// and wsgate's reason and Retry-After headers.
package wsdial

import (
	"context"
	"errors"
	"io"
	"strconv"

	"github.com/coder/websocket"
)

// Result is one client's attempt.
type Result struct {
	Conn       *websocket.Conn // nil unless the upgrade succeeded
	Status     int             // HTTP status of the answer (0: none came)
	Reason     string          // X-Wsgate-Reason
	RetryAfter string          // Retry-After
	Err        error
}

// Dial opens a WebSocket to url with opts (nil: none) and returns what came
// back. The response body of a refusal is read and closed.
func Dial(ctx context.Context, url string, opts *websocket.DialOptions) Result {
	c, resp, err := websocket.Dial(ctx, url, opts)
	r := Result{Conn: c, Err: err}
	if err != nil {
		r.Conn = nil
	}
	if resp != nil {
		r.Status = resp.StatusCode
		r.RetryAfter = resp.Header.Get("Retry-After")
		r.Reason = resp.Header.Get("X-Wsgate-Reason")
		if resp.Body != nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	return r
}

// Outcome names the attempt as a client saw it: "admitted", wsgate's
// reason, "status_<code>" when the gateway gave none, or "dial_error" when
// no HTTP answer came.
func (r Result) Outcome() string {
	switch {
	case r.Conn != nil:
		return "admitted"
	case r.Reason != "":
		return r.Reason
	case r.Status != 0:
		return "status_" + strconv.Itoa(r.Status)
	default:
		return "dial_error"
	}
}

// Ping proves the tunnel carries data end to end: the backends
// (test/wsbackend) echo what they get.
func Ping(ctx context.Context, c *websocket.Conn) error {
	if err := c.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
		return err
	}
	_, msg, err := c.Read(ctx)
	if err != nil {
		return err
	}
	if string(msg) != "ping" {
		return errors.New("echo mismatch: " + string(msg))
	}
	return nil
}
