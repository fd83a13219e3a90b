// Package router is the etcd KV and Lease front end: it checks each request the
// way etcd does, sends it to the range that owns its keys, and forwards it to
// the range leader's node when this node's replica does not lead.
//
// It finds the local ranges holding a request's keys (RangeCache), reads
// across them at one revision, and refuses writes spanning ranges. It must
// never turn an outcome-unknown write into a success or a clean failure, and
// it never retries a write whose outcome is unknown.
package router
