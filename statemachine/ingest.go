package statemachine

import (
	"bytes"
	"encoding/binary"
	"math"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// ingestProgress is the range's ingest record; id nil when none began.
func (a *applier) ingestProgress() (id []byte, next uint64, err error) {
	v, found, err := getValue(a.b, metaKey(a.rangeID, metaIngest))
	if err != nil || !found {
		return nil, 0, err
	}
	if len(v) < 8 {
		return nil, 0, errBadKey
	}
	return v[:len(v)-8], binary.BigEndian.Uint64(v[len(v)-8:]), nil
}

// applyIngest writes one chunk of a snapshot's versions (IngestCommand).
func (a *applier) applyIngest(c *tesserapb.IngestCommand) error {
	id, next, err := a.ingestProgress()
	if err != nil {
		return err
	}
	switch {
	case id == nil:
		if c.GetSeq() != 0 {
			return errorf(ErrInvalidCommand, "ingest chunk %d before chunk 0", c.GetSeq())
		}
		if a.state.currentRev != 1 || a.state.compactedRev != 0 || a.state.lastCmdRev != 0 {
			return errorf(ErrInvalidCommand, "ingest into a range that was written (revision %d)", a.state.currentRev)
		}
	case !bytes.Equal(id, c.GetSnapshotId()):
		return errorf(ErrInvalidCommand, "ingest of another snapshot than the one begun")
	case c.GetSeq() < next:
		return nil // applied already: a proposal tried again
	case c.GetSeq() > next:
		return errorf(ErrInvalidCommand, "ingest chunk %d, expected %d", c.GetSeq(), next)
	}
	snapRev := c.GetRevision()
	for _, v := range c.GetVersions() {
		if err := a.ingestVersion(v, snapRev); err != nil {
			return err
		}
	}
	rec := binary.BigEndian.AppendUint64(bytes.Clone(c.GetSnapshotId()), c.GetSeq()+1)
	if err := a.b.Set(metaKey(a.rangeID, metaIngest), rec, nil); err != nil {
		return err
	}
	if c.GetLast() {
		if snapRev < 1 || c.GetCompactedRevision() > snapRev || c.GetCompactedRevision() < 0 {
			return errorf(ErrInvalidCommand, "ingest at revision %d compacted at %d", snapRev, c.GetCompactedRevision())
		}
		a.state.currentRev = max(a.state.currentRev, snapRev)
		a.state.lastCmdRev = max(a.state.lastCmdRev, snapRev)
		a.state.compactedRev = c.GetCompactedRevision()
	}
	return nil
}

// ingestVersion stores one version, keeping the lease index on each key's
// newest version. A key's versions come in revision order.
func (a *applier) ingestVersion(v *tesserapb.IngestVersion, snapRev int64) error {
	key, rev := v.GetKey(), v.GetModRevision()
	if len(key) == 0 || rev < 2 || rev > snapRev {
		return errorf(ErrInvalidCommand, "ingest of key %q at revision %d (snapshot at %d)", key, rev, snapRev)
	}
	if !a.bounds.containsKey(key) {
		return errorf(ErrWrongRange, "ingest of key %q outside the range", key)
	}
	prevValue, found, err := a.points.seekVersion(key, math.MaxInt64)
	if err != nil {
		return err
	}
	var prev *mvccpb.KeyValue
	if found {
		if r := dataKeyRev(a.points.it.Key()); r >= rev {
			return errorf(ErrInvalidCommand, "ingest of key %q at revision %d after its revision %d", key, rev, r)
		}
		if prev, err = decodeVersion(key, prevValue); err != nil {
			return err
		}
	}
	w := mvccWriter{b: a.b, rev: rev}
	var lease int64
	if v.GetTombstone() {
		if err := w.setVersion(key, nil); err != nil {
			return err
		}
	} else {
		lease = v.GetLease()
		enc, err := proto.Marshal(&mvccpb.KeyValue{
			CreateRevision: v.GetCreateRevision(),
			ModRevision:    rev,
			Version:        v.GetVersion(),
			Value:          v.GetValue(),
			Lease:          lease,
		})
		if err != nil {
			return err
		}
		if err := w.setVersion(key, enc); err != nil {
			return err
		}
	}
	return w.moveLease(key, prev, lease)
}
