// Package watchhub is Tessera's etcd Watch service: the events of every range
// replica on this node, merged into the one global revision order etcd's
// clients expect.
//
// How it keeps etcd's guarantees across ranges (docs/design.md, "Watches"
// and "Closed revisions"):
//
//   - Every range replica publishes, after each applied batch, its events and
//     its floor: the revision at and below which it has applied every command
//     it ever will (the state machine refuses a command whose revision is not
//     above it). A range's floor is its closed revision on this node.
//
//   - A watch over [key, end) may release the events up to the lowest floor
//     of the ranges holding that interval: no event at or below it can still
//     appear. Events wait in one buffer, ordered by revision, until then.
//
//   - An idle range's floor does not move by itself. When events, a new
//     watch or a progress request wait on it, the hub closes it
//     (Source.CloseRange): a fenced read at the oracle's current revision,
//     after which this node's replica holds every write at or below it, or,
//     when the range's leader cannot be asked, a barrier proposed through
//     the leader, which takes a revision like any write and lifts the floor
//     when it applies. Busy ranges close as they apply.
//
//   - A watcher that starts in the past, or whose stream cannot keep up (its
//     bounded send queue is full), is unsynced: it catches up from the MVCC
//     history in bounded windows (statemachine.Store.History), then rejoins
//     the live buffer once the buffer still holds everything after the
//     revision it reached. A start below the compacted revision gets etcd's
//     compacted answer and is cancelled.
//
//   - Progress notifications (progress_notify, RequestProgress) report a
//     revision R only once every event at or below R on the watched ranges
//     has been queued, after closing the ranges up to the revision current
//     when the request arrived.
//
//   - Live watchers of one interval form a group; a round of the hub skips a
//     group whose safe revision is not above what its watchers were sent
//     (and no progress is owed). Watches with the same options share one
//     encoding of a delivery: each watch's message is its own watch_id field
//     followed by the shared bytes, sent as they are by
//     internal/wirecodec, which the server installs as its gRPC codec.
//
//   - Memory is bounded however many streams there are and whether they
//     read: a stream's queue by events and bytes (a live delivery's bytes
//     are shared by the watches that take it), each history read by
//     statemachine.HistoryWindowBytes, and the windows read and not yet
//     handed to gRPC, across all streams, by one budget; a window is read
//     only when its stream's queue has room.
//
// A node serves any watch: its Source publishes the events of the node's
// own replicas (a follower's floor moves as it applies the leader's log)
// and, through range feeds from other nodes, of the ranges it holds no
// replica of.
package watchhub
