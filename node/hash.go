package node

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"slices"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"

	"github.com/tesserakv/tessera/router"
	"github.com/tesserakv/tessera/statemachine"
)

// HashKV serves etcd's Maintenance.HashKV: a checksum of the key-value
// history, as of revision rev (0: the current one), of every range this
// node holds a replica of. Each replica is first caught up to the
// revision; the ranges' checksums are combined in key order with their
// bounds. Nodes holding the same ranges answer the same hash (in a cluster
// of --replicas nodes or fewer, every node). The compacted revision is the
// highest of the ranges'.
func (s *Node) HashKV(ctx context.Context, rev int64) (*pb.HashKVResponse, error) {
	current, err := s.oracle.Current(ctx)
	if err != nil {
		return nil, router.ToGRPC(err)
	}
	switch {
	case rev == 0:
		rev = current
	case rev > current:
		return nil, router.ToGRPC(statemachine.ErrFutureRev)
	}
	type part struct {
		start, end []byte
		hash       uint32
		compacted  int64
	}
	var parts []part
	for _, rng := range s.rangeList() {
		out, err := s.router.ReadLocalAt(ctx, rng.RangeID(), rev, func(v *statemachine.View) (any, error) {
			hash, err := v.HashKV(rev)
			start, end := v.Bounds()
			return part{start: start, end: end, hash: hash, compacted: v.CompactRevision()}, err
		})
		if err != nil {
			return nil, router.ToGRPC(err)
		}
		parts = append(parts, out.(part))
	}
	slices.SortFunc(parts, func(a, b part) int { return bytes.Compare(a.start, b.start) })
	var sum uint32
	var compacted int64
	for _, p := range parts {
		sum = crc32.Update(sum, castagnoli, binary.AppendUvarint(nil, uint64(len(p.start))))
		sum = crc32.Update(sum, castagnoli, p.start)
		sum = crc32.Update(sum, castagnoli, binary.AppendUvarint(nil, uint64(len(p.end))))
		sum = crc32.Update(sum, castagnoli, p.end)
		sum = crc32.Update(sum, castagnoli, binary.BigEndian.AppendUint32(nil, p.hash))
		compacted = max(compacted, p.compacted)
	}
	return &pb.HashKVResponse{
		Header:          &pb.ResponseHeader{ClusterId: s.clusterID, MemberId: s.replicaID, Revision: current},
		Hash:            sum,
		CompactRevision: compacted,
		HashRevision:    rev,
	}, nil
}

// Defragment serves etcd's Maintenance.Defragment: Pebble compacts the
// node's whole store, rewriting its sstables without the versions and
// replicas deleted since (etcd rewrites its bbolt file).
func (s *Node) Defragment(ctx context.Context) (*pb.DefragmentResponse, error) {
	if err := s.store.CompactAll(ctx); err != nil {
		return nil, router.ToGRPC(err)
	}
	return &pb.DefragmentResponse{Header: &pb.ResponseHeader{ClusterId: s.clusterID, MemberId: s.replicaID}}, nil
}

// castagnoli is the CRC-32C table HashKV combines the ranges' checksums
// with (each range's is CRC-32C too).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)
