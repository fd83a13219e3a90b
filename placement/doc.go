// Package placement owns the meta range and the global revision oracle.
//
// The meta range is its own Raft group (a Dragonboat in-memory state machine,
// MetaSM) holding the range descriptors, the node registry, and the oracle's
// high-water mark. The oracle works as docs/design.md, "Meta range and
// revision oracle", describes:
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
package placement
