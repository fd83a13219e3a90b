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
//     revision, the range bounds and their generation, lease records and
//     the lease -> keys index.
//   - Splits (split.go): a SplitCommand shrinks the range to [start, splitKey)
//     and creates the child range [splitKey, end) in the same Pebble batch:
//     its bounds, its state (applied index 0, the parent's revisions) and a
//     copy of the parent's lease records. No data key moves. Once the batch
//     has committed, StoreOptions.OnSplit tells the node, which starts the
//     child's Raft group; the child's Open then returns applied index 0.
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
//   - A range reads and writes only keys within its bounds (ErrWrongRange
//     otherwise); after a split the parent and the child own disjoint halves
//     of the parent's old bounds, each with the parent's revisions.
//   - Recovering a snapshot never deletes keys that another range of the
//     store owns (snapshot.go, spansToClear).
//
// What it must never do: assign revisions (they come in each Command from the
// shard, which takes them from the revision oracle), talk to the network,
// read clocks, or reach into another range's metadata — with two exceptions:
// a split writes its child's initial metadata (the child has none yet), and
// snapshot recovery reads the other ranges' bounds to know which keys it must
// leave alone. Data keys are not prefixed by range ID, so one Pebble holds
// every range of a node and a split moves no data; a range only ever touches
// data between its own bounds.
package statemachine
