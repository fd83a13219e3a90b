package meta

import (
	"bytes"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"

	sm "github.com/lni/dragonboat/v4/statemachine"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/auth"
	"github.com/tesserakv/tessera/proto/tesserapb"
)

// InitialHighWater is the high-water mark of a new cluster: every revision
// handed out is below the high-water mark, and a new store's revision is 1
// (as etcd's), so the first write gets 2.
const InitialHighWater = 2

// StateMachine is the meta range's state machine. All of its state is in
// memory and small (descriptors and nodes); Dragonboat snapshots it to disk.
type StateMachine struct {
	mu sync.RWMutex
	// state is guarded by mu. Its ranges are kept sorted by start key and its
	// nodes by node ID.
	state *tesserapb.MetaState
	// onAuth is given the auth state compiled anew after every change to it
	// (and after a snapshot replaced the state), under mu, in log order.
	onAuth func(*auth.Snapshot)
}

var _ sm.IStateMachine = (*StateMachine)(nil)

// NewStateMachine is Dragonboat's CreateStateMachineFunc for the meta range.
func NewStateMachine(shardID, replicaID uint64) sm.IStateMachine {
	return &StateMachine{state: &tesserapb.MetaState{HighWater: InitialHighWater}}
}

// StateMachineWithAuth returns a CreateStateMachineFunc for the meta range
// whose replica calls onAuth with the compiled auth state as it changes
// (auth.Snapshot is immutable: the node swaps it in whole).
func StateMachineWithAuth(onAuth func(*auth.Snapshot)) func(shardID, replicaID uint64) sm.IStateMachine {
	return func(shardID, replicaID uint64) sm.IStateMachine {
		return &StateMachine{state: &tesserapb.MetaState{HighWater: InitialHighWater}, onAuth: onAuth}
	}
}

// authChanged tells onAuth of the current auth state. m.mu is held.
func (m *StateMachine) authChanged() {
	if m.onAuth != nil {
		m.onAuth(auth.Compile(proto.CloneOf(m.state.GetAuth())))
	}
}

// Update applies one meta command. Commands never fail; stale ones (a lower
// high-water mark, an older descriptor generation) are ignored.
func (m *StateMachine) Update(e sm.Entry) (sm.Result, error) {
	cmd := &tesserapb.MetaCommand{}
	if err := proto.Unmarshal(e.Cmd, cmd); err != nil {
		return sm.Result{}, fmt.Errorf("meta: decoding meta command at index %d: %w", e.Index, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch op := cmd.Op.(type) {
	case *tesserapb.MetaCommand_DecideTxn:
		return decideTxn(m.state, op.DecideTxn)
	case *tesserapb.MetaCommand_Auth:
		if m.state.Auth == nil {
			m.state.Auth = &tesserapb.AuthState{}
		}
		res := auth.Apply(m.state.Auth, op.Auth)
		if res == tesserapb.AuthResult_AUTH_OK {
			m.authChanged()
		}
		return sm.Result{Value: uint64(res)}, nil
	}
	return sm.Result{Value: applyMeta(m.state, cmd)}, nil
}

// Result values of a DecideTxnCommand.
const (
	TxnCommitted = 1
	TxnAborted   = 2
)

// decideTxn applies a DecideTxnCommand: the record of its write, made now
// unless one was made before.
func decideTxn(st *tesserapb.MetaState, d *tesserapb.DecideTxnCommand) (sm.Result, error) {
	rec := findTxnRecord(st, d.GetTxnId())
	if rec == nil {
		rec = &tesserapb.TxnRecord{TxnId: d.GetTxnId()}
		// A commit whose holds are at or below the floor may be of a
		// write whose abort was recorded and swept.
		if d.GetCommit() && d.GetMinHoldRevision() > st.TxnFloor {
			rec.Committed, rec.Revision, rec.Path, rec.RangeIds = true, d.GetRevision(), d.GetPath(), d.GetRangeIds()
			rec.Participants = slices.Clone(d.GetRangeIds())
		}
		st.TxnRecords = append(st.TxnRecords, rec)
	}
	data, err := proto.Marshal(rec)
	if err != nil {
		return sm.Result{}, err
	}
	value := uint64(TxnAborted)
	if rec.Committed {
		value = TxnCommitted
	}
	return sm.Result{Value: value, Data: data}, nil
}

func findTxnRecord(st *tesserapb.MetaState, txnID []byte) *tesserapb.TxnRecord {
	for _, rec := range st.TxnRecords {
		if bytes.Equal(rec.TxnId, txnID) {
			return rec
		}
	}
	return nil
}

// FirstAllocatedRangeID is the first range ID handed out for ranges made by
// splits: 1 is the meta range, 2 the first data range.
const FirstAllocatedRangeID = 3

// applyMeta is the meta range's whole transition function. It returns the
// entry's result value: the new range ID for AllocateRangeId, 1 otherwise.
func applyMeta(st *tesserapb.MetaState, cmd *tesserapb.MetaCommand) uint64 {
	switch op := cmd.Op.(type) {
	case *tesserapb.MetaCommand_AllocateRangeId:
		id := max(st.NextRangeId, FirstAllocatedRangeID)
		st.NextRangeId = id + 1
		return id
	case *tesserapb.MetaCommand_AllocateNodeId:
		id := max(st.NextNodeId, op.AllocateNodeId.GetMinId())
		st.NextNodeId = id + 1
		return id
	case *tesserapb.MetaCommand_SetHighWater:
		st.HighWater = max(st.HighWater, op.SetHighWater.GetRevision())
	case *tesserapb.MetaCommand_RegisterNode:
		n := op.RegisterNode.GetNode()
		i := sort.Search(len(st.Nodes), func(i int) bool { return st.Nodes[i].NodeId >= n.GetNodeId() })
		if i < len(st.Nodes) && st.Nodes[i].NodeId == n.GetNodeId() {
			n.Decommissioning = st.Nodes[i].Decommissioning
			st.Nodes[i] = n
			return 1
		}
		st.Nodes = append(st.Nodes, nil)
		copy(st.Nodes[i+1:], st.Nodes[i:])
		st.Nodes[i] = n
	case *tesserapb.MetaCommand_RemoveNode:
		st.Nodes = slices.DeleteFunc(st.Nodes, func(n *tesserapb.NodeInfo) bool { return n.NodeId == op.RemoveNode.GetNodeId() })
	case *tesserapb.MetaCommand_SetDecommissioning:
		for _, n := range st.Nodes {
			if n.NodeId == op.SetDecommissioning.GetNodeId() {
				n.Decommissioning = op.SetDecommissioning.GetDecommissioning()
				return 1
			}
		}
		return 0
	case *tesserapb.MetaCommand_PutRange:
		d := op.PutRange.GetRange()
		for i, cur := range st.Ranges {
			if cur.RangeId == d.GetRangeId() {
				if cur.Generation > d.GetGeneration() || (cur.Generation == d.GetGeneration() && cur.ConfVersion >= d.GetConfVersion()) {
					return 1
				}
				st.Ranges = append(st.Ranges[:i], st.Ranges[i+1:]...)
				break
			}
		}
		i := sort.Search(len(st.Ranges), func(i int) bool { return bytes.Compare(st.Ranges[i].StartKey, d.GetStartKey()) >= 0 })
		st.Ranges = append(st.Ranges, nil)
		copy(st.Ranges[i+1:], st.Ranges[i:])
		st.Ranges[i] = d
	case *tesserapb.MetaCommand_SweepTxnRecords:
		swept := false
		st.TxnRecords = slices.DeleteFunc(st.TxnRecords, func(r *tesserapb.TxnRecord) bool {
			drop := r.Stale && !r.Committed
			swept = swept || drop
			return drop
		})
		for _, r := range st.TxnRecords {
			r.Stale = true
		}
		if swept {
			st.TxnFloor = max(st.TxnFloor, op.SweepTxnRecords.GetFloor())
		}
	case *tesserapb.MetaCommand_Restore:
		r := op.Restore
		if cur := st.Restore; cur != nil && !bytes.Equal(cur.SnapshotId, r.GetSnapshotId()) {
			return 0
		}
		st.HighWater = max(st.HighWater, r.GetRevision()+1)
		done := r.GetDone() || st.Restore.GetDone()
		st.Restore = &tesserapb.RestoreRecord{SnapshotId: r.GetSnapshotId(), Revision: r.GetRevision(), Done: done}
	case *tesserapb.MetaCommand_ForgetTxn:
		f := op.ForgetTxn
		rec := findTxnRecord(st, f.GetTxnId())
		if rec == nil {
			return 1
		}
		if f.GetRangeId() != 0 {
			if !rec.Committed {
				// An abort stands until the coordinator has seen it:
				// without the record it could still record a commit.
				return 1
			}
			rec.RangeIds = slices.DeleteFunc(rec.RangeIds, func(id uint64) bool { return id == f.GetRangeId() })
		}
		if f.GetRangeId() == 0 || len(rec.RangeIds) == 0 {
			st.TxnRecords = slices.DeleteFunc(st.TxnRecords, func(r *tesserapb.TxnRecord) bool { return r == rec })
		}
	}
	return 1
}

// Lookup runs q, a func(*tesserapb.MetaState) (any, error), on the state. q
// must not keep or modify what it is given.
func (m *StateMachine) Lookup(q any) (any, error) {
	fn, ok := q.(func(*tesserapb.MetaState) (any, error))
	if !ok {
		return nil, fmt.Errorf("meta: Lookup wants a func(*tesserapb.MetaState) (any, error), got %T", q)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return fn(m.state)
}

// SaveSnapshot writes the whole state.
func (m *StateMachine) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	m.mu.RLock()
	data, err := proto.Marshal(m.state)
	m.mu.RUnlock()
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

// RecoverFromSnapshot replaces the state with a saved one.
func (m *StateMachine) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	st := &tesserapb.MetaState{}
	if err := proto.Unmarshal(data, st); err != nil {
		return fmt.Errorf("meta: decoding meta snapshot: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.state = st
	m.authChanged()
	return nil
}

// Close releases nothing; the state is in memory.
func (m *StateMachine) Close() error { return nil }
