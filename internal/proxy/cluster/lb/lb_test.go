package lb

import (
	"fmt"
	"math"
	"testing"
)

type zeroLoads struct{}

func (zeroLoads) Load(int) int64 { return 0 }

type sliceLoads []int64

func (s sliceLoads) Load(i int) int64 { return s[i] }

func names(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1)
	}
	return out
}

// checkShares fails when the observed shares deviate from the weights by
// more than tol (absolute, as a fraction of all picks).
func checkShares(t *testing.T, counts []int, weights []uint32, tol float64) {
	t.Helper()
	var total, wsum float64
	for i := range counts {
		total += float64(counts[i])
		wsum += float64(weights[i])
	}
	for i := range counts {
		got, want := float64(counts[i])/total, float64(weights[i])/wsum
		if math.Abs(got-want) > tol {
			t.Errorf("host %d: share %.4f, want %.4f ± %.3f (counts %v)", i, got, want, tol, counts)
		}
	}
}

func TestDistribution(t *testing.T) {
	weights := []uint32{1, 2, 3, 4}
	for _, p := range []Policy{RoundRobin, LeastRequest, Random, RingHash, Maglev} {
		t.Run(p.String(), func(t *testing.T) {
			pk, err := New(p, weights, names(len(weights)), zeroLoads{}, Config{})
			if err != nil {
				t.Fatal(err)
			}
			counts := make([]int, len(weights))
			for i := range 10000 {
				// Hashing policies get well-spread keys.
				counts[pk.Pick(Request{Hash: Mix64(uint64(i)), HasHash: true})]++
			}
			tol := 0.02
			if p == RoundRobin {
				tol = 0.001 // exact up to rounding
			}
			checkShares(t, counts, weights, tol)
		})
	}
}

func TestRoundRobinSmooth(t *testing.T) {
	pk, _ := New(RoundRobin, []uint32{5, 1, 1}, nil, nil, Config{})
	// Any 7 consecutive picks are one period: 5, 1, 1.
	for range 3 {
		counts := make([]int, 3)
		for range 7 {
			counts[pk.Pick(Request{})]++
		}
		if counts[0] != 5 || counts[1] != 1 || counts[2] != 1 {
			t.Fatalf("one period picked %v, want [5 1 1]", counts)
		}
	}
}

func TestRoundRobinLargeWeights(t *testing.T) {
	// Weights summing above maxSchedule use the locked smooth algorithm.
	weights := []uint32{40000, 20000, 20001}
	pk, _ := New(RoundRobin, weights, nil, nil, Config{})
	if pk.(*roundRobin).schedule != nil {
		t.Fatal("expected no precomputed schedule")
	}
	counts := make([]int, 3)
	for range 80001 {
		counts[pk.Pick(Request{})]++
	}
	checkShares(t, counts, weights, 0.001)
}

func TestLeastRequestPrefersIdle(t *testing.T) {
	loads := sliceLoads{100, 0, 100, 100}
	pk, _ := New(LeastRequest, []uint32{1, 1, 1, 1}, nil, loads, Config{Choices: 2})
	counts := make([]int, 4)
	for range 10000 {
		counts[pk.Pick(Request{})]++
	}
	// Host 1 wins whenever it is drawn: 1-(3/4)^2 = 43.75%.
	if got := float64(counts[1]) / 10000; math.Abs(got-0.4375) > 0.02 {
		t.Errorf("idle host share %.3f, want ≈ 0.4375 (%v)", got, counts)
	}
	// Weighted: load 10 on weight 10 beats load 2 on weight 1.
	pk, _ = New(LeastRequest, []uint32{10, 1}, nil, sliceLoads{10, 2}, Config{Choices: 5})
	counts = make([]int, 2)
	for range 10000 {
		counts[pk.Pick(Request{})]++
	}
	if counts[1] > 100 {
		t.Errorf("weighted least request picked the overloaded light host %d times", counts[1])
	}
}

// remapped counts the keys whose host changes (other than the keys of the
// removed host) when host `removed` is dropped.
func remapped(t *testing.T, p Policy, n, removed int) (moved, total int) {
	t.Helper()
	all := names(n)
	w := make([]uint32, n)
	for i := range w {
		w[i] = 1
	}
	before, err := New(p, w, all, nil, Config{})
	if err != nil {
		t.Fatal(err)
	}
	rest := append(append([]string(nil), all[:removed]...), all[removed+1:]...)
	after, _ := New(p, w[1:], rest, nil, Config{})
	for k := range 10000 {
		req := Request{Hash: Mix64(uint64(k) + 12345), HasHash: true}
		a := before.Pick(req)
		if a == removed {
			continue
		}
		total++
		if rest[after.Pick(req)] != all[a] {
			moved++
		}
	}
	return moved, total
}

func TestConsistentHashing(t *testing.T) {
	for _, p := range []Policy{RingHash, Maglev} {
		t.Run(p.String(), func(t *testing.T) {
			pk, _ := New(p, []uint32{1, 1, 1, 1, 1}, names(5), nil, Config{})
			pk2, _ := New(p, []uint32{1, 1, 1, 1, 1}, names(5), nil, Config{})
			for k := range 1000 {
				req := Request{Hash: Mix64(uint64(k)), HasHash: true}
				a := pk.Pick(req)
				if pk.Pick(req) != a || pk2.Pick(req) != a {
					t.Fatalf("key %d: not consistent", k)
				}
			}
			// Removing one of 10 hosts moves its own keys (~1/10) and,
			// ideally, no others: Maglev moves a few, a ring none.
			moved, total := remapped(t, p, 10, 3)
			if frac := float64(moved) / float64(total); frac > 0.02 {
				t.Errorf("%d of %d keys of remaining hosts moved (%.3f)", moved, total, frac)
			}
		})
	}
}

func TestHashAttemptMoves(t *testing.T) {
	for _, p := range []Policy{RingHash, Maglev} {
		pk, _ := New(p, []uint32{1, 1, 1}, names(3), nil, Config{})
		moved := 0
		for k := range 1000 {
			req := Request{Hash: Mix64(uint64(k)), HasHash: true}
			a := pk.Pick(req)
			req.Attempt = 1
			if pk.Pick(req) != a {
				moved++
			}
		}
		if moved < 300 {
			t.Errorf("%v: attempt 1 moved only %d of 1000 keys", p, moved)
		}
	}
}

func TestRingSize(t *testing.T) {
	pk, _ := New(RingHash, []uint32{1, 3}, names(2), nil, Config{MinRingSize: 1024, MaxRingSize: 8 << 20})
	if n := pk.(*ringHash).Size(); n < 1024 || n > 8192 {
		t.Errorf("ring size %d", n)
	}
	pk, _ = New(RingHash, []uint32{1, 1000}, names(2), nil, Config{MinRingSize: 1024, MaxRingSize: 4096})
	if n := pk.(*ringHash).Size(); n > 4096+2 {
		t.Errorf("ring size %d above maximum", n)
	}
	if _, err := New(RingHash, []uint32{1}, names(1), nil, Config{MinRingSize: 10, MaxRingSize: 5}); err == nil {
		t.Error("min above max accepted")
	}
	if _, err := New(Maglev, []uint32{1}, names(1), nil, Config{TableSize: 65536}); err == nil {
		t.Error("non-prime table size accepted")
	}
}

func BenchmarkPick(b *testing.B) {
	w := make([]uint32, 100)
	for i := range w {
		w[i] = uint32(1 + i%5)
	}
	loads := make(sliceLoads, 100)
	for _, p := range []Policy{RoundRobin, LeastRequest, Random, RingHash, Maglev} {
		b.Run(p.String(), func(b *testing.B) {
			pk, err := New(p, w, names(100), loads, Config{})
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			var k uint64
			for b.Loop() {
				k++
				pk.Pick(Request{Hash: k * 0x9e3779b97f4a7c15, HasHash: true})
			}
		})
	}
}
