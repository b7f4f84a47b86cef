package registry

import (
	"context"
	"math/rand/v2"
	"time"
)

// Helpers shared by the sources that watch a remote catalog with blocking
// queries (Consul, Nomad; see CatalogWatch); the sources may not import each
// other.

// NextIndex applies the blocking-query index rules Consul and Nomad
// document: reset to 0 when the index goes backwards (a restored or new
// cluster), and never wait on 0, which would not block and could
// busy-loop.
func NextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got == 0:
		return 1
	}
	return got
}

// Backoff is the delay before retry number failures (from 1): exponential
// from lo, capped at hi, with jitter in [d/2, d].
func Backoff(lo, hi time.Duration, failures int) time.Duration {
	d := lo << min(failures-1, 20)
	if d > hi || d <= 0 {
		d = hi
	}
	return d/2 + rand.N(d/2+1)
}

// Sleep waits d, or less if ctx ends; it reports whether it waited fully.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
