// Package server assembles one Tessera node: the node's Pebble store, the
// Dragonboat NodeHost, the range replica(s), the router, and the gRPC server
// that speaks etcd's v3 API on the client URLs. cmd/tessera only parses flags
// into a Config and calls Start.
//
// Shutdown happens in one place (Server.Close), in order: stop accepting
// clients, stop background tasks, close the NodeHost, then the store it uses.
package server
