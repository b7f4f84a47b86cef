package bolt

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/weftmesh/weft/internal/store"
	"github.com/weftmesh/weft/internal/store/storetest"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openAt(t testing.TB, path string, opts store.Options) *Store {
	t.Helper()
	s, err := Open(path, opts, quietLogger())
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t,
		func(t *testing.T) store.Store {
			return openAt(t, filepath.Join(t.TempDir(), "weft.db"), storetest.Options())
		},
		func(t *testing.T, s store.Store) store.Store {
			bs := s.(*Store)
			path := bs.db.Path()
			if err := bs.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			return openAt(t, path, storetest.Options())
		})
}

func benchStore(b *testing.B) *Store {
	return openAt(b, filepath.Join(b.TempDir(), "weft.db"), store.Options{})
}

func BenchmarkCreate(b *testing.B)          { storetest.BenchCreate(b, benchStore(b)) }
func BenchmarkList10k(b *testing.B)         { storetest.BenchList(b, benchStore(b), 10000) }
func BenchmarkWatchFanout1000(b *testing.B) { storetest.BenchWatchFanout(b, benchStore(b), 1000) }
