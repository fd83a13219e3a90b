// Package server serves a Tessera node's APIs: it listens on the client URLs
// and wires the gRPC services onto them — etcd's KV and Lease (the node's
// router), Watch (its watch hub), Cluster and Maintenance (answered from the
// node), Auth stubs, and the node-to-node Internal service the node
// implements. It owns no replica and no background task of its own: the
// node (package node) does. cmd/tessera only parses flags into a Config and
// calls Start.
//
// Shutdown happens in one place (Server.Close), in order: quiesce the node,
// end the watch and forwarded-write streams, stop the gRPC server
// gracefully, then close the node (its tasks, replicas, Raft, and the store
// last).
package server
