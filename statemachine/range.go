package statemachine

import (
	"bytes"
	"math"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Range follows etcd's (server/etcdserver/txn/range.go, v3.7) rules:
//
//   - revision 0 reads the current revision; above it is ErrFutureRev; below
//     the compacted revision is ErrCompacted.
//   - count is the number of keys in [key, range_end) live at the revision,
//     before the revision filters and regardless of limit.
//   - with the default ordering (NONE, or KEY ASCEND) and no revision filters
//     the store stops after limit+1 keys; otherwise it reads everything, then
//     filters, sorts, and truncates. more is "something was cut by limit".
//   - sort order NONE with a target other than KEY means ASCEND. etcd still
//     counts that as the default ordering when it decides the store limit, so
//     with a limit and no filters it sorts only the first limit+1 keys (in
//     key order) and truncates; we keep that quirk, clients may see it.
//   - count_only returns no kvs and more=false; keys_only drops values, and
//     leases too unless the sort target is VALUE (etcd then answers from its
//     key index, which holds no leases).

// ReadRevision checks a Range's revision as one range's Range does
// (readRev): a Txn spanning ranges checks its Range operations with it.
func ReadRevision(reqRev, currentRev, compactedRev int64) (int64, error) {
	return readRev(reqRev, currentRev, compactedRev)
}

// readRev resolves a request's revision against the range's state.
func readRev(reqRev, currentRev, compactedRev int64) (int64, error) {
	if reqRev > currentRev {
		return 0, ErrFutureRev
	}
	if reqRev <= 0 {
		reqRev = currentRev
	}
	if reqRev < compactedRev {
		return 0, ErrCompacted
	}
	return reqRev, nil
}

func isDefaultOrdering(r *pb.RangeRequest) bool {
	return r.SortOrder == pb.RangeRequest_NONE ||
		(r.SortTarget == pb.RangeRequest_KEY && r.SortOrder == pb.RangeRequest_ASCEND)
}

func hasRevisionFilters(r *pb.RangeRequest) bool {
	return r.MinModRevision != 0 || r.MaxModRevision != 0 ||
		r.MinCreateRevision != 0 || r.MaxCreateRevision != 0
}

// keyOrdered reports whether the result is in plain key order (no sort).
func keyOrdered(r *pb.RangeRequest) bool {
	return r.SortTarget == pb.RangeRequest_KEY &&
		(r.SortOrder == pb.RangeRequest_NONE || r.SortOrder == pb.RangeRequest_ASCEND)
}

// StoreLimit is how many kvs, in key order, a Range collects before
// filtering and sorting, as etcd's store does: 0 for all.
func StoreLimit(r *pb.RangeRequest) int64 { return storeLimit(r) }

// storeLimit is how many kvs to collect before filtering: 0 for all.
func storeLimit(r *pb.RangeRequest) int64 {
	if !isDefaultOrdering(r) || hasRevisionFilters(r) {
		return 0
	}
	if r.Limit > 0 && r.Limit < math.MaxInt64 {
		return r.Limit + 1
	}
	return r.Limit
}

// executeRange runs req against m. currentRev/compactedRev are the reading
// context's (the view's, or inside a txn the txn's). Header is left nil.
// counts, when not nil, is the node's count cache (views only, see
// countcache.go).
func executeRange(m mvccReader, req *pb.RangeRequest, currentRev, compactedRev int64, counts *countCache) (*pb.RangeResponse, error) {
	var kvs []*mvccpb.KeyValue
	count, err := scanKVs(m, req, currentRev, compactedRev, counts, storeLimit(req), func(k, v []byte) error {
		kv, err := decodeVersion(k, v)
		kvs = append(kvs, kv)
		return err
	})
	if err != nil {
		return nil, err
	}
	kvs = filterKVs(kvs, req)
	sortKVs(kvs, req)
	resp := &pb.RangeResponse{Count: count, Kvs: kvs}
	if req.Limit > 0 && int64(len(kvs)) > req.Limit {
		resp.Kvs = kvs[:req.Limit]
		resp.More = true
	}
	if req.KeysOnly {
		for _, kv := range resp.Kvs {
			keysOnly(kv, req)
		}
	}
	if resp.Kvs == nil {
		resp.Kvs = []*mvccpb.KeyValue{}
	}
	return resp, nil
}

// scanKVs resolves req's revision and scans its keys, live at that revision,
// in key order: keep gets the user key and stored version of each of the
// first limit of them (all when limit <= 0, none for count_only), and the
// rest are only counted. It returns the count. counts, when not nil, is the
// node's count cache (views only, see countcache.go).
func scanKVs(m mvccReader, req *pb.RangeRequest, currentRev, compactedRev int64, counts *countCache, limit int64, keep func(k, v []byte) error) (int64, error) {
	if len(req.Key) == 0 {
		return 0, ErrEmptyKey
	}
	rev, err := readRev(req.Revision, currentRev, compactedRev)
	if err != nil {
		return 0, err
	}
	var count, kept int64
	// Once only counting, a checkpoint of an earlier count at this revision
	// ends the scan (countcache.go); a scan that reaches the end records
	// checkpoints for later pages.
	checkpoints := counts.lookup(rev, req.RangeEnd)
	var recorder countRecorder
	cutShort := false
	err = m.scan(spanOf(req.Key, req.RangeEnd), rev, func(k, v []byte) (bool, error) {
		counting := req.CountOnly || (limit > 0 && kept >= limit)
		if counting {
			if cpKey, countFrom, ok := checkpoints.next(k); ok && bytes.Equal(cpKey, k) {
				count += countFrom
				cutShort = true
				return false, nil
			}
		}
		recorder.visit(count, k)
		count++
		if counting {
			return true, nil
		}
		kept++
		err := keep(k, v)
		return err == nil, err
	})
	if err != nil {
		return 0, err
	}
	if counts != nil && !cutShort && len(req.RangeEnd) > 0 {
		counts.store(rev, req.RangeEnd, recorder.finish(count))
	}
	return count, nil
}

// keysOnly strips kv as a keys_only answer has it: no value, and no lease
// unless sorted by value (see the rules above).
func keysOnly(kv *mvccpb.KeyValue, req *pb.RangeRequest) {
	kv.Value = nil
	if req.SortTarget != pb.RangeRequest_VALUE {
		kv.Lease = 0
	}
}

func filterKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) []*mvccpb.KeyValue {
	if !hasRevisionFilters(r) {
		return kvs
	}
	out := kvs[:0]
	for _, kv := range kvs {
		switch {
		case r.MaxModRevision != 0 && kv.ModRevision > r.MaxModRevision:
		case r.MinModRevision != 0 && kv.ModRevision < r.MinModRevision:
		case r.MaxCreateRevision != 0 && kv.CreateRevision > r.MaxCreateRevision:
		case r.MinCreateRevision != 0 && kv.CreateRevision < r.MinCreateRevision:
		default:
			out = append(out, kv)
		}
	}
	return out
}

// SortKVs sorts key-ordered kvs as the request asks, as one range's Range
// does (sortKVs); the router uses it to merge the answers of several ranges.
func SortKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) { sortKVs(kvs, r) }

// sortKVs sorts key-ordered kvs as the request asks, exactly as etcd's
// store does (server/etcdserver/txn/range.go, sortRangeResults): sort.Sort,
// reversed for DESCEND, over the same key-ordered kvs, so that kvs with equal
// sort values come out in etcd's order too (sort.Sort is deterministic, but
// not stable).
func sortKVs(kvs []*mvccpb.KeyValue, r *pb.RangeRequest) {
	order := r.SortOrder
	if r.SortTarget != pb.RangeRequest_KEY && order == pb.RangeRequest_NONE {
		order = pb.RangeRequest_ASCEND
	}
	if order == pb.RangeRequest_NONE || (r.SortTarget == pb.RangeRequest_KEY && order == pb.RangeRequest_ASCEND) {
		return
	}
	var less func(a, b *mvccpb.KeyValue) bool
	switch r.SortTarget {
	case pb.RangeRequest_VERSION:
		less = func(a, b *mvccpb.KeyValue) bool { return a.Version < b.Version }
	case pb.RangeRequest_CREATE:
		less = func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision < b.CreateRevision }
	case pb.RangeRequest_MOD:
		less = func(a, b *mvccpb.KeyValue) bool { return a.ModRevision < b.ModRevision }
	case pb.RangeRequest_VALUE:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }
	default:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }
	}
	var sorter sort.Interface = kvSorter{kvs: kvs, less: less}
	if order == pb.RangeRequest_DESCEND {
		sorter = sort.Reverse(sorter)
	}
	sort.Sort(sorter)
}

// kvSorter is a sort.Interface over kvs, as etcd's kvSort types are.
type kvSorter struct {
	kvs  []*mvccpb.KeyValue
	less func(a, b *mvccpb.KeyValue) bool
}

func (s kvSorter) Len() int           { return len(s.kvs) }
func (s kvSorter) Swap(i, j int)      { s.kvs[i], s.kvs[j] = s.kvs[j], s.kvs[i] }
func (s kvSorter) Less(i, j int) bool { return s.less(s.kvs[i], s.kvs[j]) }

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// defaultStreamChunk is RangeStream's chunk size when the caller gives none.
const defaultStreamChunk = 512

// streamRange is RangeStream's implementation (see View.RangeStream).
func streamRange(m mvccReader, req *pb.RangeRequest, currentRev, compactedRev int64, chunkSize int,
	emit func([]*mvccpb.KeyValue) error,
) (count int64, more bool, err error) {
	if chunkSize <= 0 {
		chunkSize = defaultStreamChunk
	}
	if !keyOrdered(req) || hasRevisionFilters(req) {
		// Sorting and filtering need the whole result; stream it afterwards.
		resp, err := executeRange(m, req, currentRev, compactedRev, nil)
		if err != nil {
			return 0, false, err
		}
		for kvs := resp.Kvs; len(kvs) > 0; {
			n := min(chunkSize, len(kvs))
			if err := emit(kvs[:n]); err != nil {
				return 0, false, err
			}
			kvs = kvs[n:]
		}
		return resp.Count, resp.More, nil
	}
	chunk := make([]*mvccpb.KeyValue, 0, chunkSize)
	return streamScan(m, req, currentRev, compactedRev, chunkSize, func(k, v []byte) error {
		kv, err := decodeVersion(k, v)
		if err != nil {
			return err
		}
		if req.KeysOnly {
			keysOnly(kv, req)
		}
		chunk = append(chunk, kv)
		return nil
	}, func() error {
		out := chunk
		chunk = make([]*mvccpb.KeyValue, 0, chunkSize)
		return emit(out)
	})
}

// streamScan is a key-ordered stream of req's keys without revision
// filters: add gets the user key and stored version of each kept key (as
// scanKVs keeps them), and flush is called after every chunkSize of them
// and after the last. It returns count and more as Range would.
func streamScan(m mvccReader, req *pb.RangeRequest, currentRev, compactedRev int64, chunkSize int,
	add func(k, v []byte) error, flush func() error,
) (count int64, more bool, err error) {
	if chunkSize <= 0 {
		chunkSize = defaultStreamChunk
	}
	pending := 0
	count, err = scanKVs(m, req, currentRev, compactedRev, nil, req.Limit, func(k, v []byte) error {
		if err := add(k, v); err != nil {
			return err
		}
		if pending++; pending < chunkSize {
			return nil
		}
		pending = 0
		return flush()
	})
	if err != nil {
		return 0, false, err
	}
	if pending > 0 {
		if err := flush(); err != nil {
			return 0, false, err
		}
	}
	return count, !req.CountOnly && req.Limit > 0 && count > req.Limit, nil
}
