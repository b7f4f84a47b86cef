package cluster

import (
	"fmt"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
)

// benchCluster has 100 endpoints in 4 weighted localities, weights 1-5.
func benchCluster(b *testing.B, p clusterv3.Cluster_LbPolicy) *Cluster {
	var locs []loc
	for l := range 4 {
		var eps []ep
		for i := range 25 {
			eps = append(eps, ep{addr: fmt.Sprintf("10.%d.0.%d", l, i+1), weight: uint32(1 + i%5)})
		}
		locs = append(locs, loc{region: fmt.Sprintf("r%d", l), weight: uint32(75 + l), eps: eps})
	}
	return mustCompile(b, edsCluster("bench", p), cla("bench", locs...))
}

func BenchmarkPick(b *testing.B) {
	for _, p := range policies {
		b.Run(p.String(), func(b *testing.B) {
			c := benchCluster(b, p)
			ctx := PickContext{HasHash: true}
			c.Pick(ctx) // builds the pick structures
			b.ReportAllocs()
			for b.Loop() {
				ctx.HashKey += 0x9e3779b97f4a7c15
				if _, err := c.Pick(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkPickParallel(b *testing.B) {
	for _, p := range []clusterv3.Cluster_LbPolicy{clusterv3.Cluster_ROUND_ROBIN, clusterv3.Cluster_LEAST_REQUEST} {
		b.Run(p.String(), func(b *testing.B) {
			c := benchCluster(b, p)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					e, _ := c.Pick(PickContext{})
					e.StartRequest()
					e.EndRequest()
				}
			})
		})
	}
}

func BenchmarkAcquire(b *testing.B) {
	c := benchCluster(b, clusterv3.Cluster_ROUND_ROBIN)
	s := c.State()
	b.ReportAllocs()
	for b.Loop() {
		if rel, ok := s.Acquire(Requests); ok {
			rel()
		}
	}
}

func BenchmarkReport(b *testing.B) {
	c := mustCompile(b, outlierCluster("c", 5, 10), cla("c", loc{eps: []ep{{addr: "10.0.0.1"}, {addr: "10.0.0.2"}}}))
	e := c.Endpoints()[0]
	b.ReportAllocs()
	for b.Loop() {
		c.State().Report(e, Outcome{Status: 200})
	}
}
