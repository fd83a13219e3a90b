package node

import (
	"bytes"
	"time"
)

// Holds of writes spanning ranges (docs/design.md, "Writes spanning
// ranges"). A write's coordinator ends its holds itself; one that died, or
// lost its way, leaves them. The leader of a range held longer than
// holdTimeout settles the hold from the write's record in the meta range
// (router.ResolveHold): it commits if the record says so, and otherwise
// records the abort and aborts.

const (
	// holdCheckInterval is how often a node looks at the holds of the
	// ranges it leads.
	holdCheckInterval = 500 * time.Millisecond
	// holdTimeout is how long a range stays held before its leader settles
	// the hold itself. A coordinator needs a few Raft rounds; an abort
	// recorded too early only makes it start over.
	holdTimeout = 3 * time.Second
	// txnSweepInterval is how often the meta leader sweeps the records of
	// writes spanning ranges (meta.Replica.SweepTxnRecords): an abort
	// lives one to two intervals, far longer than a coordinator takes
	// between its holds and its decision, and a commit nobody forgot is
	// settled after one to two.
	txnSweepInterval = time.Minute
)

// heldSince is when this node first saw a range held by a write.
type heldSince struct {
	txnID []byte
	since time.Time
}

// runHoldSweeper settles the holds that outlive holdTimeout on the ranges
// this node leads, one at a time.
func (s *Node) runHoldSweeper() {
	seen := map[uint64]heldSince{}
	tick := time.NewTicker(holdCheckInterval)
	defer tick.Stop()
	lastSweep := time.Now()
	for {
		select {
		case <-s.stopper.ShouldQuiesce():
			return
		case <-tick.C:
		}
		now := time.Now()
		if now.Sub(lastSweep) >= s.txnSweepInterval() {
			lastSweep = now
			s.sweepTxnRecords()
		}
		held := map[uint64]bool{}
		for _, rng := range s.rangeList() {
			rsm := s.store.Range(rng.RangeID())
			if rsm == nil || !rng.IsLeader() {
				continue
			}
			txnID, _ := rsm.Hold()
			if txnID == nil {
				continue
			}
			id := rng.RangeID()
			held[id] = true
			if h, ok := seen[id]; !ok || !bytes.Equal(h.txnID, txnID) {
				seen[id] = heldSince{txnID: txnID, since: now}
				continue
			}
			if now.Sub(seen[id].since) < s.holdTimeout() {
				continue
			}
			ctx, cancel := s.stopper.WithTimeout(s.holdTimeout())
			err := s.router.ResolveHold(ctx, rng, txnID)
			cancel()
			if err != nil {
				s.log.Debug("settling a range's hold", "range", id, "err", err)
			} else {
				s.log.Info("settled the hold of an abandoned write spanning ranges", "range", id)
			}
		}
		for id := range seen {
			if !held[id] {
				delete(seen, id)
			}
		}
	}
}

// sweepTxnRecords, when this node leads the meta range, sweeps the
// records of writes spanning ranges: aborts marked at the sweep before go,
// and committed records marked then are settled on the ranges that have
// not reported done with them (router.SettleCommitted).
func (s *Node) sweepTxnRecords() {
	if leads, _ := s.metaTerm(); !leads {
		return
	}
	recs := s.meta.TxnRecords()
	if len(recs) == 0 {
		return
	}
	ctx, cancel := s.stopper.WithTimeout(holdTimeout)
	defer cancel()
	for _, rec := range recs {
		if !rec.Stale || !rec.Committed {
			continue
		}
		for _, id := range rec.RangeIds {
			if err := s.router.SettleCommitted(ctx, rec, id); err != nil {
				s.log.Debug("settling a committed write spanning ranges", "range", id, "err", err)
			}
		}
	}
	floor, err := s.oracle.NextN(ctx, 1)
	if err == nil {
		err = s.meta.SweepTxnRecords(ctx, floor)
	}
	if err != nil {
		s.log.Debug("sweeping records of writes spanning ranges", "err", err)
	}
}

func (s *Node) holdTimeout() time.Duration { return knobOr(s.cfg.Knobs.HoldTimeout, holdTimeout) }

func (s *Node) txnSweepInterval() time.Duration {
	return knobOr(s.cfg.Knobs.TxnSweepInterval, txnSweepInterval)
}
