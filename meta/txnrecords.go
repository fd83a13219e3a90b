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
