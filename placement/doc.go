// Package placement owns where ranges live and the global revision oracle.
//
// This first version holds only the oracle, and only a node-local one: with a
// single range, the range's leader is the only writer, so a counter that the
// leader raises to the range's last applied revision whenever it takes office is
// strictly increasing across leaders. The meta range (its own Raft group, with a
// persisted high-water mark and leadership-confirmed batches, DESIGN.md
// "Revisions" 1) replaces it when the keyspace is split into many ranges; shard
// sees only the small Oracle interface it declares, so that swap touches no
// caller.
package placement
