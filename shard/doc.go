// Package shard runs one range replica on this node: its Raft group (a
// Dragonboat on-disk replica over statemachine.RangeSM), the proposal queue that
// assigns revisions, linearizable and serializable reads, and — on the leader —
// the lease clock that expires leases.
//
// Promises:
//   - Writes are proposed by one goroutine, in the order their revisions were
//     taken from the oracle, and only after this replica has applied a barrier
//     in its current leader term (docs/design.md, "Writes"). Writes the
//     proposer takes from its queue together go in one Raft entry (a
//     tesserapb.BatchCommand, up to 1 MiB), still in revision order; the
//     state machine applies each as if it were an entry of its own, and each
//     caller gets its own command's result.
//   - Every command carries the term its proposer leads in (the term of its
//     leadership barrier, Command.leadership_term), and the state machine
//     refuses a command of a term below the latest leadership barrier it
//     applied (statemachine.ErrStaleLeader). A replica that loses the
//     leadership between taking a write's revision and proposing it proposes
//     it as a follower, and Raft forwards it to the new leader; without the
//     refusal it would land after that leader's barrier, below reads the new
//     leader has fenced.
//   - A write whose outcome is unknown is reported as ErrTimeout, never as a
//     success or a clean failure; its fence entry is settled only once a
//     barrier proposed behind it has applied or this replica no longer leads
//     in its term.
//   - The number of proposals in flight is bounded (Config.MaxInFlight);
//     callers past it wait, they do not grow a queue.
//
// It must never answer a linearizable read from a replica that has not
// confirmed, through ReadIndex, that it has applied everything committed
// before the read began.
package shard
