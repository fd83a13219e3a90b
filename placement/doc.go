// Package placement decides where ranges live: the schedulers (Schedule) and
// the choice of nodes for new replicas and leaderships.
//
// Everything here is a pure function from a Cluster snapshot — descriptors,
// liveness, sizes, load — to operations (add, remove or move a replica,
// transfer a leadership): no clocks, no I/O, no randomness, no map iteration
// order, so the same snapshot always yields the same operations. The meta
// range's leader builds the snapshot, runs Schedule and carries the
// operations out; this package never proposes, reads or connects anything
// itself. The schedulers are tested with datadriven scripts in testdata/.
package placement
