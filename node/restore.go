package node

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/tesserakv/tessera/etcdsnap"
	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/shard"
	"github.com/tesserakv/tessera/statemachine"
)

// A data directory prepared by `tessera ctl restore` holds the snapshot to
// restore in restoreDir: the database (restoreDBFile) and its SHA-256 in
// hex (restoreIDFile), which names the snapshot. The node that is member 1
// of the new cluster loads it at its first start; every member with a
// restore directory waits for that before it serves, then removes it.
const (
	restoreDirName = "restore"
	restoreDBFile  = "snapshot.db"
	restoreIDFile  = "snapshot.sha256"
)

// ingestChunkBytes and ingestChunkVersions bound an ingest command.
const (
	ingestChunkBytes    = 1 << 20
	ingestChunkVersions = 10_000
)

// RestoreInfo describes a snapshot prepared for a restore.
type RestoreInfo struct {
	ID                        string // hex SHA-256 of the database
	Revision, CompactRevision int64
	Versions, Leases          int64
}

// PrepareRestore makes dataDir, which must not exist or be empty, the data
// directory of a member of a new cluster restored from the etcd v3
// snapshot file (`etcdctl snapshot save`'s, from etcd or from Tessera).
// The snapshot is checked (its hash unless skipHashCheck, and its
// contents) and copied in; the member loads it when it first starts.
func PrepareRestore(file, dataDir string, skipHashCheck bool) (RestoreInfo, error) {
	var info RestoreInfo
	if ents, err := os.ReadDir(dataDir); err == nil && len(ents) > 0 {
		return info, fmt.Errorf("data-dir %q exists", dataDir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return info, err
	}
	dir := filepath.Join(dataDir, restoreDirName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return info, err
	}
	fail := func(err error) (RestoreInfo, error) {
		_ = os.RemoveAll(dataDir)
		return RestoreInfo{}, err
	}
	db := filepath.Join(dir, restoreDBFile)
	id, err := etcdsnap.CopyVerified(file, db, skipHashCheck)
	if err != nil {
		return fail(err)
	}
	snap, err := etcdsnap.Open(db)
	if err != nil {
		return fail(err)
	}
	defer snap.Close()
	info = RestoreInfo{ID: hex.EncodeToString(id), Revision: snap.Revision, CompactRevision: snap.CompactRevision}
	// Every version is decoded once here, so a file that does not read
	// is refused now rather than at the first start.
	err = snap.Versions(func(*mvccpb.KeyValue, bool) error {
		info.Versions++
		return nil
	})
	if err != nil {
		return fail(err)
	}
	leases, err := snap.Leases()
	if err != nil {
		return fail(err)
	}
	info.Leases = int64(len(leases))
	if err := os.WriteFile(filepath.Join(dir, restoreIDFile), []byte(info.ID+"\n"), 0o600); err != nil {
		return fail(err)
	}
	return info, nil
}

// preparedRestore returns the ID of the snapshot the data directory was
// prepared with, nil when none (or once it was restored).
func (s *Node) preparedRestore() ([]byte, error) {
	path := filepath.Join(s.cfg.DataDir, restoreDirName, restoreIDFile)
	hexID, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	id, err := hex.DecodeString(string(bytes.TrimSpace(hexID)))
	if err != nil || len(id) == 0 {
		return nil, fmt.Errorf("%s: not a snapshot's SHA-256", path)
	}
	return id, nil
}

// unfinishedRestoreWait bounds how long a joining node's start asks the
// meta range whether a restore is under way.
const unfinishedRestoreWait = 5 * time.Second

// unfinishedRestore returns the ID of the snapshot the cluster is loading,
// nil when none is (or the meta range did not answer in time).
func (s *Node) unfinishedRestore() []byte {
	ctx, cancel := context.WithTimeout(s.stopper.Context(), unfinishedRestoreWait)
	defer cancel()
	rec, err := s.restoreRecord(ctx)
	if err != nil || rec == nil || rec.Done {
		return nil
	}
	return rec.SnapshotId
}

// Restoring reports whether the node waits for a snapshot's restore; it
// serves no client until then.
func (s *Node) Restoring() bool { return s.restoring.Load() }

// ErrRestoring is the answer to clients while the node is restoring.
var ErrRestoring = errors.New("tessera: restoring a snapshot, not serving yet")

// restore loads the snapshot id of the prepared data directory (member 1
// of a new cluster does; the others wait for it), then removes it. Each
// step can be repeated, so a failed attempt is tried again until it
// succeeds or the node stops (false).
func (s *Node) restore(id []byte) bool {
	dir := filepath.Join(s.cfg.DataDir, restoreDirName)
	ctx := s.stopper.Context()
	db := filepath.Join(dir, restoreDBFile)
	for {
		var err error
		// Member 1 of a new cluster loads the snapshot; the others, and a
		// node that joined meanwhile (it has no snapshot), wait for it.
		if _, statErr := os.Stat(db); statErr == nil && s.replicaID == 1 && !s.joined {
			err = s.ingestSnapshot(ctx, db, id)
		} else {
			err = s.awaitRestore(ctx, id)
		}
		if err == nil {
			// The revision oracle hands out numbers above the snapshot's
			// from now on, whichever node leads the meta range.
			s.allocator.Reload()
			if err := os.RemoveAll(dir); err != nil {
				s.log.Warn("removing the restored snapshot", "dir", dir, "err", err)
			}
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		s.log.Error("restoring the snapshot; trying again", "dir", dir, "err", err)
		if pause(ctx, 5*time.Second) != nil {
			return false
		}
	}
}

// pause waits d, or until ctx ends (its error).
func pause(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// restoreRecord reads the meta range's restore record (nil when none)
// linearizably, trying again until the meta range answers.
func (s *Node) restoreRecord(ctx context.Context) (*tesserapb.RestoreRecord, error) {
	for {
		out, err := s.meta.Read(ctx, true, func(st *tesserapb.MetaState) (any, error) { return st.GetRestore(), nil })
		if err == nil {
			return out.(*tesserapb.RestoreRecord), nil
		}
		if err := pause(ctx, 100*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// awaitRestore waits until the cluster records the restore of snapshot id
// done.
func (s *Node) awaitRestore(ctx context.Context, id []byte) error {
	s.log.Info("waiting for member 1 to restore the snapshot", "snapshot", hex.EncodeToString(id))
	for {
		rec, err := s.restoreRecord(ctx)
		switch {
		case err != nil:
			return err
		case rec != nil && !bytes.Equal(rec.SnapshotId, id):
			return fmt.Errorf("the cluster was restored from snapshot %x, this data directory holds %x", rec.SnapshotId, id)
		case rec.GetDone():
			return nil
		}
		if err := pause(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// ingestSnapshot loads the snapshot database at path into the first
// range: it records the restore (raising the revision oracle above the
// snapshot's revision), grants the snapshot's leases, writes its versions
// in chunks (IngestCommand), and records the restore done. Every step may
// be repeated: a member 1 that stops halfway goes through it again.
func (s *Node) ingestSnapshot(ctx context.Context, path string, id []byte) error {
	snap, err := etcdsnap.Open(path)
	if err != nil {
		return err
	}
	defer snap.Close()
	if rec, err := s.restoreRecord(ctx); err != nil {
		return err
	} else if rec.GetDone() && bytes.Equal(rec.SnapshotId, id) {
		return nil
	}
	s.log.Info("restoring a snapshot", "snapshot", hex.EncodeToString(id), "revision", snap.Revision, "compacted", snap.CompactRevision)
	start := time.Now()
	if err := s.meta.RecordRestore(ctx, id, snap.Revision, false); err != nil {
		return err
	}
	rep := s.waitRange(ctx, firstRangeID)
	if rep == nil {
		return fmt.Errorf("the first range did not start")
	}
	leases, err := snap.Leases()
	if err != nil {
		return err
	}
	for _, l := range leases {
		err := s.ingestWrite(ctx, rep, func() (*tesserapb.Result, error) { return rep.GrantLease(ctx, l.ID, l.TTL) })
		if err != nil && !errors.Is(err, statemachine.ErrLeaseExists) {
			return fmt.Errorf("granting lease %d: %w", l.ID, err)
		}
	}
	cmd := &tesserapb.IngestCommand{SnapshotId: id, Revision: snap.Revision, CompactedRevision: snap.CompactRevision}
	size, versions := 0, 0
	flush := func(last bool) error {
		if hook := s.cfg.Knobs.BeforeIngestChunk; hook != nil {
			hook(cmd.Seq)
		}
		cmd.Last = last
		c := &tesserapb.Command{Op: &tesserapb.Command_Ingest{Ingest: cmd}}
		if err := s.ingestWrite(ctx, rep, func() (*tesserapb.Result, error) { return rep.Write(ctx, c, false) }); err != nil {
			return fmt.Errorf("ingest chunk %d: %w", cmd.Seq, err)
		}
		versions += len(cmd.Versions)
		cmd.Seq++
		cmd.Versions, size = cmd.Versions[:0], 0
		return nil
	}
	err = snap.Versions(func(kv *mvccpb.KeyValue, tombstone bool) error {
		v := &tesserapb.IngestVersion{Key: kv.Key, ModRevision: kv.ModRevision, Tombstone: tombstone}
		if !tombstone {
			v.CreateRevision, v.Version, v.Lease, v.Value = kv.CreateRevision, kv.Version, kv.Lease, kv.Value
		}
		cmd.Versions = append(cmd.Versions, v)
		size += len(kv.Key) + len(kv.Value) + 32
		if size >= ingestChunkBytes || len(cmd.Versions) >= ingestChunkVersions {
			return flush(false)
		}
		return nil
	})
	if err == nil {
		err = flush(true)
	}
	if err != nil {
		return err
	}
	if err := s.meta.RecordRestore(ctx, id, snap.Revision, true); err != nil {
		return err
	}
	s.log.Info("restored a snapshot", "snapshot", hex.EncodeToString(id), "revision", snap.Revision, "versions", versions, "leases", len(leases), "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// ingestWrite runs a write on the first range's replica here, which must
// lead the range: while another replica leads it, this node asks for the
// leadership and tries again.
func (s *Node) ingestWrite(ctx context.Context, rep *shard.Replica, write func() (*tesserapb.Result, error)) error {
	for {
		_, err := write()
		var notLeader *shard.NotLeaderError
		switch {
		case errors.As(err, &notLeader):
			if notLeader.LeaderReplicaID != 0 {
				_ = s.nh.RequestLeaderTransfer(rep.RangeID(), rep.ReplicaID())
			}
		case shard.IsRetryable(err):
		default:
			return err
		}
		if err := pause(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}
