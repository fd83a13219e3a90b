package statemachine

import (
	"github.com/cockroachdb/pebble/v2"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// applier applies commands of one Update call into its batch. state is the
// working copy of the range's state; a command's changes to it are kept only
// when the command succeeds. bounds is the working copy of the range's
// bounds: a split shrinks it, and later commands of the batch see that.
type applier struct {
	rangeID uint64
	b       *pebble.Batch
	state   rangeState
	bounds  bounds
	// splits lists the child range IDs of the splits applied in this batch,
	// in order, for StoreOptions.OnSplit once the batch has committed.
	splits []uint64
	// log collects the batch's events for StoreOptions.OnApply; nil when
	// nobody listens.
	log *eventLog
	// attaching holds the lease records the Txn being applied gives the
	// range (checkAttaches); written once it has applied.
	attaching map[int64]*tesserapb.LeaseRecord
	// points serves the batch's point lookups (see pointIter); closed
	// before the batch commits.
	points pointIter
}

// decodeCommand decodes one entry's command; a command that cannot be
// decoded is the entry's failure.
func decodeCommand(data []byte) (*tesserapb.Command, error) {
	cmd := &tesserapb.Command{}
	if err := proto.Unmarshal(data, cmd); err != nil {
		return nil, errorf(ErrInvalidCommand, "cannot decode the command (%d bytes)", len(data))
	}
	return cmd, nil
}

// apply applies one command (not a batch: Update unpacks those). A returned
// error wrapping a sentinel is the command's failure (nothing written, state
// unchanged); any other error is fatal.
func (a *applier) apply(cmd *tesserapb.Command) (response []byte, err error) {
	rev := cmd.GetRevision()
	if rev < 0 {
		return nil, errorf(ErrInvalidCommand, "negative revision %d", rev)
	}
	// A commit of a write the range is no longer held for was applied (or
	// aborted) already: that, rather than its revision now being stale, is
	// the answer.
	if c, ok := cmd.GetOp().(*tesserapb.Command_TxnCommit); ok && a.heldFor(c.TxnCommit.GetTxnId()) == nil {
		return nil, errorf(ErrNotHeld, "commit of a write the range is not held for")
	}
	// The revision rule: a command carrying a revision must carry one above
	// every revision this range applied, or it is refused, changing nothing.
	// Compaction counts too: a write below a compaction would be lost to it.
	if floor := a.state.floor(); rev > 0 && rev <= floor {
		return nil, errorf(ErrStaleRevision, "revision %d, last applied %d", rev, floor)
	}
	// A command proposed by a leader of an earlier term than the range's
	// current one (Command.leadership_term): a revision it took may be below
	// what the current leader has fenced reads at, and a lease it grants or
	// marks would be missing from the current leader's lease clock.
	if lt := cmd.GetLeadershipTerm(); lt != 0 && lt < a.state.leadershipTerm {
		return nil, errorf(ErrStaleLeader, "command (revision %d) proposed by the leader of term %d, the range has a leader of term %d", rev, lt, a.state.leadershipTerm)
	}
	if _, isHold := cmd.GetOp().(*tesserapb.Command_TxnHold); isHold && a.state.hold != nil {
		return nil, errorf(ErrHoldConflict, "held since revision %d", a.state.hold.GetRevision())
	}
	if a.state.hold != nil && RefusedWhileHeld(cmd, rev > 0) {
		return nil, errorf(ErrRangeHeld, "held since revision %d", a.state.hold.GetRevision())
	}
	saved, logged := a.state, a.log.mark()
	var msg proto.Message
	changed := false
	switch op := cmd.GetOp().(type) {
	case *tesserapb.Command_Txn:
		if rev == 0 {
			return nil, errorf(ErrInvalidCommand, "txn without a revision")
		}
		req := &pb.TxnRequest{}
		if err := proto.Unmarshal(op.Txn.GetRequest(), req); err != nil {
			return nil, errorf(ErrInvalidCommand, "cannot decode the txn request (%d bytes)", len(op.Txn.GetRequest()))
		}
		if a.attaching, err = a.checkAttaches(op.Txn.GetAttach()); err == nil {
			msg, changed, err = a.applyTxn(rev, req)
		}
		if err == nil {
			err = a.writeAttached(a.attaching)
		}
		a.attaching = nil
	case *tesserapb.Command_Compact:
		msg, err = a.applyCompact(op.Compact.GetRevision())
	case *tesserapb.Command_LeaseGrant:
		msg, err = a.applyLeaseGrant(op.LeaseGrant)
	case *tesserapb.Command_LeaseRevoke:
		if rev == 0 {
			return nil, errorf(ErrInvalidCommand, "lease revoke without a revision")
		}
		msg, changed, err = a.applyLeaseRevoke(rev, op.LeaseRevoke)
	case *tesserapb.Command_LeaseMark:
		if rev != 0 {
			return nil, errorf(ErrInvalidCommand, "lease mark with revision %d", rev)
		}
		msg, err = a.applyLeaseMark(op.LeaseMark.GetId())
	case *tesserapb.Command_LeaseRegister:
		if rev != 0 {
			return nil, errorf(ErrInvalidCommand, "lease register with revision %d", rev)
		}
		msg, err = a.applyLeaseRegister(op.LeaseRegister)
	case *tesserapb.Command_Barrier:
		msg = nil
		if op.Barrier.GetLeadership() {
			// Not below the range's term (checked above).
			lt := cmd.GetLeadershipTerm()
			if lt == 0 {
				return nil, errorf(ErrInvalidCommand, "leadership barrier without a term")
			}
			a.state.leadershipTerm = lt
		}
	case *tesserapb.Command_TxnHold:
		if rev == 0 {
			return nil, errorf(ErrInvalidCommand, "txn hold without a revision")
		}
		msg, err = a.applyTxnHold(rev, op.TxnHold)
	case *tesserapb.Command_TxnCommit:
		if rev == 0 {
			return nil, errorf(ErrInvalidCommand, "txn commit without a revision")
		}
		msg, changed, err = a.applyTxnCommit(rev, op.TxnCommit)
	case *tesserapb.Command_TxnAbort:
		if rev != 0 {
			return nil, errorf(ErrInvalidCommand, "txn abort with revision %d", rev)
		}
		a.applyTxnAbort(op.TxnAbort)
	case *tesserapb.Command_Ingest:
		if rev != 0 {
			return nil, errorf(ErrInvalidCommand, "ingest with revision %d", rev)
		}
		err = a.applyIngest(op.Ingest)
	case *tesserapb.Command_Batch:
		return nil, errorf(ErrInvalidCommand, "batch inside a batch")
	case *tesserapb.Command_Split:
		if rev != 0 {
			return nil, errorf(ErrInvalidCommand, "split with revision %d", rev)
		}
		err = a.applySplit(op.Split)
	default:
		return nil, errorf(ErrInvalidCommand, "command without an operation")
	}
	if err != nil {
		a.state = saved
		a.log.rollback(logged)
		return nil, err
	}
	a.log.sortFrom(logged)
	if rev > 0 {
		a.state.lastCmdRev = rev
	}
	if changed {
		a.state.currentRev = rev
	}
	if msg == nil {
		return nil, nil
	}
	return proto.Marshal(msg)
}

// RefusedWhileHeld reports whether cmd, carrying a revision or not as
// withRevision says, waits for a range's hold to end (ErrRangeHeld; a hold
// meeting another fails with ErrHoldConflict): every command carrying a
// revision but the held write's own commit (its revision must stay above
// everything the range applied, and the range's floor below it, so that
// watches wait for it), and compactions and splits. Barriers without a
// revision, the abort and lease bookkeeping that writes no keys go on. A
// range's leader holds such commands back while it sees the hold.
func RefusedWhileHeld(cmd *tesserapb.Command, withRevision bool) bool {
	switch cmd.GetOp().(type) {
	case *tesserapb.Command_TxnCommit:
		return false
	case *tesserapb.Command_Compact, *tesserapb.Command_Split:
		return true
	}
	return withRevision
}
