// Package meta owns the meta range: its Raft group and state machine, the
// records kept in it, and the services built on them.
//
// The meta range (RangeID) is its own Raft group on up to five nodes, a
// Dragonboat in-memory state machine (StateMachine) holding
//
//   - the range descriptors (Ranges, RecordRanges): the truth of which ranges
//     exist, their bounds, generations and replicas;
//   - the node registry (Directory): every node's addresses, and one client
//     connection per node for whoever needs to reach it;
//   - range ID and node ID allocation, through the meta log;
//   - the revision oracle's high-water mark.
//
// The revision oracle works as docs/design.md, "Meta range and revision
// oracle", describes:
//
//   - The meta leader hands out strictly increasing revisions (Allocator). It
//     persists a high-water mark through the meta log before handing out any
//     number below it, so a new leader starts above everything ever issued,
//     and it confirms its leadership with a ReadIndex after choosing a batch
//     and before handing it out, so a deposed leader never hands out numbers
//     below ones its successor gave.
//   - Every node has one OracleClient, which batches the callers waiting right
//     now into one request — never the ones to come: a caller always gets a
//     number fetched after it asked (no prefetching).
//
// The package records and serves; it decides nothing about where ranges
// live (that is placement's) and never touches a data range's replicas.
package meta
