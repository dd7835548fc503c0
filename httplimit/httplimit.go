// Package httplimit bounds what an untrusted HTTP client may hold of
// wsgate's listeners (the tracker's admission and telemetry, the scaler's
// telemetry and pod-cost hook), and how much of its input an error answer
// repeats.
package httplimit

import (
	"fmt"
	"net/http"
	"time"
	"unicode/utf8"
)

// maxEchoed bounds how much of a request an error answer repeats.
const maxEchoed = 64

// Limits bound what one client of an HTTP listener may hold: Envoy's
// httpCall sends a small request at once over loopback and reuses its
// connections, so anything slower or idler is not Envoy.
type Limits struct {
	// ReadHeader and Read bound reading a request's headers, and all of
	// it; Idle bounds a keep-alive connection between requests.
	ReadHeader, Read, Idle time.Duration
	// MaxHeaderBytes bounds a request's headers.
	MaxHeaderBytes int
}

// Default are the bounds of the tracker's and scaler's listeners.
// Read is far above a loopback request's microseconds (a loaded machine
// included) and far below a slow client's minutes.
var Default = Limits{ReadHeader: 5 * time.Second, Read: 10 * time.Second, Idle: 2 * time.Minute, MaxHeaderBytes: 16 << 10}

// Server returns an http.Server for h with l's bounds.
func (l Limits) Server(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: l.ReadHeader, ReadTimeout: l.Read, IdleTimeout: l.Idle, MaxHeaderBytes: l.MaxHeaderBytes}
}

// Clip shortens a caller's input for an error message: it is echoed only
// as much as it takes to recognise it (at most 64 bytes, whole runes).
func Clip(s string) string {
	if len(s) <= maxEchoed {
		return s
	}
	cut := maxEchoed
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes)", s[:cut], len(s))
}
