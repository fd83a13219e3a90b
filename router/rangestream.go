package router

import (
	"context"
	"fmt"
	"io"
	"math"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tesserakv/tessera/statemachine"
)

// RangeStream serves etcd 3.7's streaming Range: every range's keys at one
// revision, cut into messages as etcd cuts them (streamChunker), never
// holding more than a message's kvs in memory. The last message — the only
// one when the result fits in one, or is empty, or is a count — carries the
// header, count and more.
func (r *Router) RangeStream(req *pb.RangeRequest, stream pb.KV_RangeStreamServer) error {
	if err := checkRangeStream(req); err != nil {
		return err
	}
	ctx := stream.Context()
	sub := proto.CloneOf(req)
	var headerRev int64
	if !req.Serializable {
		rev, err := r.readRevision(ctx, req.Revision)
		if err != nil {
			return ToGRPC(err)
		}
		headerRev = rev
		if sub.Revision == 0 {
			sub.Revision = rev
		}
	}
	chunks := newStreamChunker(stream, req.Limit, r.cfg.MaxRequestBytes)
	chunks.rev = headerRev
	// A serializable stream over several ranges reads each at the
	// revision its replica first showed, or lower where another showed
	// part of a write spanning ranges it does not (serial.go).
	var pins serialPins
	if req.Serializable && req.Revision == 0 {
		var err error
		if pins, err = r.serialProbe(ctx, req); err != nil {
			return ToGRPC(err)
		}
		for _, pin := range pins {
			headerRev = max(headerRev, pin.rev)
		}
		chunks.rev = headerRev
	}
	var (
		count int64
		first Range
		next  = req.Key
	)
	// Range by range, each looked up afresh from where the last one ended: a
	// split during the stream (stale cache) is retried for the part not sent.
	for attempt := 0; ; {
		spans, err := r.spansOf(next, req.RangeEnd)
		if err != nil {
			return ToGRPC(err)
		}
		sp := spans[0]
		sp.rng.RecordLoad(sp.key)
		part := proto.CloneOf(sub)
		part.Key, part.RangeEnd = sp.key, sp.end
		if pins != nil {
			pin, ok := pins.at(sp.key)
			if !ok {
				return ToGRPC(fmt.Errorf("%w: no revision for the part from %q", errSerialAgain, sp.key))
			}
			part.Revision = pin
		}
		if req.CountOnly || chunks.filled() {
			part.CountOnly = true
		} else if req.Limit > 0 {
			part.Limit = req.Limit - chunks.added
		}
		n, c, rev, err := r.streamSpan(ctx, sp.rng, part, chunks)
		if n == 0 && r.reroute(ctx, err, attempt) {
			attempt++
			continue
		}
		if err != nil {
			return ToGRPC(err)
		}
		attempt = 0 // each range gets its own retries
		if first == nil {
			first = sp.rng
		}
		count += c
		if req.Serializable && pins == nil {
			// Each range is read as it is: the header is the highest
			// revision read, so no kv is above it.
			headerRev = max(headerRev, rev)
		}
		if len(spans) == 1 {
			break
		}
		next = spans[1].key
	}
	// Without count_only the kvs sent are the first min(count, limit) of the
	// count: more means some were left out.
	more := !req.CountOnly && count > chunks.added
	return chunks.finish(r.header(first, headerRev), count, more)
}

// serialProbe returns the revisions a serializable RangeStream reads its
// ranges at, nil when it covers one range: each range's replica is asked
// for one key first, which tells its state (serial.go).
func (r *Router) serialProbe(ctx context.Context, req *pb.RangeRequest) (serialPins, error) {
	for attempt := 0; ; attempt++ {
		spans, err := r.spansOf(req.Key, req.RangeEnd)
		if err != nil || len(spans) < 2 {
			return nil, err
		}
		var reads []spanRead
		for _, sp := range spans {
			probe := &pb.RangeRequest{Key: sp.key, Serializable: true, KeysOnly: true}
			var ans rangeAnswer
			if ans, _, err = r.readSpanPinned(ctx, sp, probe, false, serialRead{states: true}); err != nil {
				break
			}
			reads = append(reads, ans.reads...)
		}
		if r.readAgain(ctx, err, attempt, true) {
			continue
		}
		if err != nil {
			return nil, err
		}
		pins, _ := serialPinsOf(reads)
		return pins, nil
	}
}

// streamSpan streams one range's part of a RangeStream into chunks and
// returns how many kvs it added, the part's count, and the revision read.
func (r *Router) streamSpan(ctx context.Context, rng Range, req *pb.RangeRequest, chunks *streamChunker) (added, count int64, rev int64, err error) {
	if m, ok := rng.(*remoteRange); ok {
		err = r.onReplica(ctx, m, func(ctx context.Context, cc *grpc.ClientConn) (err error) {
			if added > 0 {
				// Part of the answer is sent: no other node may add to it.
				return status.Error(codes.Aborted, "tessera: range stream relay broke")
			}
			added, count, rev, err = relayRangeStream(ctx, cc, req, chunks)
			return err
		})
		return added, count, rev, unreachableAsNoLeader(ctx, err)
	}
	fn := func(v *statemachine.View) (any, error) {
		// The read layer may run fn again (a leadership check after it
		// failed): a rerun reads at the revision the first run read and
		// skips the kvs already handed on, the same kvs, so none is sent
		// twice.
		at := req
		if rev == 0 {
			rev = v.Revision()
			if chunks.rev == 0 {
				chunks.rev = rev
			}
		} else if req.Revision == 0 {
			at = proto.CloneOf(req)
			at.Revision = rev
		}
		if at.CountOnly {
			resp, err := v.Range(at)
			if err != nil {
				return nil, err
			}
			count = resp.Count
			return nil, nil
		}
		skip := added
		var err error
		if statemachine.WireRangeable(at) {
			// Sent as the stored bytes, like RangeWire's answers.
			skipped := &statemachine.WireKVs{}
			count, _, err = v.RangeStreamWire(at, func() (*statemachine.WireKVs, error) {
				if skip > 0 {
					skip--
					return skipped, nil
				}
				added++
				return chunks.next()
			})
		} else {
			count, _, err = v.RangeStream(at, 0, func(kvs []*mvccpb.KeyValue) error {
				n := min(skip, int64(len(kvs)))
				skip -= n
				n, err := chunks.addKVs(kvs[n:])
				added += n
				return err
			})
		}
		return nil, err
	}
	if req.Serializable {
		_, err = rng.Read(ctx, false, fn)
	} else {
		_, _, err = r.readAt(ctx, rng, req.Revision, func(int64) func(*statemachine.View) (any, error) { return fn })
	}
	if err == nil || added > 0 {
		return added, count, rev, err
	}
	_, ferr, ok := forward(r, ctx, err, func(ctx context.Context, cc *grpc.ClientConn) (struct{}, error) {
		added, count, rev, err = relayRangeStream(ctx, cc, req, chunks)
		return struct{}{}, err
	})
	if !ok {
		return 0, 0, 0, err
	}
	return added, count, rev, ferr
}

// relayRangeStream streams another node's answer to a RangeStream into
// chunks, keeping its count and header revision from the message that
// carries them.
func relayRangeStream(ctx context.Context, cc *grpc.ClientConn, req *pb.RangeRequest, chunks *streamChunker) (added, count, rev int64, err error) {
	up, err := pb.NewKVClient(cc).RangeStream(ctx, req)
	if err != nil {
		return 0, 0, 0, err
	}
	for {
		msg, err := up.Recv()
		if err == io.EOF {
			return added, count, rev, nil
		}
		if err != nil {
			return added, count, rev, err
		}
		rr := msg.GetRangeResponse()
		if h := rr.GetHeader(); h != nil {
			count, rev = rr.Count, h.Revision
		}
		n, err := chunks.addKVs(rr.GetKvs())
		added += n
		if err != nil {
			return added, count, rev, err
		}
	}
}

// firstStreamChunkKVs is how many kvs etcd's first RangeStream message
// carries at most.
const firstStreamChunkKVs = 10

// streamChunker cuts a RangeStream's kvs into messages exactly as etcd v3.7
// does, whatever ranges they come from, so a client sees etcd's stream:
//
//   - the first message holds up to 10 kvs; each later one's limit doubles
//     while the message before it encoded (as etcd's chunk read does) to less
//     than half of --max-request-bytes and halves above twice it, never
//     asking past the request's limit;
//   - a message goes out without header, count or more once the next kv shows
//     it is not the last;
//   - the last message carries the last kvs with the header, the count and
//     more (an empty result or a count is that one message alone).
type streamChunker struct {
	stream      grpc.ServerStreamingServer[pb.RangeStreamResponse]
	targetBytes int
	totalLimit  int64 // the request's limit; math.MaxInt64 for none
	chunkLimit  int64 // kvs the pending message may hold
	pending     *statemachine.WireKVs
	added       int64 // kvs taken: in messages sent and pending
	// rev is the stream's revision, once known, for weighing messages as
	// etcd does (its reads carry a header with the store's revision).
	rev int64
}

func newStreamChunker(stream grpc.ServerStreamingServer[pb.RangeStreamResponse], limit int64, targetBytes int) *streamChunker {
	total := limit
	if total <= 0 {
		total = math.MaxInt64
	}
	return &streamChunker{
		stream:      stream,
		targetBytes: targetBytes,
		totalLimit:  total,
		chunkLimit:  min(firstStreamChunkKVs, total),
		pending:     &statemachine.WireKVs{},
	}
}

// filled reports whether the request's limit is reached: later ranges are
// only counted.
func (c *streamChunker) filled() bool { return c.added >= c.totalLimit }

// next returns the WireKVs the next kv goes into, sending the pending message
// first if it is full (the kv shows it was not the last).
func (c *streamChunker) next() (*statemachine.WireKVs, error) {
	if int64(c.pending.Len()) >= c.chunkLimit {
		msg := &WireRangeResponse{KVs: *c.pending}
		if err := c.stream.SendMsg(wireStreamChunk{resp: msg}); err != nil {
			return nil, err
		}
		c.chunkLimit = min(nextChunkLimit(c.chunkLimit, msg.readSize(c.rev, c.chunkLimit), c.targetBytes), c.totalLimit-c.added)
		c.pending = &statemachine.WireKVs{}
	}
	c.added++
	return c.pending, nil
}

// addKVs adds decoded kvs (keys only, or another node's) one by one; it
// returns how many it added.
func (c *streamChunker) addKVs(kvs []*mvccpb.KeyValue) (int64, error) {
	for i, kv := range kvs {
		w, err := c.next()
		if err != nil {
			return int64(i), err
		}
		w.AddKV(kv)
	}
	return int64(len(kvs)), nil
}

// finish sends the last message: the pending kvs with header, count and more.
func (c *streamChunker) finish(header *pb.ResponseHeader, count int64, more bool) error {
	msg := &WireRangeResponse{Header: header, KVs: *c.pending, Count: count, More: more}
	c.pending = nil
	return c.stream.SendMsg(wireStreamChunk{resp: msg})
}

// readSize is the encoded size etcd weighs a full message of limit kvs by:
// the message's kvs read as a Range of limit kvs that found more, so with a
// header holding the revision rev, more set and a count of limit+1.
func (w *WireRangeResponse) readSize(rev, limit int64) int {
	header := protowire.SizeTag(1) + protowire.SizeVarint(uint64(rev))
	size := protowire.SizeTag(rangeHeaderNumber) + protowire.SizeBytes(header)
	size += protowire.SizeTag(rangeMoreNumber) + protowire.SizeVarint(1)
	size += protowire.SizeTag(rangeCountNumber) + protowire.SizeVarint(uint64(limit+1))
	for i := range w.KVs.NumChunks() {
		size += len(w.KVs.Chunk(i))
	}
	return size
}

// nextChunkLimit is etcd's rule for the next message's kv limit: double it
// when the last message was under half the target size, halve it when over
// twice, and never below one.
func nextChunkLimit(last int64, lastBytes, targetBytes int) int64 {
	switch {
	case lastBytes < targetBytes/2:
		last *= 2
	case lastBytes > 2*targetBytes:
		last /= 2
	}
	return max(last, 1)
}
