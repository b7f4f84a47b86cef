package xdsclient

import (
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzCandidate feeds arbitrary bytes as resources of every type into the
// candidate builder, over SotW and delta: it must never panic, and a
// rejected response must leave the candidate as it was.
func FuzzCandidate(f *testing.F) {
	for _, r := range fullConfig("seed", 8080) {
		a, err := anypb.New(r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(a.GetValue(), uint8(0), false, "")
		f.Add(a.GetValue(), uint8(1), true, "c1")
		f.Add(a.GetValue(), uint8(2), false, "r1")
		f.Add(a.GetValue(), uint8(3), true, "l1")
	}
	f.Add([]byte{0x0a, 0x02, 'c', '1'}, uint8(2), true, "c1")
	f.Fuzz(func(t *testing.T, data []byte, typ uint8, delta bool, removed string) {
		cand := newCandidate(nil, false)
		// A base to merge into: the seed config.
		for _, tu := range []string{ClusterType, ListenerType, EndpointType, RouteType} {
			var as []*anypb.Any
			for _, r := range fullConfig("base", 8080) {
				if a, _ := anypb.New(r); a.GetTypeUrl() == tu {
					as = append(as, a)
				}
			}
			if _, err := cand.applySotw(tu, "base", as); err != nil {
				t.Fatal(err)
			}
		}
		before := cand.build()
		typeURL := allTypes[int(typ)%len(allTypes)]
		a := &anypb.Any{TypeUrl: typeURL, Value: data}
		var err error
		if delta {
			_, err = cand.applyDelta(typeURL, "fuzz", []*discovery.Resource{{Name: string(data[:min(len(data), 8)]), Resource: a}, {Name: "x"}},
				strings.Split(removed, ","))
		} else {
			_, err = cand.applySotw(typeURL, "fuzz", []*anypb.Any{a, {TypeUrl: typeURL}})
		}
		if err != nil {
			after := cand.build()
			if !sameSnapshot(before, after) {
				t.Fatalf("a rejected response (%v) changed the candidate", err)
			}
		}
		cand.prune()
		for _, k := range cand.missing() {
			cand.fill(k)
		}
		if m := cand.missing(); len(m) != 0 {
			t.Fatalf("still missing after filling: %v", m)
		}
		s := cand.build()
		newCandidate(s, false).build()
	})
}

func sameSnapshot(a, b *Snapshot) bool {
	eq := func(x, y map[string]proto.Message) bool {
		if len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if w, ok := y[k]; !ok || !proto.Equal(v, w) {
				return false
			}
		}
		return true
	}
	ca, cb := newCandidate(a, false), newCandidate(b, false)
	for _, t := range allTypes {
		if !eq(ca.res[t], cb.res[t]) || a.Versions[t] != b.Versions[t] {
			return false
		}
	}
	return true
}
