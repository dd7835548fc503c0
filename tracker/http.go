package tracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/wsgate/wsgate/httplimit"
	"github.com/wsgate/wsgate/store"
)

// The admission API, called by envoy/wsgate.lua through httpCall on
// 127.0.0.1 (README: How it works).
//
//	POST /v1/admit   {"fleet": "chat", "client": "203.0.113.7:51234", "requestId": "..."}
//	200  x-wsgate-upstream: 10.1.2.3:8080, x-wsgate-conn: <id>
//	429  rate_limit, 503 capacity | no_pods | redis_down | recovering: Retry-After, x-wsgate-reason
//	400  the request is malformed; the body says what is wrong
const (
	HeaderUpstream = "x-wsgate-upstream"
	HeaderConn     = "x-wsgate-conn"
	HeaderFleet    = "x-wsgate-fleet"
	HeaderReason   = "x-wsgate-reason"
)

// maxAdmitBody bounds what an admission request may send.
const maxAdmitBody = 4 << 10

// AdmitRequest is the body of POST /v1/admit.
type AdmitRequest struct {
	Fleet     string `json:"fleet"`
	Client    string `json:"client,omitempty"`
	RequestID string `json:"requestId,omitempty"`
}

// Ready reports whether the tracker can decide admissions: Redis answered
// the last heartbeat of every fleet, or the fallback can decide without it.
func (t *Tracker) Ready() error {
	if t.draining.Load() {
		return errors.New("draining: its Envoy is terminating")
	}
	for _, name := range t.Fleets() {
		fam, err := t.family(name)
		if err != nil {
			continue // removed since Fleets listed it
		}
		for _, f := range fam.groups {
			if err := t.readyGroup(f); err != nil {
				return err
			}
		}
		if err := fam.readyLayout(); err != nil {
			return err
		}
	}
	return nil
}

// readyLayout is Ready's layout guard: a fleet whose layout is unknown or
// not this instance's admits nothing, through Redis or its fallback.
func (fam *family) readyLayout() error {
	fam.mu.Lock()
	recorded, said := fam.recorded, fam.layoutErr
	fam.mu.Unlock()
	switch fam.layout.Load() {
	case layoutUnknown:
		if said != "" {
			return fmt.Errorf("fleet %s: its layout could not be read in Redis yet: %s", fam.name, said)
		}
		return fmt.Errorf("fleet %s: its layout was not read in Redis yet", fam.name)
	case layoutMismatch:
		return fmt.Errorf("fleet %s: Redis records a layout of %d groups, this instance has %d (PROTOCOL.md, \"Shards\")", fam.name, recorded, len(fam.groups))
	}
	return nil
}

// readyGroup is Ready for one group of a fleet (the fleet itself unless
// it has shards).
func (t *Tracker) readyGroup(f *fleet) error {
	name := f.name
	f.mu.Lock()
	ok, degraded, said := f.view.ok, f.degraded, f.redisSaid
	f.mu.Unlock()
	switch {
	case !ok && said != "":
		return fmt.Errorf("fleet %s: no heartbeat has reached Redis yet: %s", name, said)
	case !ok:
		return fmt.Errorf("fleet %s: no heartbeat has reached Redis yet", name)
	case degraded && t.cfg.Fallback == FallbackClosed:
		return fmt.Errorf("fleet %s: %s and fallback is closed", name, said)
	}
	return nil
}

// Handler serves the admission API, /healthz, /readyz and, when gatherer is
// not nil, Prometheus /metrics.
func (t *Tracker) Handler(gatherer prometheus.Gatherer) http.Handler {
	mux := t.telemetryMux(gatherer)
	mux.HandleFunc("POST /v1/admit", t.serveAdmit)
	mux.HandleFunc("/v1/admit", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
	})
	return mux
}

// TelemetryHandler serves /healthz, /readyz, /status and /metrics without the
// admission API, for a listener that probes and Prometheus can reach.
func (t *Tracker) TelemetryHandler(gatherer prometheus.Gatherer) http.Handler {
	return t.telemetryMux(gatherer)
}

func (t *Tracker) telemetryMux(gatherer prometheus.Gatherer) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := t.Ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("GET /status", t.serveStatus)
	if gatherer != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	}
	return mux
}

func (t *Tracker) serveAdmit(w http.ResponseWriter, r *http.Request) {
	req, err := decodeAdmit(w, r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	res, err := t.Admit(r.Context(), req.Fleet)
	switch {
	case errors.Is(err, ErrUnknownFleet):
		http.Error(w, fmt.Sprintf("unknown fleet %q", httplimit.Clip(req.Fleet)), http.StatusBadRequest)
		return
	case err != nil:
		// Only the caller going away gets here; nobody reads the answer.
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	h := w.Header()
	h.Set(HeaderFleet, res.Fleet)
	if res.Admitted {
		h.Set(HeaderUpstream, res.Pod)
		h.Set(HeaderConn, res.Conn)
		w.WriteHeader(http.StatusOK)
		return
	}
	status := http.StatusServiceUnavailable
	if res.Reason == store.ReasonRateLimit {
		status = http.StatusTooManyRequests
	}
	h.Set(HeaderReason, string(res.Reason))
	h.Set("Retry-After", strconv.Itoa(int(max(time.Second, res.RetryAfter)/time.Second)))
	http.Error(w, string(res.Reason), status)
}

func decodeAdmit(w http.ResponseWriter, r *http.Request) (AdmitRequest, error) {
	var req AdmitRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAdmitBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return req, fmt.Errorf("request body larger than %d bytes", maxAdmitBody)
		}
		if errors.Is(err, io.EOF) {
			return req, errors.New(`empty body: want JSON {"fleet": "..."}`)
		}
		return req, fmt.Errorf("malformed JSON body: %s", httplimit.Clip(err.Error()))
	}
	if dec.More() {
		return req, errors.New("body holds more than one JSON value")
	}
	if req.Fleet == "" {
		return req, errors.New(`missing "fleet"`)
	}
	return req, nil
}
