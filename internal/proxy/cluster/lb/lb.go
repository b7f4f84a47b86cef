// Package lb holds weft-proxy's load-balancing algorithms over a fixed,
// weighted list of hosts: smooth weighted round robin, least request with
// power-of-N choices, weighted random, ketama-like ring hash and Maglev.
//
// The algorithms know nothing about endpoints, health or localities: the
// caller (package cluster) builds a Picker over the hosts currently
// available, identified by their index in that list, and rebuilds it when
// the list changes. Building allocates; Pick never does, and every Picker is
// safe for concurrent use.
package lb

import (
	"fmt"
	"math/rand/v2"
)

// Request is what one pick may depend on.
type Request struct {
	// Hash is the request's hash key (consistent hashing policies only).
	Hash uint64
	// HasHash reports whether Hash is set; without it a hashing policy
	// picks a random host, as Envoy does.
	HasHash bool
	// Attempt counts the picks made for this request so far (0 for the
	// first). Hashing policies use it to move to another host when the
	// caller rejected the previous one (retry host predicate).
	Attempt int
}

// Picker chooses one host, returning its index in the list it was built
// over.
type Picker interface {
	Pick(r Request) int
}

// Loads reports the in-flight requests of host i (least request).
type Loads interface {
	Load(i int) int64
}

// Policy names a load-balancing algorithm.
type Policy int

const (
	// RoundRobin is smooth weighted round robin (nginx's algorithm).
	RoundRobin Policy = iota
	// LeastRequest samples Choices hosts by weight and takes the one with
	// the fewest in-flight requests relative to its weight.
	LeastRequest
	// Random picks a host at random, proportionally to its weight.
	Random
	// RingHash is a ketama-like consistent hash ring.
	RingHash
	// Maglev is Google's Maglev consistent hashing table.
	Maglev
)

// String returns Envoy's name of the policy.
func (p Policy) String() string {
	switch p {
	case RoundRobin:
		return "ROUND_ROBIN"
	case LeastRequest:
		return "LEAST_REQUEST"
	case Random:
		return "RANDOM"
	case RingHash:
		return "RING_HASH"
	case Maglev:
		return "MAGLEV"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// Hashing reports whether the policy hashes the request.
func (p Policy) Hashing() bool { return p == RingHash || p == Maglev }

// Config tunes the policies; zero values mean the defaults.
type Config struct {
	// Choices is the number of hosts least request samples. Default 2.
	Choices int
	// MinRingSize and MaxRingSize bound the number of ring entries.
	// Defaults 1024 and 8M (Envoy's).
	MinRingSize, MaxRingSize uint64
	// TableSize is the Maglev table size, a prime. Default 65537.
	TableSize uint64
}

const (
	// DefaultMinRingSize is Envoy's default minimum_ring_size.
	DefaultMinRingSize = 1024
	// DefaultMaxRingSize is Envoy's default (and largest) maximum_ring_size.
	DefaultMaxRingSize = 8 * 1024 * 1024
	// DefaultTableSize is Envoy's default Maglev table size.
	DefaultTableSize = 65537
	// MaxTableSize is the largest Maglev table size Envoy accepts.
	MaxTableSize = 5000011
)

// New builds a Picker of policy p over hosts with the given weights (0
// counts as 1). loads is used by LeastRequest only; names (stable host
// identities such as "ip:port") by the hashing policies only, so that a
// host keeps its place when others come and go. weights must not be empty.
func New(p Policy, weights []uint32, names []string, loads Loads, cfg Config) (Picker, error) {
	if len(weights) == 0 {
		return nil, fmt.Errorf("lb: no hosts")
	}
	w := make([]uint64, len(weights))
	for i, x := range weights {
		w[i] = uint64(max(x, 1))
	}
	switch p {
	case RoundRobin:
		return newRoundRobin(w), nil
	case Random:
		return newRandom(w), nil
	case LeastRequest:
		if loads == nil {
			return nil, fmt.Errorf("lb: least request needs loads")
		}
		return newLeastRequest(w, loads, cfg.Choices), nil
	case RingHash:
		if len(names) != len(w) {
			return nil, fmt.Errorf("lb: ring hash needs one name per host")
		}
		return newRingHash(w, names, cfg.MinRingSize, cfg.MaxRingSize)
	case Maglev:
		if len(names) != len(w) {
			return nil, fmt.Errorf("lb: maglev needs one name per host")
		}
		return newMaglev(w, names, cfg.TableSize)
	}
	return nil, fmt.Errorf("lb: unknown policy %v", p)
}

// randomHash is the hash of a request without a hash key.
func randomHash(r Request) uint64 {
	if r.HasHash {
		return r.Hash
	}
	return rand.Uint64()
}

// Hash64 is the stable 64-bit string hash the hashing policies place hosts
// with: FNV-1a finished with a splitmix64 mix. It is the same on every
// weft-proxy, so that all proxies map a key to the same host.
func Hash64(s string, seed uint64) uint64 {
	h := uint64(14695981039346656037) ^ seed
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return Mix64(h)
}

// Mix64 is splitmix64's finaliser: a bijective avalanche of x.
func Mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// gcd is the greatest common divisor of a and b.
func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
