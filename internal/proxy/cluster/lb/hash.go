package lb

import (
	"fmt"
	"math"
	"math/bits"
	"slices"
	"sort"
)

// ringHash is a ketama-like consistent hash ring: each host owns a number
// of points proportional to its weight (Envoy's scaling between the
// minimum and maximum ring size); a request goes to the first point at or
// after its hash.
type ringHash struct {
	hashes []uint64
	hosts  []uint32
}

type ringEntry struct {
	hash uint64
	host uint32
}

func newRingHash(w []uint64, names []string, minSize, maxSize uint64) (*ringHash, error) {
	if minSize == 0 {
		minSize = DefaultMinRingSize
	}
	if maxSize == 0 {
		maxSize = DefaultMaxRingSize
	}
	if minSize > maxSize {
		return nil, fmt.Errorf("lb: ring hash minimum size %d above maximum %d", minSize, maxSize)
	}
	var sum uint64
	for _, x := range w {
		sum += x
	}
	minNorm := math.Inf(1)
	for _, x := range w {
		minNorm = min(minNorm, float64(x)/float64(sum))
	}
	// As Envoy, enough points that the ring has at least minSize, never
	// more than maxSize; unlike Envoy, the lightest host's share is
	// rounded up to a power of two so that adding or removing a host
	// rarely changes the other hosts' points (and so their keys).
	base := float64(uint64(1) << bits.Len64(uint64(math.Ceil(minNorm*float64(minSize)))-1))
	scale := min(base/minNorm, float64(maxSize))
	ring := make([]ringEntry, 0, int(scale)+len(w))
	var current, target float64
	for i, x := range w {
		target += scale * float64(x) / float64(sum)
		base := Hash64(names[i], 0)
		for k := uint64(0); current < target; k++ {
			ring = append(ring, ringEntry{hash: Mix64(base ^ Mix64(k+1)), host: uint32(i)})
			current++
		}
	}
	slices.SortFunc(ring, func(a, b ringEntry) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return int(a.host) - int(b.host)
	})
	r := &ringHash{hashes: make([]uint64, len(ring)), hosts: make([]uint32, len(ring))}
	for i, e := range ring {
		r.hashes[i], r.hosts[i] = e.hash, e.host
	}
	return r, nil
}

// Size is the number of points on the ring.
func (r *ringHash) Size() int { return len(r.hashes) }

func (r *ringHash) Pick(req Request) int {
	h := randomHash(req)
	i := sort.Search(len(r.hashes), func(i int) bool { return r.hashes[i] >= h })
	// A retry moves on along the ring, as Envoy does.
	i = (i + req.Attempt) % len(r.hashes)
	return int(r.hosts[i])
}

// maglev is Google's Maglev table (Envoy's weighted variant): each host
// fills table slots along its own permutation, hosts taking turns in
// proportion to their weights; a request goes to slot hash mod size.
type maglev struct {
	table []uint32
}

// Maglev permutation seeds (any two distinct constants).
const (
	maglevOffsetSeed = 0x6d61676c65763031
	maglevSkipSeed   = 0x6d61676c65763032
)

func newMaglev(w []uint64, names []string, size uint64) (*maglev, error) {
	if size == 0 {
		size = DefaultTableSize
	}
	if !ValidTableSize(size) {
		return nil, fmt.Errorf("lb: maglev table size %d is not a prime up to %d", size, MaxTableSize)
	}
	type entry struct {
		offset, skip, next, target uint64
		weight                     uint64
	}
	var maxW uint64
	for _, x := range w {
		maxW = max(maxW, x)
	}
	entries := make([]entry, len(w))
	for i := range entries {
		entries[i] = entry{
			offset: Hash64(names[i], maglevOffsetSeed) % size,
			skip:   Hash64(names[i], maglevSkipSeed)%(size-1) + 1,
			weight: w[i],
		}
	}
	const empty = math.MaxUint32
	table := make([]uint32, size)
	for i := range table {
		table[i] = empty
	}
	filled := uint64(0)
	for iter := uint64(1); filled < size; iter++ {
		for i := range entries {
			if filled == size {
				break
			}
			e := &entries[i]
			// A host of the largest weight takes a slot every round, one
			// of a third of that weight every third round.
			if iter*e.weight < e.target {
				continue
			}
			e.target += maxW
			c := (e.offset + e.skip*e.next) % size
			for table[c] != empty {
				e.next++
				c = (e.offset + e.skip*e.next) % size
			}
			table[c] = uint32(i)
			e.next++
			filled++
		}
	}
	return &maglev{table: table}, nil
}

func (m *maglev) Pick(req Request) int {
	h := randomHash(req)
	if req.Attempt > 0 {
		h = Mix64(h + uint64(req.Attempt))
	}
	return int(m.table[h%uint64(len(m.table))])
}

// ValidTableSize reports whether n is a valid Maglev table size: a prime
// up to MaxTableSize.
func ValidTableSize(n uint64) bool { return n <= MaxTableSize && isPrime(n) }

// isPrime reports whether n is prime (trial division; n is small).
func isPrime(n uint64) bool {
	if n < 2 {
		return false
	}
	for d := uint64(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}
