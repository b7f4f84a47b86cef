package cluster

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Outcome is the result of one request (or TCP connection) to an endpoint,
// as passive outlier detection sees it.
type Outcome struct {
	// Status is the HTTP response status; 0 when there is none (TCP, or
	// the request failed before a response).
	Status int
	// ConnectFailure reports that connecting to the endpoint failed.
	ConnectFailure bool
	// GatewayError reports a failure after connecting without a usable
	// response: reset, timeout.
	GatewayError bool
}

// Report feeds one outcome of a request to ep into passive outlier
// detection (Envoy's consecutive_5xx, consecutive_gateway_failure and,
// with split_external_local_origin_errors, consecutive_local_origin_failure).
// Without split, local failures count as a 503. An endpoint reaching a
// threshold is ejected (subject to the enforcing percentage and
// max_ejection_percent) for base_ejection_time × the number of times it
// was ejected, capped at max_ejection_time. Report also runs due
// un-ejections. It does nothing for clusters without outlier detection.
func (s *State) Report(ep *Endpoint, o Outcome) {
	cfg := s.outlier.Load()
	if cfg == nil || ep == nil || ep.live == nil {
		return
	}
	s.maybeSweep()
	l := ep.live
	local := o.ConnectFailure || o.GatewayError
	if cfg.SplitLocalOrigin {
		if local {
			if l.consLocal.Add(1) >= cfg.ConsecutiveLocalOrigin {
				l.consLocal.Store(0)
				s.eject(l, cfg, cfg.EnforcingLocalOrigin)
			}
			return
		}
		reset(&l.consLocal)
		if o.Status == 0 {
			return
		}
	}
	status := o.Status
	if local && !cfg.SplitLocalOrigin {
		status = 503
	}
	if status < 500 || status > 599 {
		reset(&l.cons5xx)
		reset(&l.consGateway)
		return
	}
	if status >= 502 && status <= 504 {
		if l.consGateway.Add(1) >= cfg.ConsecutiveGatewayFailure {
			l.consGateway.Store(0)
			s.eject(l, cfg, cfg.EnforcingGatewayFailure)
		}
	} else {
		reset(&l.consGateway)
	}
	if l.cons5xx.Add(1) >= cfg.Consecutive5xx {
		l.cons5xx.Store(0)
		s.eject(l, cfg, cfg.Enforcing5xx)
	}
}

// reset zeroes a counter, writing only when needed.
func reset(c *atomic.Uint32) {
	if c.Load() != 0 {
		c.Store(0)
	}
}

// eject ejects l if enforcing (a percentage) and max_ejection_percent
// allow.
func (s *State) eject(l *endpointLive, cfg *OutlierConfig, enforcing uint32) {
	if enforcing == 0 || (enforcing < 100 && rand.Uint32N(100) >= enforcing) {
		return
	}
	now := s.clock.Now().UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !l.member || l.ejected.Load() || s.members == 0 {
		return
	}
	if s.ejected*100 >= s.members*int(cfg.MaxEjectionPercent) && !(cfg.AlwaysEjectOne && s.ejected == 0) {
		return
	}
	l.numEjections++
	l.ejectedAt = now
	l.ejected.Store(true)
	s.ejected++
	if s.nextSweep.Load() == 0 {
		s.nextSweep.Store(now + int64(cfg.Interval))
	}
	s.gen.Add(1)
}

// maybeSweep runs the interval sweep when it is due: cheap (one atomic
// load) when nothing is ejected.
func (s *State) maybeSweep() {
	next := s.nextSweep.Load()
	if next == 0 {
		return
	}
	now := s.clock.Now().UnixNano()
	if now < next || !s.mu.TryLock() {
		return
	}
	defer s.mu.Unlock()
	if next = s.nextSweep.Load(); next == 0 || now < next {
		return
	}
	cfg := s.outlier.Load()
	if cfg == nil {
		s.nextSweep.Store(0)
		return
	}
	changed, pending := false, false
	for _, l := range s.live {
		switch {
		case l.ejected.Load():
			d := min(cfg.BaseEjectionTime*time.Duration(l.numEjections), cfg.MaxEjectionTime)
			if now >= l.ejectedAt+int64(d) {
				l.ejected.Store(false)
				s.ejected--
				changed = true
			}
			pending = true
		case l.numEjections > 0:
			// A host that stayed in for an interval backs off less
			// next time.
			l.numEjections--
			pending = pending || l.numEjections > 0
		}
	}
	if pending {
		s.nextSweep.Store(now + int64(cfg.Interval))
	} else {
		s.nextSweep.Store(0)
	}
	if changed {
		s.gen.Add(1)
	}
}
