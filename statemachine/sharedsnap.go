package statemachine

import (
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
)

// Views opened while the store commits nothing share one Pebble snapshot.
//
// Taking a Pebble snapshot and closing it each lock the whole DB, and closing
// the oldest snapshot makes Pebble pick compactions again (its snapshots pin
// old versions): a visible share of a node's CPU under many concurrent
// reads. Yet a snapshot taken after the store's last commit is
// the same as any other taken before its next one, so views opened in
// between share it. Each one counts as a reference; the last to close closes
// the snapshot, so a shared snapshot lives only as long as reads overlap and
// pins nothing once they stop.
//
// Why a view's metadata still matches its snapshot: every commit to the store
// counts itself (noteCommit) once it is visible, and range metadata changes
// under RangeSM.mu after the commit that carries it (commitMeta holds mu
// across both). A view takes its metadata and its snapshot under mu; it
// reuses the shared snapshot only when no commit has been counted since the
// count read before that snapshot was taken — so every commit visible to the
// metadata, counted before it, is in the snapshot.
type snapshots struct {
	db *pebble.DB
	// commits counts the store's batch commits (noteCommit).
	commits atomic.Uint64

	mu sync.Mutex
	// cur is the snapshot new views share while commits is still its
	// commits; nil when none is open. Guarded by mu.
	cur *sharedSnapshot
}

// sharedSnapshot is one Pebble snapshot and the views holding it.
type sharedSnapshot struct {
	owner *snapshots
	snap  *pebble.Snapshot
	// commits is snapshots.commits read before snap was taken.
	commits uint64
	// refs counts the views holding snap. Guarded by snapshots.mu.
	refs int
}

// noteCommit records that a batch committed to the store has become
// visible. Call it after every commit, before publishing metadata that
// depends on the batch.
func (s *snapshots) noteCommit() { s.commits.Add(1) }

// acquire returns a snapshot holding every commit noted before the call,
// shared with other views when none was noted since it was taken. Release
// it exactly once.
func (s *snapshots) acquire() *sharedSnapshot {
	n := s.commits.Load()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.cur; c != nil && c.commits == n {
		c.refs++
		return c
	}
	c := &sharedSnapshot{owner: s, snap: s.db.NewSnapshot(), commits: n, refs: 1}
	s.cur = c
	return c
}

// release drops one view's hold on c and closes it after the last.
func (c *sharedSnapshot) release() {
	s := c.owner
	s.mu.Lock()
	c.refs--
	last := c.refs == 0
	if last && s.cur == c {
		s.cur = nil
	}
	s.mu.Unlock()
	if last {
		closeQuietly(c.snap)
	}
}
