package node

import (
	"sync"
	"time"
	_ "unsafe" // for go:linkname
)

// Dragonboat sizes every Raft group's queues from "soft settings" that it
// reads once, at package init, from a dragonboat-soft-settings.json in the
// process's working directory; there is no API for them. Its defaults are
// sized for a few busy groups: each group preallocates a receive queue of
// 2×1,024 messages, a proposal queue of 2×2,048 entries, a ReadIndex queue of
// 2×4,096 requests and 16 pending-proposal shards, each with its own lock and
// random source. That is about 0.6 MB per group before any traffic, and the
// shards are all swept on every tick, quiesced or not.
//
// A Tessera range needs much less: its replica has a single goroutine
// proposing (so one pending-proposal shard has no contention), Raft messages
// and proposals are drained on every step, and a full queue is not fatal
// (a proposal refused as busy is retried; a dropped Raft message is resent).
// So the package variables that Dragonboat copies the settings into are set
// here, before the first NodeHost starts. They are bound by name: if a
// Dragonboat upgrade renames them, the build fails at link time rather than
// silently losing the setting.

//go:linkname dbReceiveQueueLen github.com/lni/dragonboat/v4.receiveQueueLen
var dbReceiveQueueLen uint64

//go:linkname dbIncomingProposalsMaxLen github.com/lni/dragonboat/v4.incomingProposalsMaxLen
var dbIncomingProposalsMaxLen uint64

//go:linkname dbIncomingReadIndexMaxLen github.com/lni/dragonboat/v4.incomingReadIndexMaxLen
var dbIncomingReadIndexMaxLen uint64

//go:linkname dbPendingProposalShards github.com/lni/dragonboat/v4.pendingProposalShards
var dbPendingProposalShards uint64

//go:linkname dbEntrySliceSize github.com/lni/dragonboat/v4/internal/raft.entrySliceSize
var dbEntrySliceSize uint64

//go:linkname dbMinEntrySliceSize github.com/lni/dragonboat/v4/internal/raft.minEntrySliceSize
var dbMinEntrySliceSize uint64

// Per-group queue sizes (Dragonboat's defaults in brackets).
const (
	receiveQueueLen       = 64  // [1024] Raft messages received between two steps
	proposalQueueLen      = 128 // [2048] proposals made between two steps
	readIndexQueueLen     = 512 // [4096] ReadIndex requests made between two steps
	pendingProposalShards = 1   // [16]
	// A group's in-memory Raft log is a slice of entries that is replaced
	// by a new one of entrySliceSize entries (80 bytes each) whenever what
	// is left after applying is nearly empty or short of minEntrySliceSize
	// free slots: with Dragonboat's 512, a range that applies a few entries
	// per step allocates and clears 40 KB per step, and every idle range
	// holds one such slice. A step's batch larger than this just grows it.
	entrySliceSize    = 64 // [512]
	minEntrySliceSize = 16 // [96]
)

//go:linkname dbNodeReloadInterval github.com/lni/dragonboat/v4.nodeReloadInterval
var dbNodeReloadInterval time.Duration

// nodeReloadInterval is how often each of Dragonboat's step, commit and apply
// workers sweeps every Raft group it serves whether or not it was signalled
// (Dragonboat's default: 200 ms). Work is signalled as it arrives and every
// group is stepped on every tick, so frequent sweeps cost idle groups CPU for
// nothing (docs/performance.md, "Idle cost of many ranges"). But a group just
// started (a split's child, every range at startup) may be initialised only
// by the next sweep, so the interval stays short of the election timeout.
const nodeReloadInterval = time.Second

var tuneDragonboatOnce sync.Once

// tuneDragonboat sets Dragonboat's per-group queue sizes; every NodeHost
// start calls it first (groups read the sizes when they start).
func tuneDragonboat() {
	tuneDragonboatOnce.Do(func() {
		dbReceiveQueueLen = receiveQueueLen
		dbIncomingProposalsMaxLen = proposalQueueLen
		dbIncomingReadIndexMaxLen = readIndexQueueLen
		dbPendingProposalShards = pendingProposalShards
		dbEntrySliceSize = entrySliceSize
		dbMinEntrySliceSize = minEntrySliceSize
		dbNodeReloadInterval = nodeReloadInterval
	})
}
