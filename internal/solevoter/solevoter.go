// Package solevoter remembers whether a replica is its Raft group's only
// voter. While it is, no other leader can exist, so its reads need no
// ReadIndex round; once another voter is on the way, that ends for good.
package solevoter

import "sync/atomic"

const (
	unknown int32 = iota
	yes
	no
)

// Flag is the remembered answer; the zero value is unknown.
type Flag struct{ v atomic.Int32 }

// Sole returns the remembered answer, asking check while there is none:
// check says whether the replica is the only voter, and whether its
// membership is known yet (an unknown one is asked again next time).
func (f *Flag) Sole(check func() (sole, known bool)) bool {
	switch f.v.Load() {
	case yes:
		return true
	case no:
		return false
	}
	switch sole, known := check(); {
	case !known:
		return false
	case sole:
		return f.v.CompareAndSwap(unknown, yes) || f.v.Load() == yes
	}
	f.v.Store(no)
	return false
}

// NotSole records that another voter is on the way; call it before
// proposing the membership change.
func (f *Flag) NotSole() { f.v.Store(no) }
