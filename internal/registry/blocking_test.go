package registry

import (
	"context"
	"testing"
	"time"
)

func TestNextIndex(t *testing.T) {
	for _, c := range []struct{ prev, got, want uint64 }{{5, 7, 7}, {7, 3, 0}, {0, 0, 1}, {4, 4, 4}} {
		if got := NextIndex(c.prev, c.got); got != c.want {
			t.Errorf("NextIndex(%d, %d) = %d, want %d", c.prev, c.got, got, c.want)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	lo, hi := 100*time.Millisecond, time.Second
	for failures := 1; failures < 40; failures++ {
		d := lo << min(failures-1, 20)
		if d > hi || d <= 0 {
			d = hi
		}
		for range 20 {
			if got := Backoff(lo, hi, failures); got < d/2 || got > d {
				t.Fatalf("Backoff(failures=%d) = %v, want in [%v, %v]", failures, got, d/2, d)
			}
		}
	}
}

func TestSleepStopsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep waited past a cancelled context")
	}
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep did not complete")
	}
}
