// Package replicaid maps Raft replica IDs to the nodes that hold them.
//
// A node's replica of a data range has the node's ID in its low 32 bits and,
// above them, the incarnation: how many times the node held the range
// before. Dragonboat never lets a removed replica ID back into its Raft
// group, so a node that gets a range again (after it was moved off, or
// replaced while it was down) joins under the next incarnation. The first
// replicas of a range, and every replica of the meta range, have
// incarnation 0: their replica ID is their node's ID.
package replicaid

// NodeOf returns the node holding a replica (a node ID is its own).
func NodeOf(replicaID uint64) uint64 { return replicaID & (1<<32 - 1) }

// Incarnation returns how many times the replica's node held its range
// before.
func Incarnation(replicaID uint64) uint64 { return replicaID >> 32 }

// For returns the replica ID of a node's incarnation-th replica of a range.
func For(node, incarnation uint64) uint64 { return incarnation<<32 | NodeOf(node) }

// Next returns the replica ID for node's next replica of a range whose
// members and removed replicas are the given IDs: incarnation 0 if the node
// never held the range, else one above the highest it had.
func Next(node uint64, ids ...map[uint64]struct{}) uint64 {
	next, seen := uint64(0), false
	for _, set := range ids {
		for id := range set {
			if NodeOf(id) == NodeOf(node) {
				next, seen = max(next, Incarnation(id)), true
			}
		}
	}
	if seen {
		next++
	}
	return For(node, next)
}
