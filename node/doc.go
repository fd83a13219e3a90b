// Package node is one Tessera node: its Pebble store, the Dragonboat
// NodeHost, the meta range's and the data ranges' replicas on it and their
// lifecycle (starting them, a split's children, replica moves, dropping
// them), joining a running cluster (--join), heartbeats and the placement
// runner, range feeds and the followers that feed the watch hub, the
// node-to-node Internal service, auto-compaction and the node's config. It
// also makes the node's router and watch hub, which package server serves
// to clients; it never serves clients itself.
//
// New settles the node's identity, Start brings it up. One stopper
// (Node.Stopper) owns every goroutine of the node: its own tasks, and on
// child stoppers the watch hub, the router, each replica and the revision
// batchers. Quiesce, StopFronts and Close take the node down, in that order,
// around the gRPC server's graceful stop: background tasks, then replicas,
// the oracle, Raft, and the store last.
package node
