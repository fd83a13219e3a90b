package etcdsnap

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// TestRoundTrip writes a snapshot with versions of one revision, a
// deletion and leases, appends its hash as etcd does, and reads it back.
func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "db")
	w, err := Create(db)
	if err != nil {
		t.Fatal(err)
	}
	puts := []struct {
		kv        *mvccpb.KeyValue
		tombstone bool
	}{
		{&mvccpb.KeyValue{Key: []byte("b"), Value: []byte("1"), CreateRevision: 3, ModRevision: 3, Version: 1, Lease: 9}, false},
		{&mvccpb.KeyValue{Key: []byte("a"), Value: []byte("1"), CreateRevision: 3, ModRevision: 3, Version: 1}, false},
		{&mvccpb.KeyValue{Key: []byte("a"), ModRevision: 5}, true},
		{&mvccpb.KeyValue{Key: []byte("a"), Value: []byte("2"), CreateRevision: 2, ModRevision: 2, Version: 1}, false},
	}
	for _, p := range puts {
		if err := w.Put(p.kv, p.tombstone); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Lease(Lease{ID: 9, TTL: 60}); err != nil {
		t.Fatal(err)
	}
	if err := w.Finish(6, 2); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(db)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	file := filepath.Join(dir, "snap")
	if err := os.WriteFile(file, append(data, sum[:]...), 0o600); err != nil {
		t.Fatal(err)
	}
	id, err := CopyVerified(file, filepath.Join(dir, "copy"), false)
	if err != nil || string(id) != string(sum[:]) {
		t.Fatalf("CopyVerified: %x, %v", id, err)
	}
	s, err := Open(filepath.Join(dir, "copy"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// The last stored revision is 5, so etcd would start at 5: the
	// snapshot says it was compacted at its revision, 6.
	if s.Revision != 6 || s.CompactRevision != 6 {
		t.Fatalf("revision %d compacted %d, want 6 and 6", s.Revision, s.CompactRevision)
	}
	var got []string
	err = s.Versions(func(kv *mvccpb.KeyValue, tombstone bool) error {
		got = append(got, fmt.Sprintf("%s@%d=%s/%v", kv.Key, kv.ModRevision, kv.Value, tombstone))
		return nil
	})
	if want := "a@2=2/false b@3=1/false a@3=1/false a@5=/true"; err != nil || strings.Join(got, " ") != want {
		t.Fatalf("versions %s, %v; want %s", strings.Join(got, " "), err, want)
	}
	leases, err := s.Leases()
	if err != nil || len(leases) != 1 || leases[0] != (Lease{ID: 9, TTL: 60}) {
		t.Fatalf("leases %v, %v", leases, err)
	}

	// A damaged file is refused.
	data[len(data)/2] ^= 1
	if err := os.WriteFile(file, append(data, sum[:]...), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CopyVerified(file, filepath.Join(dir, "copy2"), false); err == nil || !strings.Contains(err.Error(), "expected sha256") {
		t.Fatalf("damaged file: %v", err)
	}
}
