// Package statemachine is one range's replicated state machine: Dragonboat's
// IOnDiskStateMachine keeping an etcd-style MVCC store in Pebble.
//
// What it owns:
//
//   - The MVCC data of a range: every version of every key between the range's
//     bounds, ordered by user key then revision descending, tombstones for
//     deletions, and physical compaction.
//   - The range's metadata: applied Raft index, the highest command revision
//     applied (lastCmdRev), the etcd-visible current revision, the compacted
//     revision, the range bounds, lease records, the lease -> keys index and the
//     members' attributes.
//   - Snapshots of all of the above (PrepareSnapshot/SaveSnapshot) and their
//     recovery.
//
// What it promises:
//
//   - Update applies all entries it is given in one Pebble batch that also
//     records the new applied index, so a crash loses a suffix of applied
//     entries, never a middle one, and never half an entry.
//   - A command that fails changes nothing; its entry still advances the
//     applied index and carries the error's code in its result.
//   - Deterministic results: the same log gives the same state and the same
//     results on every replica (no clocks, no randomness, no map iteration
//     order in any output).
//   - Reads (View) are point-in-time Pebble snapshots that read the data and
//     the metadata from the same snapshot, so they never observe a
//     half-applied batch, and they run concurrently with Update.
//   - etcd's semantics for Range, Put, DeleteRange, Txn (compares, nested
//     transactions, reads that see the transaction's own earlier writes),
//     compaction and the errors that go with them.
//
// What it must never do: assign revisions (they come in each Command from the
// shard, which takes them from the revision oracle), talk to the network,
// read clocks, or reach into another range's metadata. Data keys are not
// prefixed by range ID, so one Pebble holds every range of a node and a split
// moves no data; a range only ever touches data between its own bounds.
package statemachine
