package faults

import (
	"net"
	"sync"
	"testing"
	"time"
)

// redisProxy is a TCP proxy between one tracker and Redis (and, with
// options.accessLogProxy, one between a gateway and its tracker's
// access-log receiver, for drop and heal). It forwards
// everything, except: one request (or its reply) matching an armed rule
// is held back for the rule's delay; black-holed, it accepts connections
// and swallows every byte both ways (a network partition: the tracker's
// calls time out); dropped, it closes every connection and refuses new
// ones (connections reset).
type redisProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	mode  proxyMode
	conns map[*proxyConn]struct{}
	rules []*delayRule
	// slow delays every request towards Redis by this long (0: none).
	slow time.Duration
}

type proxyMode int

const (
	forwarding proxyMode = iota
	blackholed
	dropping
)

// side is what a delay holds back: the request (Redis runs it late, or
// after the caller gave up) or the reply (Redis ran it at once).
type side int

const (
	onRequest side = iota
	onReply
)

// delayRule holds back the first request matching match (or that
// request's reply) for delay. Fired is closed when it starts holding,
// done when the held bytes were passed on (for a request: and Redis
// answered it, so the call has run).
type delayRule struct {
	match       func([]byte) bool
	side        side
	delay       time.Duration
	fired, done chan struct{}
}

type proxyConn struct {
	down, up net.Conn
	mu       sync.Mutex
	reply    *delayRule    // a reply to hold back
	answered chan struct{} // closed by the next chunk from Redis
	dirty    bool          // bytes were swallowed: the RESP stream is broken
}

func startRedisProxy(t *testing.T, target string) *redisProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &redisProxy{ln: ln, target: target, conns: map[*proxyConn]struct{}{}}
	go p.accept()
	return p
}

func (p *redisProxy) addr() string { return p.ln.Addr().String() }

func (p *redisProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		mode, target := p.mode, p.target
		// dirty is set before pc is published: heal reads it.
		pc := &proxyConn{down: c, dirty: mode == blackholed}
		if mode != dropping {
			p.conns[pc] = struct{}{}
		}
		p.mu.Unlock()
		switch mode {
		case dropping:
			c.Close()
			continue
		case blackholed:
			go p.swallow(pc)
			continue
		}
		up, err := net.DialTimeout("tcp", target, 2*time.Second)
		if err != nil {
			p.forget(pc)
			c.Close()
			continue
		}
		pc.mu.Lock()
		pc.up = up
		pc.mu.Unlock()
		go p.forward(pc)
		go p.backward(pc)
	}
}

// swallow reads a connection accepted while black-holed until it closes.
func (p *redisProxy) swallow(pc *proxyConn) {
	buf := make([]byte, 32<<10)
	for {
		if _, err := pc.down.Read(buf); err != nil {
			break
		}
	}
	p.forget(pc)
	pc.down.Close()
}

func (p *redisProxy) forget(pc *proxyConn) {
	p.mu.Lock()
	delete(p.conns, pc)
	p.mu.Unlock()
}

func (p *redisProxy) passing(pc *proxyConn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode != forwarding {
		pc.mu.Lock()
		pc.dirty = true
		pc.mu.Unlock()
		return false
	}
	return true
}

// claim takes the first armed rule that matches chunk.
func (p *redisProxy) claim(chunk []byte) *delayRule {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, r := range p.rules {
		if r.match(chunk) {
			p.rules = append(p.rules[:i], p.rules[i+1:]...)
			return r
		}
	}
	return nil
}

// forward copies the tracker's requests to Redis.
func (p *redisProxy) forward(pc *proxyConn) {
	defer func() { p.forget(pc); pc.up.Close(); pc.down.Close() }()
	buf := make([]byte, 64<<10)
	for {
		n, err := pc.down.Read(buf)
		if n > 0 && p.passing(pc) {
			chunk := buf[:n]
			r := p.claim(chunk)
			switch {
			case r == nil:
				if d := p.slowness(); d > 0 {
					time.Sleep(d) // the fault: Redis answers this late
				}
				if _, werr := pc.up.Write(chunk); werr != nil {
					return
				}
			case r.side == onReply:
				pc.mu.Lock()
				pc.reply = r
				pc.mu.Unlock()
				if _, werr := pc.up.Write(chunk); werr != nil {
					pc.mu.Lock()
					mine := pc.reply == r
					if mine {
						pc.reply = nil
					}
					pc.mu.Unlock()
					if mine {
						close(r.fired)
						close(r.done)
					}
					return
				}
			default:
				close(r.fired)
				time.Sleep(r.delay) // the fault: this request is late
				answered := make(chan struct{})
				pc.mu.Lock()
				pc.answered = answered
				pc.mu.Unlock()
				_, werr := pc.up.Write(chunk)
				if werr == nil {
					// Passed on even if the caller gave up meanwhile: the
					// script runs late. Done once Redis answered it.
					select {
					case <-answered:
					case <-time.After(5 * time.Second):
					}
				}
				close(r.done)
				if werr != nil {
					return
				}
			}
		}
		if err != nil {
			return
		}
	}
}

// backward copies Redis' replies to the tracker.
func (p *redisProxy) backward(pc *proxyConn) {
	defer func() { pc.down.Close(); pc.up.Close() }()
	buf := make([]byte, 64<<10)
	for {
		n, err := pc.up.Read(buf)
		if n > 0 {
			pc.mu.Lock()
			if pc.answered != nil {
				close(pc.answered)
				pc.answered = nil
			}
			r := pc.reply
			pc.reply = nil
			pc.mu.Unlock()
			if p.passing(pc) {
				if r != nil {
					close(r.fired)
					time.Sleep(r.delay) // the fault: this reply is late
				}
				_, werr := pc.down.Write(buf[:n])
				if r != nil {
					close(r.done)
				}
				if werr != nil {
					return
				}
			} else if r != nil {
				close(r.fired)
				close(r.done)
			}
		}
		if err != nil {
			return
		}
	}
}

// delayNext arms a rule: the next request matching match, or its reply,
// is held back for d.
func (p *redisProxy) delayNext(match func([]byte) bool, s side, d time.Duration) *delayRule {
	r := &delayRule{match: match, side: s, delay: d, fired: make(chan struct{}), done: make(chan struct{})}
	p.mu.Lock()
	p.rules = append(p.rules, r)
	p.mu.Unlock()
	return r
}

// slowDown delays every request towards Redis by d from now on, until
// slowDown(0): Redis that answers late.
func (p *redisProxy) slowDown(d time.Duration) {
	p.mu.Lock()
	p.slow = d
	p.mu.Unlock()
}

func (p *redisProxy) slowness() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.slow
}

// blackhole starts swallowing the tracker's Redis traffic, both ways, on
// the connections it has and on new ones.
func (p *redisProxy) blackhole() {
	p.mu.Lock()
	p.mode = blackholed
	p.mu.Unlock()
}

// retarget sends the connections accepted from now on to addr (those
// open stay where they are: drop them first): a Service that follows
// another Redis.
func (p *redisProxy) retarget(addr string) {
	p.mu.Lock()
	p.target = addr
	p.mu.Unlock()
}

// drop closes every connection and refuses new ones until heal.
func (p *redisProxy) drop() {
	p.mu.Lock()
	p.mode = dropping
	cs := p.conns
	p.conns = map[*proxyConn]struct{}{}
	p.mu.Unlock()
	for pc := range cs {
		pc.close()
	}
}

// heal forwards again; connections whose bytes were swallowed are closed
// (their protocol stream is broken), as a partition that ends would leave
// them timed out.
func (p *redisProxy) heal() {
	p.mu.Lock()
	p.mode = forwarding
	var dirty []*proxyConn
	for pc := range p.conns {
		pc.mu.Lock()
		if pc.dirty {
			dirty = append(dirty, pc)
		}
		pc.mu.Unlock()
	}
	p.mu.Unlock()
	for _, pc := range dirty {
		p.forget(pc)
		pc.close()
	}
}

func (pc *proxyConn) close() {
	pc.down.Close()
	pc.mu.Lock()
	up := pc.up
	pc.mu.Unlock()
	if up != nil {
		up.Close()
	}
}

// close ends the proxy and every connection.
func (p *redisProxy) close() {
	p.ln.Close()
	p.drop()
	p.mu.Lock()
	for _, r := range p.rules {
		close(r.fired)
		close(r.done)
	}
	p.rules = nil
	p.mu.Unlock()
}
