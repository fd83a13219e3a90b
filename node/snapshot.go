package node

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/tesserakv/tessera/etcdsnap"
)

// A snapshot reads the keyspace in pages of up to snapshotPageKeys keys,
// fewer when values are large: about snapshotPageBytes of values each.
const (
	snapshotPageKeys  = 1000
	snapshotPageBytes = 4 << 20
)

// snapshotChunkBytes is the size of the pieces a snapshot is streamed in,
// as etcd sends them.
const snapshotChunkBytes = 32 * 1024

// tmpDir is where a node builds snapshots, under its data directory;
// emptied at start.
func (s *Node) tmpDir() string { return filepath.Join(s.cfg.DataDir, "tmp") }

// Snapshot streams an etcd v3 snapshot of the whole keyspace at one
// revision (etcdsnap): every live key with its create and mod revisions,
// version and lease, and the leases, with the snapshot marked compacted at
// its revision (the history before it is not carried), then the
// database's SHA-256, as etcd's Maintenance.Snapshot sends it.
func (s *Node) Snapshot(ctx context.Context, send func(*pb.SnapshotResponse) error) error {
	if err := os.MkdirAll(s.tmpDir(), 0o700); err != nil {
		return err
	}
	dir, err := os.MkdirTemp(s.tmpDir(), "snapshot-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "db")
	rev, err := s.writeSnapshot(ctx, path)
	if err != nil {
		return err
	}
	s.log.Info("sending snapshot", "revision", rev, "path", path)
	db, err := os.Open(path)
	if err != nil {
		return err
	}
	defer db.Close()
	st, err := db.Stat()
	if err != nil {
		return err
	}
	h := sha256.New()
	header := s.header(rev)
	left := st.Size()
	for left > 0 {
		buf := make([]byte, min(left, snapshotChunkBytes))
		if _, err := io.ReadFull(db, buf); err != nil {
			return err
		}
		left -= int64(len(buf))
		h.Write(buf)
		if err := send(&pb.SnapshotResponse{Header: header, RemainingBytes: uint64(left), Blob: buf, Version: etcdsnap.StorageVersion}); err != nil {
			return err
		}
	}
	return send(&pb.SnapshotResponse{Header: header, Blob: h.Sum(nil), Version: etcdsnap.StorageVersion})
}

// writeSnapshot writes the snapshot database to path and returns its
// revision: a linearizable read fixes it, and every page is read at it.
func (s *Node) writeSnapshot(ctx context.Context, path string) (int64, error) {
	w, err := etcdsnap.Create(path)
	if err != nil {
		return 0, err
	}
	req := &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}, Limit: snapshotPageKeys}
	var rev int64
	for {
		resp, err := s.router.Range(ctx, req)
		if err != nil {
			w.Abort()
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
			req.Revision = rev
		}
		bytes := 0
		for _, kv := range resp.Kvs {
			bytes += len(kv.Value)
			if err := w.Put(kv, false); err != nil {
				w.Abort()
				return 0, err
			}
		}
		if len(resp.Kvs) > 0 {
			req.Limit = int64(min(max(snapshotPageBytes/max(bytes/len(resp.Kvs), 1), 16), snapshotPageKeys))
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		req.Key = append(slices.Clone(resp.Kvs[len(resp.Kvs)-1].Key), 0)
	}
	leases, err := s.router.LeaseLeases(ctx, &pb.LeaseLeasesRequest{})
	if err != nil {
		w.Abort()
		return 0, err
	}
	for _, l := range leases.Leases {
		ttl, err := s.router.LeaseTimeToLive(ctx, &pb.LeaseTimeToLiveRequest{ID: l.ID})
		if err != nil || ttl.TTL < 0 {
			continue // revoked or expired meanwhile
		}
		if err := w.Lease(etcdsnap.Lease{ID: l.ID, TTL: ttl.GrantedTTL}); err != nil {
			w.Abort()
			return 0, err
		}
	}
	return rev, w.Finish(rev, rev)
}
