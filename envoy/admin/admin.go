// Package admin is the part of Envoy's admin API a terminating pod needs:
// fail its health check, drain its listeners, and tell whether Envoy is
// still running (the tracker beside it may leave Redis once it is not).
package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// Client talks to Envoy's admin listener (envoy.yaml: 127.0.0.1:9901).
type Client struct {
	Addr string
	HTTP *http.Client
}

// New returns a Client of the admin listener at addr ("host:port").
func New(addr string) *Client {
	return &Client{Addr: addr, HTTP: &http.Client{Timeout: 5 * time.Second}}
}

// FailHealthcheck makes Envoy's health check fail (POST /healthcheck/fail).
func (c *Client) FailHealthcheck(ctx context.Context) error {
	return c.post(ctx, "/healthcheck/fail")
}

// DrainListeners starts Envoy's graceful drain (POST
// /drain_listeners?graceful): new connections are told to go away and,
// after its --drain-time-s, the listeners close; established connections,
// upgraded WebSockets among them, are not cut.
func (c *Client) DrainListeners(ctx context.Context) error {
	return c.post(ctx, "/drain_listeners?graceful")
}

func (c *Client) post(ctx context.Context, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.Addr+path, nil)
	if err != nil {
		return fmt.Errorf("envoy admin %s: %w", path, err)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return fmt.Errorf("envoy admin %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("envoy admin %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// Gone reports whether nothing listens on the admin address any more: the
// Envoy process has exited, and with it every connection it carried. Any
// other outcome (it answers, or the dial times out) is not proof.
func (c *Client) Gone() bool {
	conn, err := net.DialTimeout("tcp", c.Addr, time.Second)
	if err == nil {
		conn.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}
