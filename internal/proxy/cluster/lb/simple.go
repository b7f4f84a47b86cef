package lb

import (
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
)

// maxSchedule bounds the precomputed round-robin schedule (entries).
const maxSchedule = 1 << 14

// roundRobin is smooth weighted round robin. When the weights (divided by
// their gcd) sum to at most maxSchedule, one period of the sequence is
// precomputed and Pick is a lock-free counter increment; otherwise Pick
// runs the smooth algorithm under a mutex.
type roundRobin struct {
	next     atomic.Uint64
	schedule []uint32

	mu      sync.Mutex
	weights []int64
	current []int64
	total   int64
}

func newRoundRobin(w []uint64) *roundRobin {
	g := w[0]
	for _, x := range w[1:] {
		g = gcd(g, x)
	}
	var sum uint64
	weights := make([]int64, len(w))
	for i, x := range w {
		weights[i] = int64(x / g)
		sum += x / g
	}
	rr := &roundRobin{weights: weights, current: make([]int64, len(w)), total: int64(sum)}
	if sum <= maxSchedule {
		rr.schedule = make([]uint32, sum)
		for i := range rr.schedule {
			rr.schedule[i] = uint32(rr.smooth())
		}
		rr.weights, rr.current = nil, nil
	}
	// Start at a random place so that proxies started together do not all
	// send their first requests to the same host.
	rr.next.Store(rand.Uint64N(sum))
	return rr
}

// smooth is one step of nginx's smooth weighted round robin.
func (rr *roundRobin) smooth() int {
	best := 0
	for i, w := range rr.weights {
		rr.current[i] += w
		if rr.current[i] > rr.current[best] {
			best = i
		}
	}
	rr.current[best] -= rr.total
	return best
}

func (rr *roundRobin) Pick(Request) int {
	if rr.schedule != nil {
		n := rr.next.Add(1)
		return int(rr.schedule[n%uint64(len(rr.schedule))])
	}
	rr.mu.Lock()
	i := rr.smooth()
	rr.mu.Unlock()
	return i
}

// weightedRandom draws hosts proportionally to their weights: uniformly
// when all weights are equal, else by binary search over cumulative
// weights.
type weightedRandom struct {
	n     int
	cum   []uint64 // nil when all weights are equal
	total uint64
}

func newWeightedRandom(w []uint64) weightedRandom {
	r := weightedRandom{n: len(w)}
	equal := true
	for _, x := range w {
		equal = equal && x == w[0]
	}
	if equal {
		return r
	}
	r.cum = make([]uint64, len(w))
	for i, x := range w {
		r.total += x
		r.cum[i] = r.total
	}
	return r
}

func (r *weightedRandom) draw() int {
	if r.cum == nil {
		return rand.IntN(r.n)
	}
	x := rand.Uint64N(r.total)
	return sort.Search(len(r.cum), func(i int) bool { return r.cum[i] > x })
}

type random struct{ weightedRandom }

func newRandom(w []uint64) *random { return &random{newWeightedRandom(w)} }

func (r *random) Pick(Request) int { return r.draw() }

// leastRequest draws Choices hosts proportionally to their weights and
// keeps the one with the fewest in-flight requests per unit of weight; on
// a tie the first drawn wins, so that idle hosts are picked in proportion
// to their weights.
type leastRequest struct {
	weightedRandom
	w       []uint64
	loads   Loads
	choices int
}

func newLeastRequest(w []uint64, loads Loads, choices int) *leastRequest {
	if choices < 2 {
		choices = 2
	}
	return &leastRequest{weightedRandom: newWeightedRandom(w), w: w, loads: loads, choices: choices}
}

func (lr *leastRequest) Pick(Request) int {
	if lr.n == 1 {
		return 0
	}
	best := lr.draw()
	bestLoad := uint64(max(lr.loads.Load(best), 0))
	for range lr.choices - 1 {
		c := lr.draw()
		load := uint64(max(lr.loads.Load(c), 0))
		// load(c)/w(c) < load(best)/w(best), without division.
		if load*lr.w[best] < bestLoad*lr.w[c] {
			best, bestLoad = c, load
		}
	}
	return best
}
