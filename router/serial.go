package router

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
	"github.com/tesserakv/tessera/statemachine"
)

// A serializable read of several ranges reads each range's replica as it
// is, with no round to any leader. Replicas apply a write spanning ranges
// one after another, so one may show such a write while another does not
// yet. Each replica's read therefore also returns its SerialReadState: its
// floor and, for every range it committed a write together with, that
// write's revision. A range i that committed a write with range j at a
// revision above j's floor shows a write j does not yet show, and j's floor
// is a revision at which neither shows any of it. So the read's revision R
// is the lowest such floor, and every range read above R is read again at
// R; a range read at or below R is read again at the revision it was read
// at. Any write spanning ranges at or below R was then applied by every
// range of the read taking part in it, and none above R is seen.

// serialStateKey is the gRPC metadata key, in a request, asking the node
// that serves a serializable read to send its SerialReadStates in the
// response header under serialStatesKey.
const (
	serialStateKey  = "tessera-serial-state"
	serialStatesKey = "tessera-serial-states-bin"
)

// errSerialAgain: a serializable read of several ranges must start over
// (a replica read again was behind the revision asked, or compacted it; a
// node reading a range for this one read several).
var errSerialAgain = errors.New("router: serializable read of several ranges must start over")

// serialRead is what a part of a Range collects or is read at for a
// serializable read of several ranges: the replica's state (states), or,
// read again, the revision its part was pinned at (pins).
type serialRead struct {
	states bool
	pins   serialPins
}

// serialStateAsked reports whether the node that sent a read asked for the
// replica's state.
func serialStateAsked(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return len(md.Get(serialStateKey)) > 0
}

// readAgain reports whether a read starts over after err: a range's bounds
// changed under it (reroute), or, for a serializable read of several ranges
// (serial), a replica read again could not serve its pin.
func (r *Router) readAgain(ctx context.Context, err error, attempt int, serial bool) bool {
	if r.reroute(ctx, err, attempt) {
		return true
	}
	if serial && serialAgain(err) && attempt < maxRouteAttempts {
		r.ranges.Refresh()
		return true
	}
	return false
}

// spanRead is one range's part of a serializable read: the part (in
// etcd's form) and the state of the replica that read it.
type spanRead struct {
	key, end []byte
	state    *tesserapb.SerialReadState
}

// serialPin is the revision to read again a part of a serializable read
// at, by the part it was first read as.
type serialPin struct {
	key, end []byte
	rev      int64
}

type serialPins []serialPin

// at returns the revision to read the part beginning at key at.
func (p serialPins) at(key []byte) (int64, bool) {
	for _, pin := range p {
		if bytes.Compare(key, pin.key) < 0 {
			continue
		}
		switch {
		case pin.end == nil && bytes.Equal(key, pin.key),
			len(pin.end) == 1 && pin.end[0] == 0,
			pin.end != nil && bytes.Compare(key, pin.end) < 0:
			return pin.rev, true
		}
	}
	return 0, false
}

// serialPinsOf returns the revisions to read each part of a serializable
// read at so that none shows part of a write spanning ranges (see above),
// and whether any part must be read again for it.
func serialPinsOf(reads []spanRead) (serialPins, bool) {
	floors := make(map[uint64]int64, len(reads))
	for _, rd := range reads {
		floors[rd.state.GetRangeId()] = rd.state.GetFloor()
	}
	at := int64(math.MaxInt64)
	for _, rd := range reads {
		revs := rd.state.GetCoRevisions()
		for k, id := range rd.state.GetCoRangeIds() {
			if floor, ok := floors[id]; ok && k < len(revs) && revs[k] > floor {
				at = min(at, floor)
			}
		}
	}
	pins := make(serialPins, len(reads))
	again := false
	for i, rd := range reads {
		rev := rd.state.GetRevision()
		if at < rev {
			rev, again = at, true
		}
		pins[i] = serialPin{key: rd.key, end: rd.end, rev: rev}
	}
	return pins, again
}

// viewSerialState is a local replica's SerialReadState, from the view a
// read was served from.
func viewSerialState(rangeID uint64, v *statemachine.View) *tesserapb.SerialReadState {
	ids, revs := v.CoCommits()
	return &tesserapb.SerialReadState{
		RangeId: rangeID, Floor: v.Floor(), Revision: v.Revision(),
		CoRangeIds: ids, CoRevisions: revs,
	}
}

// askSerialState returns ctx asking the node a serializable read is sent to
// for its SerialReadStates, and a call option receiving them.
func askSerialState(ctx context.Context) (context.Context, grpc.CallOption, *metadata.MD) {
	md := &metadata.MD{}
	return metadata.AppendToOutgoingContext(ctx, serialStateKey, "1"), grpc.Header(md), md
}

// relayedSerialState returns the one SerialReadState a node sent for a
// read of one of rng's parts.
func relayedSerialState(rangeID uint64, md metadata.MD) (*tesserapb.SerialReadState, error) {
	vals := md.Get(serialStatesKey)
	if len(vals) != 1 {
		return nil, fmt.Errorf("%w: no replica state in the answer for range %d", errSerialAgain, rangeID)
	}
	states := &tesserapb.SerialReadStates{}
	if err := proto.Unmarshal([]byte(vals[0]), states); err != nil {
		return nil, fmt.Errorf("router: malformed replica state for range %d: %w", rangeID, err)
	}
	if len(states.States) != 1 || states.States[0].GetRangeId() != rangeID {
		return nil, fmt.Errorf("%w: range %d was read as %d ranges", errSerialAgain, rangeID, len(states.States))
	}
	return states.States[0], nil
}

// sendSerialStates sends the states of a serializable read's parts in the
// response header; there are some only when the request asked for them.
func sendSerialStates(ctx context.Context, reads []spanRead) {
	if len(reads) == 0 {
		return
	}
	states := &tesserapb.SerialReadStates{}
	for _, rd := range reads {
		states.States = append(states.States, rd.state)
	}
	b, err := proto.Marshal(states)
	if err != nil {
		return
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(serialStatesKey, string(b)))
}

// serialAgain reports whether err, from reading a part again at its pin,
// means the whole read must start over: the replica that answered was
// behind the pin (a different replica from the first time) or compacted
// it meanwhile.
func serialAgain(err error) bool {
	return errors.Is(err, errSerialAgain) ||
		errors.Is(err, statemachine.ErrFutureRev) || errors.Is(err, rpctypes.ErrGRPCFutureRev) ||
		errors.Is(err, statemachine.ErrCompacted) || errors.Is(err, rpctypes.ErrGRPCCompacted)
}
