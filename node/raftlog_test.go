package node

import (
	"testing"

	"github.com/lni/dragonboat/v4"
)

func TestRaftLogSettings(t *testing.T) {
	one := map[uint64]dragonboat.Target{1: "a:1"}
	three := map[uint64]dragonboat.Target{1: "a:1", 2: "b:1", 3: "c:1"}
	for _, tc := range []struct {
		name                     string
		members                  map[uint64]dragonboat.Target
		count, catchUp           uint64
		wantEntries, wantCatchUp uint64
		wantBytes                int64
	}{
		{"three members, defaults", three, 0, 0, DefaultSnapshotCount, DefaultSnapshotCatchUp, 0},
		{"one member, defaults", one, 0, 0, DefaultSnapshotCount, DefaultSoleSnapshotCatchUp, DefaultSoleSnapshotBytes},
		{"one member, flags", one, 10000, 5000, 10000, 5000, 0},
		{"three members, flags", three, 200, 100, 200, 100, 0},
		{"one member, count only", one, 2000, 0, 2000, DefaultSoleSnapshotCatchUp, 0},
		{"one member, catch-up only", one, 0, 300, DefaultSnapshotCount, 300, DefaultSoleSnapshotBytes},
	} {
		cfg := DefaultConfig()
		cfg.SnapshotCount, cfg.SnapshotCatchUpEntries = tc.count, tc.catchUp
		s := &Node{cfg: cfg, raftMembers: tc.members}
		entries, catchUp, bytes := s.raftLogSettings()
		if entries != tc.wantEntries || catchUp != tc.wantCatchUp || bytes != tc.wantBytes {
			t.Errorf("%s: %d, %d, %d; want %d, %d, %d", tc.name, entries, catchUp, bytes, tc.wantEntries, tc.wantCatchUp, tc.wantBytes)
		}
		if rc := s.raftConfig(7, 1); rc.SnapshotEntries != entries || rc.CompactionOverhead != catchUp || rc.DisableAutoCompactions != (len(tc.members) == 1) {
			t.Errorf("%s: raftConfig = %+v", tc.name, rc)
		}
	}
}
