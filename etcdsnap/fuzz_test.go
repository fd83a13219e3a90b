package etcdsnap

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// FuzzOpen: reading a file that is not a snapshot (or a damaged one) ends
// in an error, never a panic, and ends (within 5 s): restore reads files it
// is handed, with --skip-hash-check even without their hash.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	good := filepath.Join(dir, "good.db")
	w, err := Create(good)
	if err != nil {
		f.Fatal(err)
	}
	if err := w.Put(&mvccpb.KeyValue{Key: []byte("k"), Value: []byte("v"), CreateRevision: 2, ModRevision: 2, Version: 1}, false); err != nil {
		f.Fatal(err)
	}
	if err := w.Lease(Lease{ID: 7, TTL: 60}); err != nil {
		f.Fatal(err)
	}
	if err := w.Finish(2, 0); err != nil {
		f.Fatal(err)
	}
	data, err := os.ReadFile(good)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add(data[:4096])
	f.Add([]byte("not a database"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "snap.db")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			s, err := Open(path)
			if err != nil {
				return
			}
			defer s.Close()
			_ = s.Versions(func(*mvccpb.KeyValue, bool) error { return nil })
			_, _ = s.Leases()
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("reading the file did not end within 5s")
		}
	})
}
