package meta

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/proto/tesserapb"
)

// Ranges returns the range descriptors the meta range records, in key order.
// A split is recorded descriptor by descriptor, so right after one the list
// may briefly show the parent with its old bounds beside the child (of two
// overlapping descriptors the one with the higher generation is the newer)
// or a hole where the child's record has not landed yet.
func Ranges(ctx context.Context, meta metaRaft, linearizable bool) ([]*tesserapb.RangeDescriptor, error) {
	out, err := meta.Read(ctx, linearizable, func(st *tesserapb.MetaState) (any, error) {
		ds := make([]*tesserapb.RangeDescriptor, len(st.Ranges))
		for i, d := range st.Ranges {
			ds[i] = proto.CloneOf(d)
		}
		return ds, nil
	})
	if err != nil {
		return nil, err
	}
	return out.([]*tesserapb.RangeDescriptor), nil
}

// RecordRanges records in the meta range each of ds that is newer than the
// record there: missing, of a lower generation (every split raises it), or
// of the same generation and a lower conf_version (a membership change). It decides from this replica's copy of
// the meta state, so a record that landed a moment ago may be proposed
// again, which is harmless: PutRange keeps the higher generation. It returns
// how many it wrote.
func RecordRanges(ctx context.Context, meta metaRaft, ds []*tesserapb.RangeDescriptor) (int, error) {
	out, err := meta.Read(ctx, false, func(st *tesserapb.MetaState) (any, error) {
		recorded := make(map[uint64]*tesserapb.RangeDescriptor, len(st.Ranges))
		for _, d := range st.Ranges {
			recorded[d.RangeId] = d
		}
		var stale []*tesserapb.RangeDescriptor
		for _, d := range ds {
			if cur := recorded[d.RangeId]; cur == nil || d.Generation > cur.Generation || (d.Generation == cur.Generation && d.ConfVersion > cur.ConfVersion) {
				stale = append(stale, d)
			}
		}
		return stale, nil
	})
	if err != nil {
		return 0, err
	}
	written := 0
	for _, d := range out.([]*tesserapb.RangeDescriptor) {
		cmd := &tesserapb.MetaCommand{Op: &tesserapb.MetaCommand_PutRange{PutRange: &tesserapb.PutRangeCommand{Range: d}}}
		if err := meta.Propose(ctx, cmd); err != nil {
			return written, err
		}
		written++
	}
	return written, nil
}
