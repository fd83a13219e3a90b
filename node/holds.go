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
	for {
		select {
		case <-s.stopper.ShouldQuiesce():
			return
		case <-tick.C:
		}
		now := time.Now()
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
			if now.Sub(seen[id].since) < holdTimeout {
				continue
			}
			ctx, cancel := s.stopper.WithTimeout(holdTimeout)
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
