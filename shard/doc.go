// Package shard runs one range replica on this node: its Raft group (a
// Dragonboat on-disk replica over statemachine.RangeSM), the proposal queue that
// assigns revisions, linearizable and serializable reads, and — on the leader —
// the lease clock that expires leases.
//
// Promises:
//   - Writes are proposed by one goroutine, in the order their revisions were
//     taken from the oracle, and only after this replica has applied a barrier
//     in its current leader term (DESIGN.md "Revisions" 2). Writes the
//     proposer takes from its queue together go in one Raft entry (a
//     tesserapb.BatchCommand, up to 1 MiB), still in revision order; the
//     state machine applies each as if it were an entry of its own, and each
//     caller gets its own command's result.
//   - A write whose outcome is unknown is reported as ErrTimeout, never as a
//     success or a clean failure.
//   - The number of proposals in flight is bounded (Config.MaxInFlight);
//     callers past it wait, they do not grow a queue.
//
// It must never answer a linearizable read from a replica that has not
// confirmed, through ReadIndex, that it has applied everything committed
// before the read began.
package shard
