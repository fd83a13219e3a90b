package meta

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// DecideTxn records the outcome of a write spanning ranges, unless one was
// recorded before, and returns the record that stands (docs/design.md,
// "Writes spanning ranges"). A decision is idempotent, so it is retried
// through elections like the meta range's other proposals.
func (m *Replica) DecideTxn(ctx context.Context, d *tesserapb.DecideTxnCommand) (*tesserapb.TxnRecord, error) {
	data, err := proto.Marshal(&tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_DecideTxn{DecideTxn: d}})
	if err != nil {
		return nil, err
	}
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	rec := &tesserapb.TxnRecord{}
	err = withRetries(ctx, func() error {
		res, err := m.nh.SyncPropose(ctx, m.session, data)
		if err != nil {
			return err
		}
		if err := proto.Unmarshal(res.Data, rec); err != nil {
			return fmt.Errorf("meta: decoding a txn record: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return rec, nil
}

// ForgetTxn tells the meta range that range rangeID applied the recorded
// outcome of write txnID (0: every range did, and the coordinator knows
// the outcome).
func (m *Replica) ForgetTxn(ctx context.Context, txnID []byte, rangeID uint64) error {
	return m.Propose(ctx, &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_ForgetTxn{ForgetTxn: &tesserapb.ForgetTxnCommand{TxnId: txnID, RangeId: rangeID}}})
}

// SweepTxnRecords drops the aborted records the last sweep marked and
// marks the others (SweepTxnRecordsCommand); floor is a revision taken
// from the oracle for this sweep. Nobody forgets an abort that a range
// recorded for a write whose coordinator is gone, nor a commit its
// coordinator did not live to forget: the meta leader sweeps them now and
// then, so an abort lives one to two sweep intervals.
func (m *Replica) SweepTxnRecords(ctx context.Context, floor int64) error {
	return m.Propose(ctx, &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_SweepTxnRecords{SweepTxnRecords: &tesserapb.SweepTxnRecordsCommand{Floor: floor}}})
}

// TxnRecords returns copies of the records in this replica's state.
func (m *Replica) TxnRecords() []*tesserapb.TxnRecord {
	out, err := m.Read(context.Background(), false, func(st *tesserapb.MetaState) (any, error) {
		recs := make([]*tesserapb.TxnRecord, len(st.TxnRecords))
		for i, r := range st.TxnRecords {
			recs[i] = proto.CloneOf(r)
		}
		return recs, nil
	})
	if err != nil {
		return nil
	}
	return out.([]*tesserapb.TxnRecord)
}
